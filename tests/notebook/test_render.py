"""The pure renderings: status, reset outcome, tasks, results and errors (no widgets, no I/O)."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from comfy_notebook import api
from comfy_notebook.core.errors import (
    ExecutionError,
    InputError,
    NodeError,
    ServerUnavailable,
    ValidationError,
    WorkflowError,
)
from comfy_notebook.core.failover import Attempt
from comfy_notebook.core.outputs import FileRef, file_refs
from comfy_notebook.engine.task import Progress, Result, Task
from comfy_notebook.notebook import media, render
from comfy_notebook.notebook.progress import ProgressWidget

A, B = "http://10.0.0.1:8188", "http://10.0.0.2:8188"


def status(locked: str | None = A, **extra: object) -> dict:
    base = {
        "is_connected": locked is not None,
        "locked_server": locked,
        "lock_timestamp": 1000.0 if locked else None,
        "lock_duration": 125.0 if locked else None,
        "pending_tasks_count": 2,
        "connection_state": "OPEN" if locked else "CLOSED",
        "servers": [
            {"url": A, "healthy": True, "queue_remaining": 3, "in_flight": 2, "last_error": None,
             "cooldown_remaining": 0.0, "connection_state": "OPEN", "locked": locked == A},
            {"url": B, "healthy": False, "queue_remaining": 0, "in_flight": 0,
             "last_error": "connect failed: <refused>", "cooldown_remaining": 4.0, "connection_state": "CLOSED",
             "locked": locked == B},
        ],
    }  # fmt: skip
    base.update(extra)
    return base


def png(color: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def make_task(**fields: object) -> Task:
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "KSampler", "inputs": {}}}
    task = Task("p-1", workflow, lambda _t: None)
    for key, value in fields.items():
        setattr(task, key, value)
    return task


def served_by(files: dict[tuple[str, str, str], bytes]) -> Any:
    """A server's ``/view`` as the engine's fetcher sees it: bytes by (type, subfolder, filename), None if absent."""
    return lambda refs: [files.get((r.type, r.subfolder, r.filename)) for r in refs]


def make_result(n: int = 2) -> Result:
    outputs = {
        "9": {
            "images": [
                {"filename": f"out_{i}.png", "subfolder": "sub" if i else "", "type": "output"} for i in range(n)
            ]
        }
    }
    refs = file_refs(outputs)
    fetched: dict[FileRef, bytes] = {ref: png(i) for i, ref in enumerate(refs)}
    return Result("p-1", A, "success", outputs=outputs, refs=refs, fetched=fetched, fetch=served_by({}), elapsed=2.345)


# -- status -----------------------------------------------------------------------------------------------------------
def test_status_html_shows_the_lock_its_age_pending_tasks_and_a_row_per_server() -> None:
    html = render.status_html(status())
    assert f"locked: {A}" in html
    assert "lock age: 2 min 5 s" in html
    assert "pending tasks: 2" in html
    assert "connection: OPEN" in html and "connected: yes" in html
    assert html.count('class="comfy-server-row') == 2
    assert f"<td>{A} (locked)</td>" in html
    assert "down (retry in 4 s)" in html


def pool_status(**extra: object) -> dict:
    """A pool-mode status as the engine reports it: the client-side queue, failover totals, per-server counters."""
    base = status(locked=None, mode="pool", waiting=3, retries=1, duplicates=0)
    counters = [
        {"running": 1, "queued": 1, "done": 7, "failed": 2, "retried": 0, "duplicates": 0},
        {"running": 0, "queued": 0, "done": 0, "failed": 0, "retried": 1, "duplicates": 0},
    ]
    for entry, extra_fields in zip(base["servers"], counters, strict=True):
        entry.update(extra_fields)
    base.update(extra)
    return base


def server_rows(html: str) -> list[dict[str, str]]:
    """The panel's server table as one dict per row: column title -> cell text (badges read as their text)."""
    titles = re.findall(r"<th[^>]*>(.*?)</th>", html)
    rows = re.findall(r'<tr class="comfy-server-row[^"]*">(.*?)</tr>', html)
    cells = [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row)] for row in rows]
    return [dict(zip(titles, row, strict=True)) for row in cells]


