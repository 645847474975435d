"""``%comfy`` and ``%%comfy`` in an in-process IPython shell against fake ComfyUI servers: options, usage errors,
config, substitution, clean error rendering, progress widgets, targets, --no-wait, interrupts, reload hygiene."""

from __future__ import annotations

import _thread
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image
from traitlets.config import Config

from comfy_notebook import api
from comfy_notebook.core.errors import Cancelled, ExecutionError, ServerUnavailable, ValidationError, WorkflowError
from comfy_notebook.engine.task import Result, Task
from comfy_notebook.notebook import extension
from comfy_notebook.notebook.progress import CSS_BOX
from comfy_notebook.notebook.syntax import HELP, CellOptions, parse_cell_line
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.notebook.conftest import WORKFLOW, engine_threads, magics_of, make_shell

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def cell(ip: InteractiveShell, line: str, body: str = WORKFLOW):
    """Run ``%%comfy line`` as a cell (errors are rendered, not raised) and return IPython's ExecutionResult."""
    return ip.run_cell(f"%%comfy {line}\n{body}")


def graph(**inputs: object) -> str:
    return json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": inputs},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    })  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- option parsing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", CellOptions()),
        ("result <<", CellOptions(target="result")),
        ("result<< --no-wait", CellOptions(target="result", no_wait=True)),
        (
            "r << -f 'my flow.json' --server http://h:1 --timeout 2.5",
            CellOptions("r", "my flow.json", "http://h:1", 2.5),
        ),
        ("--no-wait --timeout 3", CellOptions(timeout=3.0, no_wait=True)),
    ],
)
def test_cell_line_options(line: str, expected: CellOptions) -> None:
    assert parse_cell_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--timeout soon", "not a number"),
        ("--timeout -1", "must be positive"),
        ("1x <<", "not a valid variable name"),
        ("class <<", "not a valid variable name"),
        ("--no-wait r <<", "the target goes first"),
        ("-f 'unclosed", "No closing quotation"),
        ("extra", "unrecognized arguments: extra"),
    ],
)
def test_bad_cell_lines_are_one_line_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_cell_line(line)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "needs a command"),
        ("bogus", "unknown %comfy command 'bogus'"),
        ("lock", "usage: %comfy lock URL"),
        ("status now", "takes no arguments"),
        ("reset all", "takes no arguments"),
        ("servers not a url://", "not a ComfyUI server URL"),
        ("r <<", "only from a file"),
        ("--no-wait", "only from a file"),
        ("mode bogus", "%comfy mode: unknown mode 'bogus': use 'lock'"),
        ("mode lock pool", r"usage: %comfy mode \[lock\|pool\]"),
    ],
)
def test_bad_line_magic_usage(loaded: InteractiveShell, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        loaded.run_line_magic("comfy", line)
    assert "\n" not in str(info.value)


def test_usage_error_in_a_cell_fails_the_cell_with_one_line(loaded: InteractiveShell, capsys) -> None:
    outcome = cell(loaded, "--bogus")
    assert not outcome.success and isinstance(outcome.error_in_exec, UsageError)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err


def test_help(loaded: InteractiveShell, capsys) -> None:
    loaded.run_line_magic("comfy", "help")
    assert capsys.readouterr().out.strip() == HELP.strip()


# -- servers, config, lock, reset -------------------------------------------------------------------------------------
def test_servers_sets_the_pool_and_shows_it(
    loaded: InteractiveShell, fake: FakeComfy, fake2: FakeComfy, capsys
) -> None:
    loaded.run_line_magic("comfy", f"servers {fake.url} {fake2.url}")
    assert [s["url"] for s in api.get_status()["servers"]] == [fake.url, fake2.url]
    capsys.readouterr()
    loaded.run_line_magic("comfy", "servers")
    assert capsys.readouterr().out.splitlines() == ["servers (2):", f"  {fake.url}", f"  {fake2.url}"]


def test_servers_output_hides_credentials(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    loaded.run_line_magic("comfy", "servers " + fake.url.replace("http://", "http://alice:s3cret@"))
    out = capsys.readouterr().out
    assert fake.url in out and "s3cret" not in out and "alice" not in out


def test_config_magic_sets_the_pool(loaded: InteractiveShell, fake2: FakeComfy) -> None:
    loaded.run_line_magic("config", f"ComfyMagics.servers = [{fake2.url!r}]")
    assert [s["url"] for s in api.get_status()["servers"]] == [fake2.url]


def test_ipython_config_servers_apply_at_load(fake: FakeComfy) -> None:
    cfg = Config()
    cfg.ComfyMagics.servers = [fake.url]
    ip = make_shell(cfg)
    try:
        ip.run_line_magic("load_ext", "comfy_notebook")
        assert [s["url"] for s in api.get_status()["servers"]] == [fake.url]
    finally:
        extension.unload(ip)
        InteractiveShell.clear_instance()


def test_comfy_servers_environment_variable(
    shell: InteractiveShell, fake: FakeComfy, fake2: FakeComfy, monkeypatch
) -> None:
    monkeypatch.setenv("COMFY_SERVERS", f"{fake.url}, {fake2.url}")
    shell.run_line_magic("load_ext", "comfy_notebook")
    assert [s["url"] for s in api.get_status()["servers"]] == [fake.url, fake2.url]


def test_lock_pins_the_lock_and_reset_clears_it(
    loaded: InteractiveShell, fake: FakeComfy, fake2: FakeComfy, capsys
) -> None:
    loaded.run_line_magic("comfy", f"servers {fake.url} {fake2.url}")
    loaded.run_line_magic("comfy", f"lock {fake2.url}")
    assert capsys.readouterr().out.strip().endswith(f"locked: {fake2.url}")
    assert api.get_status()["locked_server"] == fake2.url
    loaded.run_line_magic("comfy", "reset")
    assert capsys.readouterr().out.startswith(f"reset: lock cleared (was {fake2.url}), 0 tasks cancelled")
    assert api.get_status()["locked_server"] is None


def test_lock_on_a_server_outside_the_pool_is_a_usage_error(loaded: InteractiveShell, fake2: FakeComfy) -> None:
    with pytest.raises(UsageError, match="not in the server pool"):
        loaded.run_line_magic("comfy", f"lock {fake2.url}")


# -- mode -------------------------------------------------------------------------------------------------------------
def test_mode_shows_and_sets_the_engine_mode(loaded: InteractiveShell, capsys) -> None:
    loaded.run_line_magic("comfy", "mode")
    assert capsys.readouterr().out.startswith("mode: lock (one server at a time")
    loaded.run_line_magic("comfy", "mode pool")
    assert capsys.readouterr().out.startswith("mode: pool (every server at once")
    assert api.get_engine().mode == "pool" and api.get_status()["mode"] == "pool"
    assert magics_of(loaded).mode == "pool"  # the trait follows, so a later %config of either value applies
    loaded.run_line_magic("comfy", "mode LOCK")
    assert api.get_engine().mode == "lock" and magics_of(loaded).mode == "lock"


def test_a_bad_mode_fails_the_cell_with_one_line_and_keeps_the_mode(loaded: InteractiveShell, capsys) -> None:
    loaded.run_line_magic("comfy", "mode pool")
    capsys.readouterr()
    outcome = loaded.run_cell("%comfy mode fast")
    assert isinstance(outcome.error_in_exec, UsageError)
    out = capsys.readouterr()
    assert "unknown mode 'fast'" in out.out + out.err and "Traceback" not in out.out + out.err
    assert api.get_engine().mode == "pool"


def test_config_magic_sets_the_mode(loaded: InteractiveShell, caplog) -> None:
    loaded.run_line_magic("config", "ComfyMagics.mode = 'pool'")
    assert api.get_engine().mode == "pool"
    loaded.run_line_magic("comfy", "mode lock")
    loaded.run_line_magic("config", "ComfyMagics.mode = 'pool'")  # the same value again still switches
    assert api.get_engine().mode == "pool"
    loaded.run_line_magic("config", "ComfyMagics.mode = 'fast'")  # %config logs a bad value as one line
    assert "expected any of ['lock', 'pool']" in caplog.text and api.get_engine().mode == "pool"


def test_ipython_config_mode_applies_at_load(fake: FakeComfy) -> None:
    cfg = Config()
    cfg.ComfyMagics.mode = "pool"
    ip = make_shell(cfg)
    try:
        ip.run_line_magic("load_ext", "comfy_notebook")
        assert api.get_engine().mode == "pool"
    finally:
        extension.unload(ip)
        InteractiveShell.clear_instance()


def test_comfy_mode_environment_variable_is_read_when_the_engine_starts(
    shell: InteractiveShell, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("COMFY_MODE", "pool")
    shell.run_line_magic("load_ext", "comfy_notebook")
    assert api.get_engine().mode == "pool"
    shell.run_line_magic("comfy", "mode")
    assert capsys.readouterr().out.startswith("mode: pool")


def test_a_bad_comfy_mode_environment_variable_fails_the_load_with_one_line(
    shell: InteractiveShell, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("COMFY_MODE", "fast")
    outcome = shell.run_cell("%load_ext comfy_notebook")
    assert isinstance(outcome.error_in_exec, UsageError)
    out = capsys.readouterr()
    assert "unknown mode 'fast'" in out.out + out.err and "Traceback" not in out.out + out.err
    assert "ComfyMagics" not in shell.magics_manager.registry and not engine_threads()
    monkeypatch.setenv("COMFY_MODE", "pool")
    shell.run_line_magic("load_ext", "comfy_notebook")  # fixed: loads
    assert api.get_engine().mode == "pool"


def test_reload_keeps_the_mode(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.run_line_magic("comfy", "mode pool")
    loaded.run_line_magic("reload_ext", "comfy_notebook")
    assert api.get_engine().mode == "pool"
    assert [s["url"] for s in api.get_status()["servers"]] == [fake.url]


# -- the status panel -------------------------------------------------------------------------------------------------
def test_status_displays_the_one_panel(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output() as captured:
        loaded.run_line_magic("comfy", "status")
        loaded.run_line_magic("comfy", "status")
    panel = magics_of(loaded).panel
    assert panel is not None
    ids = [out.data[WIDGET_MIME]["model_id"] for out in captured.outputs]
    assert ids == [panel.box.model_id, panel.box.model_id]
    assert "locked: none" in captured.outputs[0].data["text/html"]


def test_status_without_widgets_is_static(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.run_line_magic("config", "ComfyMagics.widgets = 'off'")
    with capture_output() as captured:
        loaded.run_line_magic("comfy", "status")
    (out,) = captured.outputs
    assert WIDGET_MIME not in out.data and "locked: none" in out.data["text/html"]
    assert magics_of(loaded).panel is None


# -- running workflows ------------------------------------------------------------------------------------------------
def test_target_stores_the_result_and_the_summary_is_displayed_once(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output() as captured:
        outcome = cell(loaded, "result <<")
    assert outcome.success and outcome.result is None
    result = loaded.user_ns["result"]
    assert isinstance(result, Result) and result.status == "success" and result.server == fake.url
    assert result.prompt_id in fake.history_ids and len(result.files) == 1
    widget_out, summary = [out for out in captured.outputs if not out.update]
    assert WIDGET_MIME in widget_out.data
    (final,) = [out for out in captured.outputs if out.update]  # the saved fallback: the widget has collapsed,
    assert WIDGET_MIME in final.data and final.data["text/plain"] == final.data["text/html"] == ""  # said once below
    assert '<img src="data:image/png;base64,' in summary.data["text/html"]
    assert summary.data["text/plain"].startswith(f"comfy prompt {result.prompt_id}: success on {fake.url}")


def test_without_target_the_result_is_the_cell_value(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output() as captured:
        outcome = cell(loaded, "")
    assert outcome.success and isinstance(outcome.result, Result)
    # only the progress widget (and its final update); the result is displayed as Out[n], once
    assert len([out for out in captured.outputs if not out.update]) == 1
    html = loaded.display_formatter.format(outcome.result)[0]["text/html"]
    assert "<img " in html


def test_progress_widget_ends_full_with_server_and_hides_the_preview_once_images_arrive(
    loaded: InteractiveShell, fake: FakeComfy
) -> None:
    fake.preview = True
    fake.steps = 3
    assert cell(loaded, "r <<").success
    (widget,) = magics_of(loaded).progress_widgets
    assert CSS_BOX in widget.box._dom_classes
    assert widget.bar.value == widget.bar.max and widget.bar.bar_style == "success"
    # The Result below says "success, server, elapsed": the widget hides rather than say it a second time.
    assert widget.box.layout.display == "none" and widget.text.value == ""
    assert widget.preview.value and widget.preview.layout.display == "none"


def test_no_wait_returns_the_task_and_its_widget_keeps_updating(loaded: InteractiveShell, fake: FakeComfy) -> None:
    fake.steps, fake.step_delay = 4, 0.1
    with capture_output() as captured:
        outcome = cell(loaded, "--no-wait", graph(width=8))
    task = outcome.result
    assert isinstance(task, Task)
    assert captured.outputs == []  # the task is the cell value: Out[n] (the display hook) shows the live widget
    (widget,) = magics_of(loaded).progress_widgets
    assert widget.task is task
    wait_until(lambda: "node: EmptyImage (#1)" in widget.text.value and widget.bar.value >= 1, timeout=10)
    assert widget.bar.max == 4
    task.result(10)
    wait_until(lambda: widget.bar.bar_style == "success", timeout=5)


def test_no_wait_with_target_stores_the_task(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output() as captured:
        outcome = cell(loaded, "t << --no-wait")
    assert outcome.success and outcome.result is None
    task = loaded.user_ns["t"]
    assert isinstance(task, Task)
    (out,) = captured.outputs
    assert WIDGET_MIME in out.data
    assert task.result(10).status == "success"


def test_queue_position_is_shown_while_waiting(loaded: InteractiveShell, fake: FakeComfy) -> None:
    fake.steps, fake.step_delay = 100, 0.05
    first = cell(loaded, "--no-wait").result
    wait_until(lambda: first.status == "running", timeout=10)
    second = cell(loaded, "--no-wait").result
    widget = magics_of(loaded).progress_widgets[-1]
    assert widget.task is second
    wait_until(lambda: "queue: 1 ahead" in widget.text.value, timeout=10)  # the engine polls /queue every ~2 s
    second.cancel()
    first.cancel()


def test_server_option_runs_on_that_server(loaded: InteractiveShell, fake: FakeComfy, fake2: FakeComfy) -> None:
    loaded.run_line_magic("comfy", f"servers {fake.url} {fake2.url}")
    assert cell(loaded, f"r << --server {fake2.url}").success
    assert loaded.user_ns["r"].server == fake2.url and loaded.user_ns["r"].prompt_id in fake2.history_ids


def test_file_option(loaded: InteractiveShell, fake: FakeComfy, tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    path.write_text(WORKFLOW)
    assert loaded.run_cell(f"%comfy r << -f {path}").success  # the line form: IPython refuses empty cell bodies
    assert loaded.user_ns["r"].status == "success"
    assert loaded.run_cell(f"%%comfy r2 << -f {path}\n\n").success
    assert loaded.user_ns["r2"].status == "success"


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [("", "   \n", "the cell is empty"), ("-f x.json", WORKFLOW, "either in the cell or with -f FILE")],
)
def test_missing_or_double_workflow(loaded: InteractiveShell, line: str, body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        loaded.run_cell_magic("comfy", line, body)


# -- variables --------------------------------------------------------------------------------------------------------
def test_variables_are_substituted_by_name(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.user_ns["width"] = 16
    loaded.user_ns["tag"] = "ignored"
    assert cell(loaded, "r <<", graph(width="$width", label="$$tag", note="a $5 bill")).success
    sent = fake.history(loaded.user_ns["r"].prompt_id)["prompt"][2]["1"]["inputs"]
    assert sent == {"width": 16, "label": "$tag", "note": "a $5 bill"}


def test_unknown_variable_fails_the_cell_cleanly(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    outcome = cell(loaded, "r <<", graph(seed="$missing_seed"))
    assert not outcome.success and isinstance(outcome.error_in_exec, WorkflowError)
    out = capsys.readouterr().out
    assert "$missing_seed" in out and "Traceback" not in out
    assert "r" not in loaded.user_ns and fake.posted_prompt_ids == []


def test_line_is_not_variable_expanded(loaded: InteractiveShell) -> None:
    loaded.user_ns["name"] = "oops"
    with pytest.raises(UsageError, match=r"'\$name' is not a valid variable name"):
        loaded.run_cell_magic("comfy", "$name <<", WORKFLOW)


# -- clean errors -----------------------------------------------------------------------------------------------------
def test_malformed_json_names_line_and_column(loaded: InteractiveShell, capsys) -> None:
    outcome = cell(loaded, "", '{\n  "1": {"class_type": "EmptyImage"}\n  "2": {}\n}')
    error = outcome.error_in_exec
    assert isinstance(error, WorkflowError) and (error.line, error.column) == (4, 3)  # cell lines: %%comfy is 1
    out = capsys.readouterr().out
    assert "line 4, column 3" in out and "Traceback" not in out


def test_a_ui_format_cell_is_converted_with_the_servers_node_types(
    loaded: InteractiveShell, fake: FakeComfy, capsys
) -> None:
    """The cell's UI-format workflow reaches the converter with the server's ``/object_info`` (the fake has no
    ``Fancy`` node): a one-line error naming the server and the node, nothing queued. Real conversions run on real
    servers (tests/integration/test_ui_workflows.py)."""
    node = {"id": 7, "type": "Fancy", "mode": 0, "inputs": [], "outputs": [], "widgets_values": []}
    outcome = cell(loaded, "", json.dumps({"nodes": [node], "links": [], "version": 0.4}))
    assert isinstance(outcome.error_in_exec, WorkflowError)
    out = capsys.readouterr().out
    assert f"node types of {fake.url}" in out and "no node type Fancy (node #7)" in out
    assert fake.history_ids == []


def test_validation_error_shows_a_node_table(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    body = json.dumps(
        {"1": {"class_type": "Invalid", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    )
    outcome = cell(loaded, "", body)
    assert isinstance(outcome.error_in_exec, ValidationError) and not outcome.success
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["node", "class", "input", "error"])
    assert lines[header + 1].split()[:2] == ["1", "Invalid"]


def test_node_exception_shows_node_and_message(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    body = json.dumps({"1": {"class_type": "Raise", "inputs": {"message": "no GPU today"}},
                       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}})  # fmt: skip
    outcome = cell(loaded, "r <<", body)
    assert isinstance(outcome.error_in_exec, ExecutionError) and "r" not in loaded.user_ns
    out = capsys.readouterr().out
    assert "node:      1 (Raise)" in out and "RuntimeError: no GPU today" in out
    assert "Traceback (most recent call last)" not in out
    (widget,) = magics_of(loaded).progress_widgets
    assert widget.bar.bar_style == "danger" and "no GPU today" in widget.text.value


def test_unreachable_server_is_named(loaded: InteractiveShell, capsys) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    loaded.run_line_magic("comfy", f"servers {dead}")
    outcome = cell(loaded, "")
    assert isinstance(outcome.error_in_exec, ServerUnavailable)
    out = capsys.readouterr().out
    assert dead in out and "Traceback" not in out


def test_timeout_cancels_the_prompt(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    fake.steps, fake.step_delay = 50, 0.1
    outcome = cell(loaded, "--timeout 0.5")
    assert isinstance(outcome.error_in_exec, TimeoutError)
    assert "did not finish within 0.5 s; it was cancelled" in capsys.readouterr().out
    (prompt_id,) = fake.posted_prompt_ids
    assert prompt_id in fake.interrupt_requests


def test_default_timeout_from_config(loaded: InteractiveShell, fake: FakeComfy) -> None:
    fake.steps, fake.step_delay = 50, 0.1
    loaded.run_line_magic("config", "ComfyMagics.default_timeout = 0.3")
    assert isinstance(cell(loaded, "").error_in_exec, TimeoutError)


def test_kernel_interrupt_cancels_only_this_prompt(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    fake.hold()  # the prompt stays queued, so the cell blocks until the interrupt
    interrupter = threading.Thread(
        target=lambda: (wait_until(lambda: bool(fake.pending_prompt_ids), timeout=10), _thread.interrupt_main())
    )
    interrupter.start()
    outcome = cell(loaded, "r <<")
    interrupter.join()
    assert isinstance(outcome.error_in_exec, Cancelled) and "r" not in loaded.user_ns
    (prompt_id,) = fake.posted_prompt_ids
    # The interrupt may land while the POST's answer is on its way: the drop then follows that answer, after the
    # cell has already ended (the task is settled at once; the server is told in the background).
    wait_until(lambda: fake.deleted_from_queue == [prompt_id], timeout=5)
    assert None not in fake.interrupt_requests  # targeted: never a global interrupt
    out = capsys.readouterr().out
    assert f"interrupted: prompt {prompt_id} on {fake.url} was cancelled" in out and "Traceback" not in out


# -- lifecycle --------------------------------------------------------------------------------------------------------
def test_three_reloads_leave_one_engine_thread_and_unload_none(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.run_line_magic("comfy", "status")
    first = magics_of(loaded)
    old_panel = first.panel
    assert cell(loaded, "r <<").success
    old_widgets = list(first.progress_widgets)
    for _ in range(3):
        loaded.run_line_magic("reload_ext", "comfy_notebook")
        assert len(engine_threads()) == 1
    assert old_panel is not None and old_panel.closed and all(w.closed for w in old_widgets)
    assert magics_of(loaded) is not first and magics_of(loaded).panel is None
    assert [s["url"] for s in api.get_status()["servers"]] == [fake.url]  # the pool survives a reload
    loaded.run_line_magic("comfy", "status")
    assert magics_of(loaded).panel is not old_panel
    loaded.run_line_magic("unload_ext", "comfy_notebook")
    wait_until(lambda: not engine_threads(), timeout=5)
    manager = loaded.magics_manager
    assert "comfy" not in manager.magics["line"] and "comfy" not in manager.magics["cell"]
    assert "ComfyMagics" not in manager.registry
    assert not any(type(c).__name__ == "ComfyMagics" for c in loaded.configurables)
    formatters = loaded.display_formatter
    assert Task not in formatters.formatters["text/plain"].type_printers
    assert Result not in formatters.formatters["text/html"].type_printers
    assert Task not in formatters.mimebundle_formatter.type_printers


def test_unload_closes_widgets_and_running_widgets_stop(loaded: InteractiveShell, fake: FakeComfy) -> None:
    fake.hold()
    task = cell(loaded, "--no-wait").result
    wait_until(lambda: task.status == "queued", timeout=10)
    loaded.run_line_magic("comfy", "status")
    magics = magics_of(loaded)
    widgets = [*magics.progress_widgets, magics.panel]
    loaded.run_line_magic("unload_ext", "comfy_notebook")
    assert all(w is not None and w.closed for w in widgets)
    assert task.status == "cancelled" and not engine_threads()


def test_plain_text_of_tasks_and_results(loaded: InteractiveShell, fake: FakeComfy) -> None:
    result = cell(loaded, "").result
    plain = loaded.display_formatter.formatters["text/plain"]
    assert plain(result).startswith(f"comfy prompt {result.prompt_id}: success on {fake.url}")
    assert plain([result]) == f"[{result!r}]"  # inside a container: the short repr


# -- sweeps (the grid itself: test_grid.py) ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("s << --over 3.seed=1,2,3", CellOptions(target="s", over=("3.seed=1,2,3",))),
        (
            "s << --over 3.seed=1,2 --over KSampler.cfg=5,7.5 --zip --timeout 9",
            CellOptions(target="s", timeout=9.0, over=("3.seed=1,2", "KSampler.cfg=5,7.5"), zip=True),
        ),
        ("--over '6.text=a red fox,a cat'", CellOptions(over=("6.text=a red fox,a cat",))),
        ("s << --sweep axes --no-wait", CellOptions(target="s", no_wait=True, sweep_var="axes")),
    ],
)
def test_sweep_cell_lines(line: str, expected: CellOptions) -> None:
    options = parse_cell_line(line)
    assert options == expected and options.is_sweep


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("s << --zip", "--zip pairs the values of a sweep"),
        ("s << --over 3.seed", r"--over takes KEY=V1,V2,... \(e.g. --over 3.seed=1,2,3\), not '3.seed'"),
        ("s << --over =1,2", "--over takes KEY=V1,V2"),
        ("s << --sweep 1x", "--sweep takes the name of a notebook variable"),
        ("s << --over", "expected one argument"),
    ],
)
def test_bad_sweep_lines_are_one_line_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_cell_line(line)
    assert "\n" not in str(info.value)


def test_help_shows_the_sweep_syntax() -> None:
    assert "--over KEY=V1,V2,..." in HELP and "--sweep VAR" in HELP and "--zip" in HELP


def test_a_sweep_over_a_dict_variable_and_ranges(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.user_ns["axes"] = {"1.width": range(8, 10)}
    loaded.user_ns["tag"] = "from a variable"
    with capture_output():
        outcome = cell(loaded, "s << --sweep axes --over 1.height=1..3", graph(width=1, height=1, label="$tag"))
    assert outcome.success and outcome.result is None
    sweep = loaded.user_ns["s"]
    assert [point.params for point in sweep.points][:2] == [
        {"1.width": 8, "1.height": 1},
        {"1.width": 8, "1.height": 2},
    ]
    sent = [fake.history(p.task.prompt_id)["prompt"][2]["1"]["inputs"] for p in sweep.points]
    assert [(i["width"], i["height"]) for i in sent] == [(w, h) for w in (8, 9) for h in (1, 2, 3)]
    assert {i["label"] for i in sent} == {"from a variable"}  # "$name" substitution, as for one prompt


def test_zipped_sweep_pairs_the_values(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output():
        assert cell(loaded, "s << --over 1.width=8,16 --over 1.height=4,5 --zip", graph(width=1, height=1)).success
    assert [p.params for p in loaded.user_ns["s"].points] == [
        {"1.width": 8, "1.height": 4},
        {"1.width": 16, "1.height": 5},
    ]


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("s << --over 1.width=1,,2", WorkflowError, "has an empty value"),
        ("s << --over 1.width=8,16 --over 1.height=1 --zip", WorkflowError, "they need equal lengths"),
        ("s << --over 1.depth=1,2", WorkflowError, "node 1 (EmptyImage) has no input 'depth'; its inputs: height"),
        ("s << --sweep nowhere", UsageError, "--sweep nowhere: no notebook variable of that name"),
        ("s << --sweep tag", UsageError, "must name a dict of axes"),
    ],
)
def test_sweep_mistakes_fail_the_cell_with_one_line_and_queue_nothing(
    loaded: InteractiveShell, fake: FakeComfy, capsys, *, line: str, error: type, message: str
) -> None:
    loaded.user_ns["tag"] = "not a dict"
    outcome = cell(loaded, line, graph(width=1, height=1))
    assert isinstance(outcome.error_in_exec, error)
    out = capsys.readouterr()
    assert message in out.out + out.err and "Traceback" not in out.out + out.err
    assert "s" not in loaded.user_ns and fake.posted_prompt_ids == []


def test_kernel_interrupt_cancels_the_whole_sweep(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    fake.hold()
    # Once the sweep is submitted (``s`` is set right after): an interrupt during the submission is another case.
    submitted = lambda: "s" in loaded.user_ns and len(fake.pending_prompt_ids) == 3  # noqa: E731
    interrupter = threading.Thread(target=lambda: (wait_until(submitted, timeout=10), _thread.interrupt_main()))
    interrupter.start()
    with capture_output() as captured:
        outcome = cell(loaded, "s << --over 1.width=1,2,3")
    interrupter.join()
    assert isinstance(outcome.error_in_exec, Cancelled)
    assert "interrupted: 3 of 3 sweep points cancelled\n" in captured.stdout
    sweep = loaded.user_ns["s"]
    assert [p.status for p in sweep.points] == ["cancelled"] * 3
    wait_until(lambda: sorted(fake.deleted_from_queue) == sorted(fake.posted_prompt_ids), timeout=5)
    assert None not in fake.interrupt_requests  # targeted: never a global interrupt


def test_a_sweep_timeout_cancels_what_is_left(loaded: InteractiveShell, fake: FakeComfy, capsys) -> None:
    fake.hold()
    outcome = cell(loaded, "s << --over 1.width=1,2 --timeout 0.3")
    assert isinstance(outcome.error_in_exec, TimeoutError)
    assert "the sweep did not finish within 0.3 s: 2 of 2 points were cancelled" in capsys.readouterr().out
    assert [p.status for p in loaded.user_ns["s"].points] == ["cancelled", "cancelled"]


def test_no_wait_sweep_is_the_cell_value_with_its_live_grid(loaded: InteractiveShell, fake: FakeComfy) -> None:
    with capture_output() as captured:
        outcome = cell(loaded, "--over 1.width=8,16")
    sweep = outcome.result
    assert sweep is None  # blocking without a target: the grid is shown, nothing is returned twice
    assert len([out for out in captured.outputs if not out.update]) == 1
    with capture_output() as captured:
        outcome = cell(loaded, "--no-wait --over 1.width=8,16")
    assert outcome.success and outcome.result.wait(20).done() and captured.outputs == []  # Out[n] shows the grid
    assert magics_of(loaded).grids[-1].sweep is outcome.result


def test_cancel_on_the_progress_widget_ends_the_cell_with_a_short_cancelled_message(
    loaded: InteractiveShell, fake: FakeComfy, capsys
) -> None:
    fake.hold()  # the prompt stays queued, so the cell blocks until the click

    def click() -> None:  # what the Cancel button does when clicked while the cell waits
        wait_until(lambda: bool(fake.pending_prompt_ids) and bool(magics_of(loaded).progress_widgets), timeout=10)
        (widget,) = magics_of(loaded).progress_widgets
        assert widget.cancel_button.description == "Cancel" and widget.cancel_button.layout.display != "none"
        widget.cancel_button.click()

    clicker = threading.Thread(target=click)
    clicker.start()
    outcome = cell(loaded, "r <<")
    clicker.join()
    assert isinstance(outcome.error_in_exec, Cancelled) and "r" not in loaded.user_ns
    (prompt_id,) = fake.posted_prompt_ids
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # the error name is red
    assert f"\nCancelled: prompt {prompt_id} on {fake.url} was cancelled\n" in out and "Traceback" not in out
    wait_until(lambda: fake.deleted_from_queue == [prompt_id], timeout=5)  # gone from its server's queue
    assert None not in fake.interrupt_requests
    (widget,) = magics_of(loaded).progress_widgets
    assert widget.cancel_button.layout.display == "none" and "comfy-state-cancelled" in widget.text.value
    assert widget.box.layout.display != "none"  # a cancelled prompt's widget stays: no Result follows


def test_a_sweep_cell_uploads_a_variable_once_per_server_and_reads_files(
    loaded: InteractiveShell, fake: FakeComfy, tmp_path: Path
) -> None:
    """The body goes the single-prompt way ("$photo" holding a PIL image is an upload); the line form takes -f."""
    loaded.user_ns["photo"] = Image.new("RGB", (3, 3), (5, 6, 7))
    with capture_output():
        assert cell(loaded, "s << --over 1.width=8,16", graph(width=1, source="$photo")).success
    sweep = loaded.user_ns["s"]
    sources = {fake.history(p.task.prompt_id)["prompt"][2]["1"]["inputs"]["source"] for p in sweep.points}
    ((kind, _subfolder, name),) = fake.uploads  # the same bytes: uploaded once to the server that ran both
    assert kind == "input" and sources == {name}
    path = tmp_path / "flow.json"
    path.write_text(graph(width=1))
    with capture_output():
        assert loaded.run_cell(f"%comfy f << -f {path} --over 1.width=2,3").success
    assert [p.status for p in loaded.user_ns["f"].points] == ["success", "success"]
