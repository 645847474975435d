"""Uploads on fake servers, for the faults a real server will not produce on demand (a proxy's 413, a 503, a
server that dies between upload and prompt). The happy path, masks and failover on real servers are in
``tests/integration/test_uploads.py``."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from comfy_notebook.core.uploads import Upload, UploadError
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import workflow
from tests.fakes.fake_comfy import FakeComfy, running_fake


@pytest.fixture
def fake3() -> Iterator[FakeComfy]:
    yield from running_fake()


def photo(color: int = 0) -> Upload:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (color, 0, 0)).save(buffer, format="PNG")
    return Upload(buffer.getvalue())


def with_input(tag: int, upload: Upload) -> dict:
    graph = workflow(tag)
    graph["1"]["inputs"]["source"] = upload  # the fake ignores inputs it does not know
    return graph


def posted_input(fake: FakeComfy, prompt_id: str) -> object:
    entry = fake.history(prompt_id)
    assert entry is not None, f"{fake.url} has no history for {prompt_id}"
    return entry["prompt"][2]["1"]["inputs"]["source"]


def test_the_prompt_names_the_file_uploaded_to_its_own_server(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    upload = photo()
    result = engine.run(with_input(1, upload), timeout=10)
    assert fake.uploads == [("input", "", upload.filename)]
    assert posted_input(fake, result.prompt_id) == upload.filename
    assert engine.get_status()["servers"][0]["uploads"] == 1


def test_a_shared_input_is_uploaded_once_per_server(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    pool.set_servers([fake.url, fake2.url])
    upload = photo(7)
    tasks = pool.submit_many([with_input(i, upload) for i in range(20)])
    results = [t.result(timeout=20) for t in tasks]
    used = {r.server for r in results}
    assert used == {fake.url, fake2.url}, "the pool should have used both servers"
    for f in (fake, fake2):
        assert f.uploads == [("input", "", upload.filename)], f"{f.url} got {f.uploads}"
    for result in results:
        owner = fake if result.server == fake.url else fake2
        assert posted_input(owner, result.prompt_id) == upload.filename


def test_a_proxys_413_fails_the_prompt_before_anything_is_queued(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.fail_http("/upload/image", 413)
    task = engine.submit(with_input(2, photo(2)))
    with pytest.raises(UploadError, match=rf"{fake.url} refused the upload of cn-.*too large \(HTTP 413"):
        task.result(timeout=10)
    assert not any(path.startswith("/prompt") for method, path in fake.http_log if method == "POST")
    assert len(task.attempts) == 1  # a refusal is the same on every server: never retried


def test_a_server_that_fails_the_upload_loses_the_prompt_to_another(
    pool: Engine, fake: FakeComfy, fake2: FakeComfy, fake3: FakeComfy
) -> None:
    """A 503 (a proxy with no live backend) is the server's failure, not the input's: failover, and the new
    server gets its own upload."""
    pool.set_servers([fake.url])
    fake.fail_http("/upload/image", 503, times=10)
    upload = photo(3)
    task = pool.submit(with_input(3, upload))
    pool.set_servers([fake.url, fake2.url])
    result = task.result(timeout=15)
    assert result.server == fake2.url
    assert fake2.uploads == [("input", "", upload.filename)]
    assert posted_input(fake2, result.prompt_id) == upload.filename
    assert [a.server for a in task.attempts] == [fake.url, fake2.url]


def test_a_reset_forgets_what_servers_hold(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    upload = photo(4)
    engine.run(with_input(4, upload), timeout=10)
    engine.run(with_input(5, upload), timeout=10)
    assert len(fake.uploads) == 1
    engine.reset()
    engine.run(with_input(6, upload), timeout=10)
    assert len(fake.uploads) == 2