def test_status_html_in_pool_mode_shows_the_mode_the_waiting_prompts_and_per_server_counters() -> None:
    html = render.status_html(pool_status())
    assert '<b class="comfy-mode comfy-mode-pool">mode: pool</b>' in html
    assert '<span class="comfy-waiting">waiting: 3</span>' in html and "retries: 1" in html
    assert "duplicates" not in html  # only when there are any
    first, second = server_rows(html)
    assert first == {
        "server": A, "health": "ok", "queue": "3", "running": "1", "queued": "1", "done": "7", "failed": "2",
        "retried": "0", "connection": "OPEN", "affinity": "", "last error": "",
    }  # fmt: skip
    assert second["retried"] == "1" and second["health"] == "down (retry in 4 s)"
    assert 'title="our prompts running there now"' in html  # the columns explain themselves on hover


def test_status_shows_duplicates_only_when_a_server_has_some() -> None:
    status_ = pool_status(duplicates=1)
    status_["servers"][1]["duplicates"] = 1
    html = render.status_html(status_)
    assert "duplicates: 1" in html
    assert [row["duplicates"] for row in server_rows(html)] == ["0", "1"]
    text = render.status_text(status_)
    assert "duplicates: 1" in text and "retried 1  duplicates 1  CLOSED" in text.splitlines()[-1]


def test_status_text_in_pool_mode() -> None:
    lines = render.status_text(pool_status()).splitlines()
    assert lines[0].startswith("comfy-notebook  mode: pool  locked: none")
    assert lines[1].endswith("pending tasks: 2  waiting: 3  retries: 1")
    assert lines[2] == f"  {A}  ok  queue 3  running 1  queued 1  done 7  failed 2  retried 0  OPEN"
    assert lines[3].startswith(f"  {B}  down (retry in 4 s)  queue 0  running 0  queued 0  done 0  failed 0  retried 1")


def test_lock_mode_shows_the_mode_but_not_an_empty_client_side_queue() -> None:
    html = render.status_html(status(mode="lock", waiting=0, retries=0, duplicates=0))
    assert "mode: lock" in html and "waiting:" not in html and "retries:" not in html
    assert "mode: lock" in render.status_text(status(mode="lock", waiting=0))


def test_mode_text() -> None:
    assert render.mode_text("pool").startswith("mode: pool (every server at once")
    assert render.mode_text("lock").startswith("mode: lock (one server at a time")


def test_status_html_without_a_lock_says_locked_none() -> None:
    html = render.status_html(status(locked=None))
    assert "locked: none" in html and "lock age: -" in html and "connected: no" in html
    assert "(locked)" not in html


def test_status_html_escapes_server_text() -> None:
    html = render.status_html(status())
    assert "<refused>" not in html and "&lt;refused&gt;" in html


def test_status_without_servers_says_how_to_add_them() -> None:
    empty = status(locked=None, servers=[])
    assert "%comfy servers" in render.status_html(empty)
    assert "%comfy servers" in render.status_text(empty)


def test_status_text_has_the_same_facts() -> None:
    text = render.status_text(status())
    assert f"locked: {A}" in text and "lock age 2 min 5 s" in text and "pending tasks: 2" in text
    assert f"*{A}" in text and "last error: connect failed" in text


def test_credentials_never_reach_the_renderings() -> None:
    leaky = status(locked="http://alice:s3cret@10.0.0.1:8188")
    leaky["servers"][0]["url"] = "http://alice:s3cret@10.0.0.1:8188"
    leaky["servers"][1]["last_error"] = "GET http://bob:hunter2@10.0.0.2:8188/x?token=abc123 failed"
    for text in (render.status_html(leaky), render.status_text(leaky), render.servers_text(leaky)):
        for secret in ("s3cret", "hunter2", "abc123", "alice", "bob"):
            assert secret not in text
    error = ServerUnavailable("cannot reach http://u:pw-123@h:1/", server="http://u:pw-123@h:1")
    assert "pw-123" not in render.error_text(error)


