"""The fakes must speak the protocol of docs/protocol.md, or engine tests prove nothing."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from .fake_comfy import FakeComfy, wait_until
from .naive_client import run_naive
from .rr_proxy import RoundRobinProxy

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
}


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    with FakeComfy() as server:
        yield server


@contextmanager
def open_ws(base_url: str, client_id: str) -> Iterator[ClientConnection]:
    """Connect and swallow the greeting `status`, so the server has registered the socket on entry."""
    with connect(f"ws{base_url[4:]}/ws?clientId={client_id}", close_timeout=0.5, max_size=None) as ws:
        first = json.loads(ws.recv(timeout=2))
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        assert "queue_remaining" in first["data"]["status"]["exec_info"]
        yield ws


def post(base_url: str, prompt: Any, client_id: str | None = "c", **extra: Any) -> httpx.Response:
    body = {"prompt": prompt, **({"client_id": client_id} if client_id else {}), **extra}
    return httpx.post(f"{base_url}/prompt", json=body, timeout=2)


def until_done(ws: ClientConnection, prompt_id: str, timeout: float = 3) -> list[dict[str, Any]]:
    """Every text message up to and including `executing {node: null}` for `prompt_id`."""
    seen: list[dict[str, Any]] = []
    while True:
        raw = ws.recv(timeout=timeout)
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        seen.append(msg)
        if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == prompt_id:
            return seen


def test_event_order_and_history_written_before_done(fake: FakeComfy) -> None:
    fake.history_delay = 0.3  # make fact 1's race certain: history is not there yet on execution_success
    with open_ws(fake.url, "c") as ws, httpx.Client(base_url=fake.url, timeout=2) as http:
        prompt_id = str(uuid.uuid4())
        resp = http.post("/prompt", json={"prompt": WORKFLOW, "client_id": "c", "prompt_id": prompt_id})
        assert resp.status_code == 200
        assert resp.json() == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "execution_success":
            seen.append(json.loads(ws.recv(timeout=2)))
        assert http.get(f"/history/{prompt_id}").json() == {}
        seen += until_done(ws, prompt_id)
    types = [m["type"] for m in seen if m["type"] not in ("status", "progress_state")]
    assert types == ["execution_start", "execution_cached"] + ["executing", "progress", "progress"] * 3 + [
        "executed",
        "execution_success",
        "executing",
    ]
    tail = [m["type"] for m in seen[-3:]]
    assert tail == ["execution_success", "status", "executing"]  # history -> status -> done
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == "3" and executed["prompt_id"] == prompt_id
    image = executed["output"]["images"][0]
    assert image["type"] == "output" and image["subfolder"] == ""
    entry = httpx.get(f"{fake.url}/api/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["outputs"] == {"3": {"images": [image]}}
    view = httpx.get(f"{fake.url}/view", params=image)
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")
    assert httpx.get(f"{fake.url}/view", params={**image, "filename": "../x.png"}).status_code == 400
    assert httpx.get(f"{fake.url}/view", params={**image, "filename": "nope.png"}).status_code == 404


def test_events_reach_only_the_submitting_client_id(fake: FakeComfy) -> None:
    with open_ws(fake.url, "mine") as mine, open_ws(fake.url, "other") as other:
        prompt_id = post(fake.url, WORKFLOW, "mine").json()["prompt_id"]
        assert any(m["type"] == "executed" for m in until_done(mine, prompt_id))
        fake.send_text("marker")  # the publisher is serial: everything sent before this arrives first
        got = []
        while (raw := other.recv(timeout=2)) != "marker":
            got.append(json.loads(raw)["type"])
    assert got and set(got) == {"status"}


def test_duplicate_client_id_bug_is_reproduced(fake: FakeComfy) -> None:
    with open_ws(fake.url, "dup") as first, open_ws(fake.url, "dup") as second:
        first.close()
        wait_until(lambda: fake.ws_connect_count == 2 and len(fake._open) == 1)
        post(fake.url, WORKFLOW, "dup")
        wait_until(lambda: len(fake.history_ids) == 1)
        fake.send_text("marker")
        assert second.recv(timeout=2) == "marker"  # deregistered: not even the status broadcasts


def test_validation_error_shapes(fake: FakeComfy) -> None:
    bad = post(fake.url, {**WORKFLOW, "7": {"class_type": "Invalid", "inputs": {"value": "x"}}})
    assert bad.status_code == 400
    body = bad.json()
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    node = body["node_errors"]["7"]
    assert node["class_type"] == "Invalid" and node["dependent_outputs"] == ["3"]
    assert set(node["errors"][0]) == {"type", "message", "details", "extra_info"}

    partly = {
        **WORKFLOW,
        "8": {"class_type": "PartlyInvalid"},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    with open_ws(fake.url, "c") as ws:
        ok = post(fake.url, partly, "c")
        assert ok.status_code == 200
        assert ok.json()["node_errors"]["8"]["dependent_outputs"] == ["9"]
        executed = [m["data"]["node"] for m in until_done(ws, ok.json()["prompt_id"]) if m["type"] == "executed"]
    assert executed == ["3"]

    missing = post(fake.url, {"1": {"inputs": {}}})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_prompt"
    assert post(fake.url, {"1": {"class_type": "EmptyImage"}}).json()["error"]["type"] == "prompt_no_outputs"
    not_json = httpx.post(f"{fake.url}/prompt", content=b"{nope", timeout=2)
    assert not_json.status_code == 500 and not_json.headers["content-type"].startswith("text/plain")
    assert post(fake.url, [1, 2]).status_code == 500


def test_raise_and_interrupt_end_with_error_history(fake: FakeComfy) -> None:
    with open_ws(fake.url, "c") as ws:
        failing = {"1": {"class_type": "Raise"}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
        prompt_id = post(fake.url, failing).json()["prompt_id"]
        types = [m["type"] for m in until_done(ws, prompt_id)]
        assert types[-4:] == ["executing", "execution_error", "status", "executing"]
        status = fake.history(prompt_id)["status"]  # type: ignore[index]
        assert (status["status_str"], status["completed"]) == ("error", False)

        slow = {**WORKFLOW, "0": {"class_type": "Sleep", "inputs": {"steps": 500, "step_delay": 0.01}}}
        prompt_id = post(fake.url, slow).json()["prompt_id"]
        wait_until(lambda: fake.running_prompt_id == prompt_id)
        httpx.post(f"{fake.url}/interrupt", json={"prompt_id": "someone-else"})
        httpx.post(f"{fake.url}/interrupt", json={"prompt_id": prompt_id})
        messages = until_done(ws, prompt_id)
    assert fake.interrupt_requests == ["someone-else", prompt_id]
    assert "execution_interrupted" in [m["type"] for m in messages]
    status = fake.history(prompt_id)["status"]  # type: ignore[index]
    assert status["status_str"] == "error" and status["completed"] is False


def test_hold_queue_delete_and_fail_http(fake: FakeComfy) -> None:
    fake.hold()
    ids = [post(fake.url, WORKFLOW).json()["prompt_id"] for _ in range(3)]
    queue = httpx.get(f"{fake.url}/queue").json()
    assert queue["queue_running"] == [] and [item[1] for item in queue["queue_pending"]] == ids
    assert httpx.get(f"{fake.url}/prompt").json() == {"exec_info": {"queue_remaining": 3}}
    assert httpx.post(f"{fake.url}/queue", json={"delete": [ids[1]]}).status_code == 200
    assert fake.pending_prompt_ids == [ids[0], ids[2]] and fake.deleted_from_queue == [ids[1]]
    fake.release()
    wait_until(lambda: set(fake.history_ids) == {ids[0], ids[2]})
    fake.fail_http("/api/history", 503, times=1)
    first = httpx.get(f"{fake.url}/history/{ids[0]}")
    assert first.status_code == 503 and first.headers["content-type"].startswith("text/plain")
    assert ids[0] in httpx.get(f"{fake.url}/history/{ids[0]}").json()
    assert list(httpx.get(f"{fake.url}/history", params={"max_items": 1}).json()) == [ids[2]]
    # as ComfyUI's get_history: more than there are gives them all, oldest first; 0 gives none
    assert list(httpx.get(f"{fake.url}/history", params={"max_items": 5}).json()) == [ids[0], ids[2]]
    assert httpx.get(f"{fake.url}/history", params={"max_items": 0}).json() == {}


def test_restart_loses_queue_and_history_on_the_same_url(fake: FakeComfy) -> None:
    url = fake.url
    with open_ws(url, "c") as ws:
        prompt_id = post(url, WORKFLOW).json()["prompt_id"]
        image = next(m for m in until_done(ws, prompt_id) if m["type"] == "executed")["data"]["output"]["images"][0]
        fake.hold()
        post(url, WORKFLOW)
        assert fake.restart() == url
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=2)
        assert closed.value.rcvd is None  # killed: no close frame, 1006
    assert httpx.get(f"{url}/history/{prompt_id}").json() == {}
    assert httpx.get(f"{url}/queue").json() == {"queue_running": [], "queue_pending": []}
    assert post(url, WORKFLOW).json()["number"] == 0
    assert httpx.get(f"{url}/view", params=image).status_code == 200  # output files survive


def test_freeze_accepts_tcp_but_never_answers(fake: FakeComfy) -> None:
    host, port = fake.url[7:].split(":")
    with open_ws(fake.url, "c") as ws:
        fake.freeze()
        socket.create_connection((host, int(port)), timeout=1).close()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{fake.url}/prompt", timeout=0.3)
        assert not ws.ping().wait(0.3)
        fake.thaw()
        assert httpx.get(f"{fake.url}/prompt", timeout=2).status_code == 200
        assert ws.ping().wait(2)
        fake.freeze()
    fake.stop()  # must not hang while frozen


@pytest.mark.parametrize("via_proxy", [False, True])
@pytest.mark.parametrize("code", [1000, 1011, 1006])
def test_close_codes_reach_the_client(fake: FakeComfy, code: int, via_proxy: bool) -> None:
    proxy = RoundRobinProxy([fake.url])
    url = proxy.start() if via_proxy else fake.url
    try:
        with open_ws(url, "c") as ws:
            if code == 1006:
                fake.abort_sockets()
            else:
                fake.close_sockets(code, "bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=2)
        rcvd = closed.value.rcvd
        if code == 1006:
            assert rcvd is None  # no close frame
        else:
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (code, "bye")
        assert isinstance(closed.value, ConnectionClosedOK) == (code == 1000)
    finally:
        proxy.stop()


def test_injected_frames_reach_the_client(fake: FakeComfy) -> None:
    with open_ws(fake.url, "c") as ws:
        fake.send_text("{not json")
        fake.send_binary(b"\x00\x00\x00\x09junk")
        assert ws.recv(timeout=2) == "{not json"
        assert ws.recv(timeout=2) == b"\x00\x00\x00\x09junk"
        fake.evil_filenames = True
        fake.preview = True
        prompt_id = post(fake.url, WORKFLOW).json()["prompt_id"]
        frames = []
        while not isinstance(raw := ws.recv(timeout=2), str) or '"executed"' not in raw:
            frames.append(raw)
        evil = json.loads(raw)["data"]["output"]["images"][0]
        assert evil["subfolder"] == "../.." and evil["filename"].startswith("../")
        assert httpx.get(f"{fake.url}/view", params=evil).content.startswith(b"\x89PNG")  # hostile: served
        assert any(isinstance(f, bytes) and f[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01" for f in frames)
        until_done(ws, prompt_id)


def test_round_robin_proxy_alternates_and_loses_naive_results() -> None:
    with FakeComfy() as a, FakeComfy() as b, RoundRobinProxy([a.url, b.url]) as proxy:
        for _ in range(4):
            assert httpx.get(f"{proxy.url}/api/prompt?x=1", timeout=2).json()["exec_info"]["queue_remaining"] == 0
        assert [u for u, _, _ in proxy.routed] == [a.url, b.url] * 2
        assert a.http_log == b.http_log == [("GET", "/api/prompt?x=1")] * 2

        assert run_naive(proxy.url, WORKFLOW, timeout=0.5) is None  # WS on one server, prompt on the other
        assert (a.ws_connect_count, len(b.posted_prompt_ids)) == (1, 1)
        entry = run_naive(a.url, WORKFLOW, timeout=3)
        assert entry is not None and entry["status"]["status_str"] == "success"

    with FakeComfy() as only, RoundRobinProxy([only.url]) as single:  # the bridge itself is transparent
        assert run_naive(single.url, WORKFLOW, timeout=3) is not None
        with open_ws(single.url, "p") as ws:
            assert ws.ping().wait(2)
            only.freeze()
            assert not ws.ping().wait(0.3)  # pings are end to end: a hung upstream stays detectable
            only.thaw()


def test_feature_flags_switch_previews_to_type_4(fake: FakeComfy) -> None:
    fake.preview = True
    with open_ws(fake.url, "c") as ws:
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(ws.recv(timeout=2))["type"] == "feature_flags"
        prompt_id = post(fake.url, WORKFLOW).json()["prompt_id"]
        while isinstance(raw := ws.recv(timeout=2), str):
            pass
    assert raw[:4] == b"\x00\x00\x00\x04"
    length = int.from_bytes(raw[4:8], "big")
    meta = json.loads(raw[8 : 8 + length])
    assert meta["prompt_id"] == prompt_id and meta["image_type"] == "image/jpeg"


def test_upload_reuses_same_bytes_and_renames_different(fake: FakeComfy) -> None:
    def upload(data: bytes) -> dict[str, Any]:
        files = {"image": ("in.png", data, "image/png")}
        resp = httpx.post(f"{fake.url}/upload/image", files=files, data={"type": "input"}, timeout=2)
        assert resp.status_code == 200
        body: dict[str, Any] = resp.json()
        return body

    assert upload(b"one")["name"] == "in.png"
    assert upload(b"one")["name"] == "in.png"
    assert upload(b"two") == {"name": "in (1).png", "subfolder": "", "type": "input"}
    view = httpx.get(f"{fake.url}/view", params={"filename": "in (1).png", "type": "input"})
    assert view.content == b"two"
