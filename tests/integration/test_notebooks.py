"""Every notebook in notebooks/ runs top to bottom ("Run All") in a real kernel against real ComfyUI servers.

Executed with nbclient through ``execute_notebook`` (the same path as ``make demo``); the assertions read the
saved outputs, i.e. what a person sees in the notebook file: no errors, the stored results, image outputs, the
panel's static text naming the locked server, and for recovering.ipynb the lock cleared by a server's death and
taken again after a reset. nbclient records only messages whose parent is the executing cell, so the checks read
each cell's own displays (the status snapshots), not the live panel's later widget updates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from comfy_notebook.tools.local_pool import LocalPool
from comfy_notebook.tools.notebooks import WIDGET_VIEW, execute_notebook

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
URL = r"http://127\.0\.0\.1:\d+"


# -- reading executed notebooks ---------------------------------------------------------------------------------------
def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def cells_starting(nb: Any, prefix: str) -> list[Any]:
    found = [c for c in code_cells(nb) if c.source.startswith(prefix)]
    assert found, f"no code cell starts with {prefix!r}"
    return found


def cell(nb: Any, prefix: str) -> Any:
    found = cells_starting(nb, prefix)
    assert len(found) == 1, f"{len(found)} cells start with {prefix!r}"
    return found[0]


def text(c: Any) -> str:
    """Everything a cell printed or displayed as plain text, in order."""
    parts = []
    for out in c.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def html(c: Any) -> str:
    return "\n".join(o.data.get("text/html", "") for o in c.outputs if "data" in o)


def mimes(c: Any) -> set[str]:
    return {mime for o in c.outputs if "data" in o for mime in o.data}


def one(pattern: str, haystack: str) -> re.Match[str]:
    match = re.search(pattern, haystack, flags=re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{haystack}"
    return match


# -- running ------------------------------------------------------------------------------------------------------
@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Any]:
    """Execute ``notebooks/<name>`` with extra env (an isolated IPython profile dir) and load the saved result."""

    def _run(name: str, **env: str) -> Any:
        saved = execute_notebook(NOTEBOOKS / name, tmp_path / "out", {"IPYTHONDIR": str(tmp_path / "ipython"), **env})
        assert saved.with_suffix(".html").stat().st_size > 0
        return nbformat.read(saved, as_version=4)

    return _run


@pytest.fixture
def pool_intact(real_pool: LocalPool) -> Iterator[LocalPool]:
    """The shared pool, and every server up again afterwards even if a notebook killed one and then failed."""
    yield real_pool
    for server in real_pool.status():
        if not server.answering:
            real_pool.restart(server.index)


def check_common(nb: Any, urls: list[str]) -> None:
    """What every notebook must show: no errors, blocking ``%%comfy`` cells ending in a successful Result with inline
    images, and image outputs."""
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    assert cells_starting(nb, "%%comfy")
    for c in (c for c in cells_starting(nb, "%%comfy") if "--no-wait" not in c.source.splitlines()[0]):
        server = one(rf"success on ({URL})", text(c)).group(1)
        assert server in urls
        assert '<img src="data:image/png;base64,' in html(c), "the Result's static summary has no inline image"
    assert any("image/png" in mimes(c) for c in code_cells(nb)), "no image/png output"


# -- the notebooks ------------------------------------------------------------------------------------------------
def test_notebooks_are_saved_clean() -> None:
    """Committed notebooks carry no outputs or execution counts (they are run by the tests and `make demo`)."""
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    expected = [
        "many-tasks.ipynb",
        "pool.ipynb",
        "quickstart.ipynb",
        "recovering.ipynb",
        "sweeps.ipynb",
        "workflows.ipynb",
    ]
    assert names == expected, "a new notebook needs a test here"
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        dirty = [c.id for c in code_cells(nb) if c.outputs or c.execution_count is not None]
        assert not dirty, f"{name}: cells with outputs: {dirty}"


def test_quickstart(run: Callable[..., Any], real_pool: LocalPool, tmp_path: Path) -> None:
    urls = real_pool.urls[:2]
    nb = run("quickstart.ipynb", COMFY_SERVERS=" ".join(urls))
    check_common(nb, urls)

    assert text(cell(nb, "%load_ext")).split() == ["servers", "(2):", *urls]
    first, again = cells_starting(nb, "%comfy status")
    assert "locked: none" in text(first)
    server = one(rf"success on ({URL})", text(cell(nb, "%%comfy result <<"))).group(1)
    assert f"success on {server} in " in text(cell(nb, 'print(f"{result.status}'))
    assert "image/png" in mimes(cell(nb, 'print(f"{result.status}'))
    # The panel's static snapshot after the run names the locked server, in text and HTML.
    assert f"locked: {server}" in text(again)
    assert f'<b class="comfy-locked">locked: {server}</b>' in html(again)
    assert f"'locked_server': '{server}'" in text(cell(nb, "status = cn.get_status()"))
    assert f"reset: lock cleared (was {server})" in text(cell(nb, "%comfy reset"))
    assert text(cell(nb, 'print("locked server after the reset')).strip() == "locked server after the reset: None"

    # The HTML copy reads offline: static snapshots instead of widget views that need a CDN-loaded manager.
    page = (tmp_path / "out" / "quickstart.html").read_text(encoding="utf-8")
    assert f"locked: {server}</b>" in page and "locked: none</b>" in page
    assert WIDGET_VIEW not in page


def test_many_tasks(run: Callable[..., Any], real_pool: LocalPool) -> None:
    urls = real_pool.urls[:2]
    nb = run("many-tasks.ipynb", COMFY_SERVERS=" ".join(urls))
    check_common(nb, urls)

    red = cell(nb, "%%comfy red << --no-wait")
    assert "application/vnd.jupyter.widget-view+json" in mimes(red), "--no-wait shows no live progress widget"
    submitted = cell(nb, "def tinted")
    assert sum("widget-view" in m for o in submitted.outputs for m in o.get("data", {})) == 3
    assert "pending tasks: 4" in text(submitted)

    collected = text(cell(nb, "last = await"))
    rows = re.findall(rf"^\S+\s+(\w+)\s+({URL})\s", collected, flags=re.MULTILINE)
    assert len(rows) == 4 and {status for status, _ in rows} == {"success"}
    (server,) = {url for _, url in rows}  # under the lock: one server ran them all
    assert f"servers used: ['{server}']" in collected
    assert f"locked server: {server}" in collected
    assert "image/png" in mimes(cell(nb, "from PIL import Image"))
    assert f"6 prompts: ['success'] on ['{server}']" in text(cell(nb, "bulk = cn.submit_many"))
    final_status = cells_starting(nb, "%comfy status")[-1]
    assert f"locked: {server}" in text(final_status) and "pending tasks: 0" in text(final_status)
    assert f"reset: lock cleared (was {server})" in text(cell(nb, "%comfy reset"))


def test_pool(run: Callable[..., Any], real_pool: LocalPool) -> None:
    urls = real_pool.urls
    nb = run("pool.ipynb", COMFY_SERVERS=" ".join(urls))
    check_common(nb, urls)

    assert text(cell(nb, "%comfy mode pool")).startswith("mode: pool")
    live_panel = cells_starting(nb, "%comfy status")[0]
    assert "application/vnd.jupyter.widget-view+json" in mimes(live_panel)
    submitted = text(cell(nb, "def tinted"))
    waiting = int(one(r"^waiting here: (\d+)$", submitted).group(1))
    assert waiting >= 12 - 2 * len(urls)  # at most two per server, the rest wait client-side

    collected = text(cell(nb, "results = [task.result"))
    assert "12 prompts: ['success']" in collected
    ran = {url: int(n) for url, n in re.findall(rf"^  ({URL}) ran (\d+)$", collected, flags=re.MULTILINE)}
    assert set(ran) <= set(urls) and sum(ran.values()) == 12
    assert len(ran) >= 2, f"pool mode used one server only: {ran}"
    assert "image/png" in mimes(cell(nb, "from PIL import Image"))
    assert one(r"8 bulk prompts: \['success'\] on (\d+) servers", text(cell(nb, "bulk = cn.submit_many")))

    final = cells_starting(nb, "%comfy status")[-1]
    assert "mode: pool" in text(final) and "pending tasks: 0" in text(final)
    assert text(cell(nb, "%comfy mode lock")).startswith("mode: lock")


def test_workflows(run: Callable[..., Any], real_pool: LocalPool, tmp_path: Path) -> None:
    """Local inputs, every output kind playing in its cell, a saved UI-format workflow run as it is, discovery."""
    urls = real_pool.urls[:2]
    nb = run("workflows.ipynb", COMFY_SERVERS=" ".join(urls))
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]

    inverted = cell(nb, "%%comfy inverted <<")
    assert one(rf"success on ({URL})", text(inverted)).group(1) in urls
    assert '<img src="data:image/png;base64,' in html(inverted)
    masked = text(cell(nb, "mask = Image.new"))
    assert one(rf"^({URL}) \['mask_", masked).group(1) in urls
    assert "image/png" in mimes(cell(nb, "mask = Image.new"))

    animation = cell(nb, "%%comfy animation <<")
    assert "data:image/gif;base64," in html(animation) and "<video" in html(animation)
    assert "image/png" in mimes(animation), "no static picture for the saved notebook"
    sound = cell(nb, "%%comfy sound <<")
    assert "<audio" in html(sound) and "a 440 Hz tone" in html(sound)
    listing = text(cell(nb, "for result in (animation, sound)"))
    for expected in ("gifs", "image/gif", "video/mp4", "audio/wav", "texts: {'4': ['a 440 Hz tone']}"):
        assert expected in listing, f"{expected!r} not in:\n{listing}"

    converted = text(cell(nb, "api = cn.to_api"))
    assert re.search(r"^\s+\d+:\d+\s+ImageBlend", converted, flags=re.MULTILINE), converted  # a flattened subgraph
    saved = cell(nb, "%comfy saved << -f")
    assert one(rf"success on ({URL})", text(saved)).group(1) in urls

    assert "ImageBlend" in text(cell(nb, "%comfy nodes blend"))
    assert "blend_factor" in text(cell(nb, "%comfy node ImageBlend"))
    assert "checkpoints" in text(cell(nb, "%comfy models"))
    assert text(cell(nb, "%comfy mode lock")).startswith("mode: lock")


def test_recovering(run: Callable[..., Any], pool_intact: LocalPool) -> None:
    urls = pool_intact.urls
    nb = run("recovering.ipynb", COMFY_SERVERS=" ".join(urls), COMFY_DEMO_POOL_STATE=str(pool_intact.state_dir))
    check_common(nb, urls)

    victim = one(rf"success on ({URL})", text(cell(nb, "%%comfy first <<"))).group(1)
    killed = one(rf"killed server (\d+) \(({URL})\) while doomed was running", text(cell(nb, "import os")))
    assert killed.group(2) == victim and urls[int(killed.group(1))] == victim

    # The lock left the dead server (cleared by the abnormal close, then taken by the server doomed moved to), and
    # the panel's snapshot shows the dead server down.
    after_kill = text(cell(nb, "if killed is not None:  # wait"))
    assert f"locked: {victim}" not in after_kill
    row = one(rf"^ *\*?{re.escape(victim)}  (.*)$", after_kill).group(1)
    assert row.startswith("down") and "last error:" in row
    doomed = one(r"comfy prompt (\S+):", text(cell(nb, "%%comfy doomed"))).group(1)
    failover = text(cell(nb, "try:"))
    moved = one(rf"^moved from {re.escape(victim)} to ({URL}): {re.escape(victim)} (.+)$", failover)
    assert moved.group(1) != victim and moved.group(2) in ("became unreachable", "restarted and forgot the prompt")
    assert f"doomed finished on {moved.group(1)} after 2 attempts:" in failover
    assert one(rf"^  {re.escape(victim)}  (\S+)  lost  ", failover).group(1) == doomed
    assert re.search(rf"^  {re.escape(moved.group(1))}  \S+  success", failover, flags=re.MULTILINE)

    assert f"the lock was on {victim} before" in text(cell(nb, 'print(f"second ran on'))
    second = one(rf"second ran on ({URL})", text(cell(nb, 'print(f"second ran on'))).group(1)
    assert second != victim
    assert f"locked server: {second}" in text(cell(nb, 'print(f"second ran on'))
    assert f"reset: lock cleared (was {second})" in text(cell(nb, "%comfy reset"))

    # After the reset the next prompt takes the lock again, on a live server.
    recovered = text(cell(nb, 'print(f"after the reset'))
    third = one(rf"third ran on ({URL}); locked server: ({URL})", recovered)
    assert third.group(1) == third.group(2) != victim
    assert f"locked: {third.group(1)}" in recovered

    assert text(cell(nb, 'if killed is not None:\n    print("restarted')).strip() == f"restarted: {victim}"
    assert all(s.answering for s in pool_intact.status()), "the notebook did not bring the killed server back"


def test_recovering_run_by_hand_kills_nothing(run: Callable[..., Any], pool_intact: LocalPool) -> None:
    """Without COMFY_DEMO_POOL_STATE the notebook only explains: every server keeps running, the same processes."""
    before = [(s.pid, s.answering) for s in pool_intact.status()]
    nb = run("recovering.ipynb", COMFY_SERVERS=" ".join(pool_intact.urls), COMFY_DEMO_POOL_STATE="")
    check_common(nb, pool_intact.urls)

    victim = one(rf"success on ({URL})", text(cell(nb, "%%comfy first <<"))).group(1)
    explained = text(cell(nb, "import os"))
    assert f"COMFY_DEMO_POOL_STATE is not set: nothing was killed. Stop {victim} yourself" in explained
    assert text(cell(nb, "try:")).strip() == "doomed finished: its server was not stopped"
    assert text(cell(nb, 'if killed is not None:\n    print("restarted')).strip() == "nothing to restart"
    assert [(s.pid, s.answering) for s in pool_intact.status()] == before
    assert all(answering for _, answering in before)


def test_sweeps(run: Callable[..., Any], real_pool: LocalPool, tmp_path: Path) -> None:
    """A 4 x 3 sweep cell over two real servers in pool mode: the saved static grid (a table of 12 thumbnails, each
    clickable to full size, row and column headers the swept values), the work spread over both servers, the sweep's
    results, table and files; a zipped sweep from Python where one point fails alone, shown as a gallery."""
    urls = real_pool.urls[:2]
    nb = run("sweeps.ipynb", COMFY_SERVERS=" ".join(urls))
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]

    grid = cell(nb, "%%comfy blends <<")
    (shown,) = grid.outputs  # the live grid, updated in place to its final static snapshot
    assert WIDGET_VIEW in shown.data
    static = shown.data["text/html"]
    table = one(r'<table class="comfy-sweep-table">(.*)</table>', static).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.DOTALL)
    assert re.findall(r"<th>([^<]*)</th>", rows[0]) == ["0.25", "0.5", "1.0"]
    assert [re.findall(r"<th>([^<]*)</th>", row) for row in rows[1:]] == [
        ["normal"], ["multiply"], ["screen"], ["difference"]
    ]  # fmt: skip
    assert [row.count('<img class="comfy-thumb" src="data:image/') for row in rows[1:]] == [3, 3, 3, 3]
    assert static.count('<details class="comfy-zoom">') == 12 and static.count('class="comfy-full"') == 12
    assert "12/12 done" in static and static.count("comfy-state-success") == 12
    summary = text(grid)
    ran = {url: int(n) for url, n in re.findall(rf"({URL}) (\d+)", summary.splitlines()[0])}
    assert summary.startswith("comfy sweep 4x3: 12/12 done (12 success); by server: ")
    assert set(ran) == set(urls) and sum(ran.values()) == 12, f"the sweep did not use both servers: {ran}"

    held = text(cell(nb, "print(blends)"))
    assert held.startswith("<Sweep 12 points (4x3) success=12 ")
    assert "12 results, 0 errors" in held
    assert "{'3.blend_mode': 'normal', '3.blend_factor': 0.25} -> http://127.0.0.1:" in held
    frame = text(cell(nb, "try:\n    table = blends.dataframe()"))
    assert len(re.findall(rf"^\s*\d+\s+\w+\s+[\d.]+\s+success\s+{URL}$", frame, flags=re.MULTILINE)) == 12
    files = text(cell(nb, "import tempfile"))
    assert files.startswith("12 files in ") and "  blend_mode=difference_blend_factor=0.25.png" in files

    api_cell = cell(nb, "workflow = {")
    assert "{'SlowSteps.steps': 0, 'EmptyImage.width': 80} failed: ValidationError" in text(api_cell)
    gallery = html(api_cell)
    assert 'class="comfy-sweep-gallery"' in gallery and "<table" not in gallery.split("</style>", 2)[-1]
    labels = re.findall(r'<div class="comfy-tile-label"[^>]*>([^<]*)</div>', gallery)
    assert labels == ["steps=2, width=64", "steps=0, width=80", "steps=3, width=96"]
    assert gallery.count("comfy-state-success") == 2 and gallery.count("comfy-state-error") == 1
    assert gallery.count('<img class="comfy-thumb"') == 2
    assert "SlowSteps steps: Value 0 smaller than min of 1</div>" in gallery  # the refused input, not a generic line

    # nbconvert's page keeps the static grids (no widget views that need a kernel).
    page = (tmp_path / "out" / "sweeps.html").read_text(encoding="utf-8")
    assert page.count('class="comfy-thumb" src="data:image/') == 12 + 2 and WIDGET_VIEW not in page