def test_servers_text_lists_the_pool() -> None:
    assert render.servers_text(status()).splitlines() == ["servers (2):", f"  {A}  (locked)", f"  {B}"]
    assert "no servers" in render.servers_text({"servers": []})


def test_reset_outcome_says_what_changed() -> None:
    after = status(locked=None, pending_tasks_count=0)
    text = render.reset_outcome(status(), after, now=0)
    assert text.startswith(f"reset: lock cleared (was {A}), 2 tasks cancelled (")
    idle = status(locked=None, pending_tasks_count=1)
    assert render.reset_outcome(idle, after).startswith("reset: no lock was held, 1 task cancelled")


def test_format_duration() -> None:
    assert render.format_duration(None) == "-"
    assert render.format_duration(4.7) == "4 s"
    assert render.format_duration(4.7, precise=True) == "4.70 s"
    assert render.format_duration(125) == "2 min 5 s"
    assert render.format_duration(3 * 3600 + 120) == "3 h 2 min"


# -- tasks ------------------------------------------------------------------------------------------------------------
def test_task_html_while_queued_shows_server_and_queue_position() -> None:
    html = render.task_html(make_task(status="queued", server=A, queue_position=3))
    assert "comfy-state-queued" in html and f"queued on {A}" in html and "queue: 3 ahead" in html
    assert f"sending to {A}" in render.task_html(make_task(status="pending", server=A))
    assert ">pending</span>" in render.task_html(make_task(status="pending"))


def test_task_waiting_in_the_client_side_queue_has_a_position_and_no_server() -> None:
    task = make_task(status="waiting", queue_position=0)
    html = render.task_html(task)
    badge = r'<span class="comfy-badge comfy-state comfy-state-waiting" style="[^"]*">([^<]*)</span>'
    assert re.findall(badge, html) == ["waiting for a server (position 1)"]  # the state, as a coloured badge
    assert "server:" not in html and "queue:" not in html and " on " not in html
    assert "waiting for a server (position 3)" in render.task_text(make_task(status="waiting", queue_position=2))
    assert render.task_where(task) == "(waiting for a server)"


def test_task_after_a_failover_says_where_it_moved_and_the_final_line_counts_attempts() -> None:
    moved = f"moved from {A} to {B}: {A} stopped answering"
    attempts = [Attempt(A, "p-1", "lost", "stopped answering"), Attempt(B, "p-2", "running")]
    task = make_task(status="running", server=B, prompt_id="p-2", moved=moved, attempts=attempts)
    html = render.task_html(task)
    assert f"running on {B}" in html and f'<span class="comfy-moved">{moved}</span>' in html
    assert "attempts" not in html  # while it runs, "moved" says it all
    task._finish(error=ServerUnavailable("gone", server=B), status="error")
    text = render.task_text(task)
    assert text.startswith("comfy prompt p-2: error | server: " + B) and moved in text and "2 attempts" in text
    one_try = make_task(status="running", server=A, attempts=attempts[:1])
    one_try._finish(error=ServerUnavailable("gone", server=A), status="error")
    assert "attempt" not in render.task_text(one_try)


def test_task_moved_text_is_scrubbed_and_escaped() -> None:
    task = make_task(status="running", server=B, moved="moved from http://u:pw@h:1 to <b>: gone")
    html = render.task_html(task)
    assert "pw" not in html and "&lt;b&gt;" in html


def test_task_html_while_running_shows_the_node_class_and_steps() -> None:
    task = make_task(status="running", server=A, node="2", progress=Progress(5, 20, "2"))
    html = render.task_html(task)
    assert "node: KSampler (#2)" in html and "step 5/20" in html and "queue:" not in html
    assert "elapsed:" in render.task_text(task)


def test_task_html_after_an_error_shows_its_first_line() -> None:
    task = make_task(status="error", server=A, error=ValueError("boom <b>\nsecond line"))
    html = render.task_html(task)
    assert "boom &lt;b&gt;" in html and "second line" not in html


def test_bar_style_follows_the_status() -> None:
    assert render.bar_style("success") == "success"
    assert render.bar_style("error") == "danger"
    assert render.bar_style("cancelled") == "warning"
    assert render.bar_style("running") == ""


# -- results ----------------------------------------------------------------------------------------------------------
def test_result_html_embeds_the_images_and_a_summary() -> None:
    html = render.result_html(make_result(2))
    assert html.count('<img src="data:image/png;base64,') == 2
    assert "success" in html and A in html and "2 images" in html and "2.35 s" in html


def test_result_html_caps_inline_images() -> None:
    html = render.result_html(make_result(3), max_images=1)
    assert html.count("<img ") == 1 and "2 more" in html


def test_result_text_lists_the_files() -> None:
    text = render.result_text(make_result(2))
    assert text.splitlines()[1:] == ["  out_0.png", "  sub/out_1.png"]


def test_image_mime() -> None:
    assert media.image_mime(png()) == "image/png"
    assert media.image_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert media.image_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert media.image_mime(b"fLaC") == "image/png"  # never a non-image type in an <img>


def gif() -> bytes:
    frames = [Image.new("RGB", (6, 4), (c, 0, 0)) for c in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


#: One file of every kind, named and flagged as the real nodes report them (tests/integration/test_outputs.py).
EVERY_KIND: dict[str, Any] = {
    "3": {"images": [{"filename": "still.png", "subfolder": "", "type": "output"}]},
    "4": {"images": [{"filename": "anim.webp", "subfolder": "", "type": "output"}], "animated": [True]},
    "6": {"gifs": [{"filename": "vhs.gif", "subfolder": "gif", "type": "output", "format": "image/gif"}]},
    "8": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
    "10": {"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
    "15": {"3d": [{"filename": "m.glb", "subfolder": "mesh", "type": "output"}]},
    "16": {"images": [{"filename": "<img src=x onerror=alert(1)>.png", "subfolder": "", "type": "temp"}]},
    "12": {"text": ["<b>hi</b> & bye", "second"]},
}
EVERY_FILE = {
    ("output", "", "still.png"): png(7),
    ("output", "", "anim.webp"): b"RIFF\0\0\0\0WEBPVP8X",
    ("output", "gif", "vhs.gif"): gif(),
    ("output", "video", "v.mp4"): b"\0\0\0\x20ftypisom" + bytes(2000),
    ("output", "audio", "a.flac"): b"fLaC\0\0\0\x22",
    ("output", "mesh", "m.glb"): b"glTF" + bytes(2044),
    ("temp", "", "<img src=x onerror=alert(1)>.png"): png(1),
}


def every_kind(files: dict[tuple[str, str, str], bytes] = EVERY_FILE, fetch: Any = None) -> Result:
    refs = file_refs(EVERY_KIND)
    return Result(
        "p-2", A, "success", outputs=EVERY_KIND, refs=refs, fetched={}, fetch=fetch or served_by(files), elapsed=1.0
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_result_html_shows_every_kind_inline() -> None:
    html = render.result_html(every_kind())
    assert f'<img src="data:image/png;base64,{b64(png(7))}" class="comfy-result-media comfy-media-image"' in html
    assert f'<img src="data:image/webp;base64,{b64(EVERY_FILE[("output", "", "anim.webp")])}"' in html
    assert f'<img src="data:image/gif;base64,{b64(gif())}" class="comfy-result-media comfy-media-animation"' in html
    assert f'<video src="data:video/mp4;base64,{b64(EVERY_FILE[("output", "video", "v.mp4")])}"' in html
    assert "<video " in html and " controls " in html and "</video>" in html
    assert f'<audio src="data:audio/flac;base64,{b64(EVERY_FILE[("output", "audio", "a.flac")])}" controls' in html
    assert "<code>mesh/m.glb</code> &middot; 3d &middot; model/gltf-binary &middot; 2.0 kB" in html
    assert '<pre class="comfy-result-text" title="node 12"' in html and "&lt;b&gt;hi&lt;/b&gt; &amp; bye" in html
    assert "<b>hi</b>" not in html and "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "2 images, 2 animations, 1 video, 1 audio file, 1 3D model, 2 texts" in html


def test_result_text_says_what_each_file_is_and_lists_the_texts() -> None:
    lines = render.result_text(every_kind()).splitlines()
    assert lines[0].endswith("2 images, 2 animations, 1 video, 1 audio file, 1 3D model, 2 texts")
    assert lines[1:] == [
        "  still.png",
        "  anim.webp  (animation)",
        "  gif/vhs.gif  (animation)",
        "  video/v.mp4  (video)",
        "  audio/a.flac  (audio file)",
        "  mesh/m.glb  (3D model)",
        "  <img src=x onerror=alert(1)>.png",
        "  text (node 12): <b>hi</b> & bye",
        "  text (node 12): second",
    ]


def test_large_media_are_listed_not_embedded_and_the_total_is_capped() -> None:
    big = b"\0\0\0\x20ftypisom" + bytes(media.MAX_INLINE_FILE_BYTES)
    html = render.result_html(every_kind({**EVERY_FILE, ("output", "video", "v.mp4"): big}))
    assert "<video" not in html
    line = "<code>video/v.mp4</code> &middot; images &middot; video/mp4 &middot; 8.0 MB, not shown inline"
    assert f"{line} (over the 8.0 MB limit per file): use result.files or result.save()" in html
    chunk = b"\0\0\0\x20ftypisom" + bytes(media.MAX_INLINE_FILE_BYTES - 1024)  # under the per-file cap
    outputs = {"1": {"video": [{"filename": f"{i}.mp4", "type": "output"} for i in range(4)]}}
    refs = file_refs(outputs)
    res = Result("p", A, "success", outputs=outputs, refs=refs, fetched={}, fetch=lambda r: [chunk] * len(r), elapsed=1)
    html = render.result_html(res)
    assert html.count("<video ") == 3 and "not shown inline (the 24.0 MB limit per result is reached)" in html


def test_files_the_server_does_not_serve_or_cannot_be_reached_for_are_said_not_raised() -> None:
    missing = {k: v for k, v in EVERY_FILE.items() if k[2] != "v.mp4"}
    html = render.result_html(every_kind(missing))
    assert f"<code>video/v.mp4</code> &middot; images &middot; video/mp4 &middot; not served by {A}" in html
    assert html.count("<img ") == 4

    def down(refs: list[FileRef]) -> list[bytes | None]:
        raise ServerUnavailable(f"{A} did not answer GET /view: refused", server=A)

    html = render.result_html(every_kind(fetch=down))
    assert html.count("not fetched: ") == 7 and "did not answer GET /view" in html
    assert render.result_bundle(every_kind(fetch=down)) is None


def test_the_bundle_has_a_static_png_of_the_stills_and_first_frames() -> None:
    bundle = render.result_bundle(every_kind())
    assert bundle is not None and set(bundle) == {"image/png"}
    strip = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    # still.png (4x4), vhs.gif's first frame (6x4) and the hostile-named PNG (4x4); anim.webp's bytes do not decode
    assert strip.size == (4 + 4 + 6 + 4 + 4, 4)
    assert strip.convert("RGB").getpixel((0, 0)) == (7, 0, 0) and strip.convert("RGB").getpixel((8, 0)) == (0, 0, 0)
    audio_only = {"1": {"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]}}
    res = Result("p", A, "success", outputs=audio_only, refs=file_refs(audio_only), fetched={},
                 fetch=served_by(EVERY_FILE), elapsed=1)  # fmt: skip
    assert render.result_bundle(res) is None


@pytest.mark.parametrize("n", [0, 1])
def test_a_result_without_files(n: int) -> None:
    outputs: dict[str, Any] = {"1": {"text": ["only text"]}} if n else {}
    res = Result("p", A, "success", outputs=outputs, refs=[], fetched={}, fetch=served_by({}), elapsed=1)
    html = render.result_html(res)
    assert ("1 text" if n else "no outputs") in html
    assert render.result_bundle(res) is None


# -- errors -----------------------------------------------------------------------------------------------------------
def test_validation_error_renders_a_per_node_table() -> None:
    steps = InputError("value_smaller_than_min", "Value 0 smaller than min of 1", "", "steps")
    ckpt = InputError("value_not_in_list", "Value not in list", "x.ckpt", "ckpt_name")
    nodes = (NodeError("3", "KSampler", (steps,)), NodeError("12", "CheckpointLoaderSimple", (ckpt,)))
    error = ValidationError(
        f"{A} refused the workflow: Prompt outputs failed validation\n  node 3 ...", nodes, server=A
    )
    lines = render.error_lines(error)
    assert lines[0] == f"ValidationError: {A} refused the workflow: Prompt outputs failed validation"
    assert lines[1].split() == ["node", "class", "input", "error"]
    assert lines[2].split()[:3] == ["3", "KSampler", "steps"] and "smaller than min" in lines[2]
    assert lines[3].split()[:3] == ["12", "CheckpointLoaderSimple", "ckpt_name"] and "x.ckpt" in lines[3]
    assert lines[2].index("KSampler") == lines[3].index("CheckpointLoaderSimple")  # aligned columns


def test_execution_error_names_the_node_and_its_message() -> None:
    error = ExecutionError(
        "node 5 (Raise) raised RuntimeError on ...", server=A, prompt_id="p-9", node_id="5", node_type="Raise",
        exception_type="RuntimeError", exception_message="it broke",
        traceback=tuple(f'  File "n.py", line {i}\n' for i in range(10)),
    )  # fmt: skip
    text = render.error_text(error)
    assert text.startswith(f"ExecutionError: a node failed on {A}")
    assert "node:      5 (Raise)" in text and "exception: RuntimeError: it broke" in text and "p-9" in text
    assert "line 9" in text and "line 5" not in text  # only the last lines of the server's traceback


def test_unreachable_server_is_named() -> None:
    text = render.error_text(ServerUnavailable("connection refused", server=B))
    assert text == f"ServerUnavailable: connection refused\n  server: {B}"
    text = render.error_text(ServerUnavailable(f"cannot open a WebSocket to {B}: refused", server=B))
    assert text.count(B) == 1


def test_workflow_error_keeps_its_line_and_column_message() -> None:
    error = WorkflowError("cell is not valid JSON: Expecting ',' delimiter at line 3, column 5", line=3, column=5)
    assert render.error_lines(error) == [f"WorkflowError: {error.message}"]


def test_the_affinity_behind_a_balancer_is_shown_with_its_backend_moves_and_its_error() -> None:
    status = {
        "servers": [
            {"url": A, "affinity": "cookie", "backend_changes": 2, "connection_state": "OPEN"},
            {"url": "http://lb:1", "affinity": "broken", "affinity_error": "http://lb:1 is a load balancer without"},
        ]
    }
    text = render.status_text(status)
    assert "affinity: cookie, moved 2x" in text
    assert "affinity: NONE: a balancer without affinity  last error: http://lb:1 is a load balancer" in text
    rows = server_rows(render.status_html(status))
    assert [r["affinity"] for r in rows] == ["cookie, moved 2x", "NONE: a balancer without affinity"]
    assert rows[1]["last error"].startswith("http://lb:1 is a load balancer without")


def test_a_displayed_result_carries_html_text_and_the_static_png(loaded: InteractiveShell) -> None:
    data, _ = loaded.display_formatter.format(every_kind())
    assert set(data) == {"text/plain", "text/html", "image/png"}
    assert data["text/html"] == render.result_html(every_kind())
    assert data["image/png"] == render.result_bundle(every_kind())["image/png"]  # type: ignore[index]


# -- looks: JupyterLab's theme variables, badges, no repetition -------------------------------------------------------
def test_states_are_coloured_badges_in_jupyterlab_theme_colours_with_fallbacks() -> None:
    expected = {
        "waiting": "rgba(127, 127, 127, 0.2)",
        "queued": "var(--jp-info-color1, #0097a7)",
        "running": "var(--jp-brand-color1, #1976d2)",
        "success": "var(--jp-success-color1, #388e3c)",
        "error": "var(--jp-error-color1, #d32f2f)",
        "cancelled": "var(--jp-warn-color1, #f57c00)",
    }
    for status_, background in expected.items():
        html = render.task_html(make_task(status=status_, server=A))
        (style,) = re.findall(rf'<span class="comfy-badge comfy-state comfy-state-{status_}" style="([^"]*)"', html)
        assert f"background:{background}" in style and "border-radius" in style
    assert "color:var(--jp-ui-font-color1, inherit)" in render.task_html(make_task(status="running"))


def test_the_panel_uses_badges_theme_variables_and_marks_a_down_server() -> None:
    html = render.status_html(status())
    assert re.search(r'<span class="comfy-badge"[^>]*><b class="comfy-locked">locked: [^<]*</b></span>', html)
    assert '<span class="comfy-badge comfy-connected"' in html
    style = re.findall(r"<style>(.*?)</style>", html)[0]
    assert "var(--jp-border-color2," in style and "var(--jp-layout-color2," in style
    assert "table.comfy-status-servers.comfy-status-servers td{" in style  # outranks JupyterLab's own td rule
    rows = re.findall(r'<tr class="([^"]*)">', html)
    assert rows == ["comfy-server-row comfy-server-locked", "comfy-server-row comfy-server-down"]


def test_the_result_summary_leads_with_its_state_badge() -> None:
    html = render.result_html(make_result(1))
    summary = re.findall(r'<div class="comfy-result-summary">(.*?)</div>', html)[0]
    assert summary.startswith('<span class="comfy-badge comfy-state comfy-state-success"')
    assert "var(--jp-success-color1," in summary


def test_a_collapsed_progress_widget_says_only_where_a_failover_moved_the_prompt() -> None:
    """A blocking cell collapses its progress widget once the Result is shown below it: nothing is said twice."""
    plain = make_task(server=A)
    plain._finish(make_result(1))
    moved = make_task(server=B, moved=f"moved from {A} to {B}: {A} stopped answering")
    moved.attempts = [Attempt(A, "p-0", "lost", "stopped answering"), Attempt(B, "p-1", "success")]
    moved._finish(make_result(1))
    engine = api.get_engine()
    widgets = [ProgressWidget(task, engine) for task in (plain, moved)]
    try:
        for widget in widgets:
            assert "success" in widget.text.value and widget.box.layout.display != "none"
            widget.collapse()
        quiet, noted = widgets
        assert quiet.box.layout.display == "none" and quiet.text.value == ""
        assert quiet._repr_mimebundle_()["text/html"] == quiet._repr_mimebundle_()["text/plain"] == ""
        assert noted.box.layout.display != "none" and noted.row.layout.display == "none"
        assert "success" not in noted.text.value and f"moved from {A} to {B}" in noted.text.value
        assert "(2 attempts)" in noted.text.value
        assert (
            noted._repr_mimebundle_()["text/plain"] == f"comfy prompt p-1: moved from {A} to {B}: {A} stopped answering"
        )
    finally:
        for widget in widgets:
            widget.close()
