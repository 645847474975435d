"""The engine behind one URL that is really three real ComfyUI servers (issue 7): Debian's HAProxy and nginx on
loopback (``comfy_notebook.tools.balancer``) in front of a pool of this module's own.

- With affinity (HAProxy cookie insert, HAProxy ``url_param clientId`` and ``hdr(X-Comfy-Affinity)``, nginx
  ``hash $arg_clientId consistent``): sequential ``run``s, concurrent ``submit``s and a bulk ``submit_many`` all
  succeed with their own image (its color proves which prompt made it), each ran once on one backend, every
  ``submit()`` prompt showed progress (the socket reached the backend that ran it), and the status names the affinity.
- Without it (HAProxy round robin): every prompt succeeds with all its files or fails with ``NoAffinity``; none is
  reported as a restart; none hangs; the status says the URL's affinity is broken and how to fix it.
- Failover: SIGKILL the backend behind the engine's cookie mid-stream; HAProxy redispatches with a new cookie, the
  engine counts a backend change and resubmits, and every prompt still succeeds (then the backend is restarted).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_notebook import NoAffinity
from comfy_notebook.core.errors import PromptLost
from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.engine import Engine, EngineOptions
from comfy_notebook.engine.http import HttpOptions
from comfy_notebook.engine.task import RUNNING, Result, Task
from comfy_notebook.tools.balancer import Balancer, Mode
from comfy_notebook.tools.local_pool import LocalPool
from tests.integration.conftest import all_up, own_pool
from tests.workflows import slow_workflow

pytestmark = pytest.mark.timeout(600)  # the first real test of a fresh machine may build the environment

AFFINITY: dict[Mode, str] = {"cookie": "cookie", "url_param": "key", "header": "key", "hash": "key"}
PHASES = ("sequential", "concurrent", "bulk")
WITH_AFFINITY_PROMPTS = {"sequential": 4, "concurrent": 6, "bulk": 6}
STEPS = 2
NO_AFFINITY_TEXT = "load balancer without session affinity"
#: Round robin: short engine timeouts, so a prompt that cannot be followed is given up on quickly.
SHORT = EngineOptions(
    socket=SocketOptions(open_timeout=2.0),
    http=HttpOptions(timeout=5.0, connect_timeout=2.0, probe_timeout=2.0),
    silence_check=2.0,
    reconnect_window=2.0,
)
RR_PROMPTS = 12
RR_PROMPT_TIMEOUT = 30.0  # one prompt of ~0.2 s; more than this is a hang
_colors = itertools.count(random.randrange(1, 0x800000))  # distinct graphs (never served from cache), own images


def next_color() -> int:
    return next(_colors)


def rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def graph(color: int, seconds: float = 0.1) -> dict[str, Any]:
    return slow_workflow(color, steps=STEPS, step_seconds=seconds)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Three real servers of this module's own: the failover test kills one (and restarts it)."""
    yield from own_pool(tmp_path_factory, "lb-engine", 3)


@pytest.fixture
def backends(pool: LocalPool) -> list[str]:
    return all_up(pool)


@contextmanager
def engine_on(url: str, options: EngineOptions | None = None) -> Iterator[Engine]:
    engine = Engine([url], options or EngineOptions())
    try:
        yield engine
    finally:
        engine.close()


def homes(backends: list[str], prompt_id: str) -> list[str]:
    """The backends whose history holds ``prompt_id`` (asked directly, not through the balancer)."""
    found = []
    for url in backends:
        answer = httpx.get(f"{url}/history/{prompt_id}", timeout=10, trust_env=False)
        answer.raise_for_status()
        if prompt_id in answer.json():
            found.append(url)
    return found


def entry_for(engine: Engine, url: str) -> dict[str, Any]:
    entries = [s for s in engine.get_status()["servers"] if s["url"] == url]
    assert len(entries) == 1, engine.get_status()["servers"]
    entry: dict[str, Any] = entries[0]
    return entry


def poll(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll ``predicate`` every 20 ms until true; past ``timeout`` fail with ``what()`` (the state that matters)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what()}")
        time.sleep(0.02)


@dataclass
class Outcome:
    color: int
    task: Task | None  # None for engine.run
    result: Result | None
    error: Exception | None
    seconds: float

    def describe(self) -> str:
        attempts = self.task.attempts if self.task else "?"
        return f"color {self.color}: {type(self.error).__name__}: {self.error} (attempts {attempts})"


def run_phase(engine: Engine, phase: str, n: int, timeout: float) -> list[Outcome]:
    """``n`` prompts: one ``run`` after another, ``submit`` all at once, or one ``submit_many``. Each ends within
    ``timeout`` (a ``TimeoutError`` is recorded like any other error, never waited out)."""
    colors = [next_color() for _ in range(n)]
    outcomes = []
    if phase == "sequential":
        for color in colors:
            start = time.monotonic()
            try:
                result, error = engine.run(graph(color), timeout=timeout), None
            except Exception as exc:
                result, error = None, exc
            outcomes.append(Outcome(color, None, result, error, time.monotonic() - start))
        return outcomes
    start = time.monotonic()
    if phase == "concurrent":
        tasks = [engine.submit(graph(color)) for color in colors]
    else:
        tasks = engine.submit_many([graph(color) for color in colors])
    deadline = start + timeout
    for color, task in zip(colors, tasks, strict=True):
        try:
            result, error = task.result(max(0.1, deadline - time.monotonic())), None
        except Exception as exc:
            result, error = None, exc
        outcomes.append(Outcome(color, task, result, error, time.monotonic() - start))
    return outcomes


def incomplete(outcome: Outcome, url: str) -> str | None:
    """What is wrong with a success, or None when it is complete: its one image loads and is this prompt's own
    color (a file of the same name on another backend is another prompt's image), fetched through ``url``."""
    result = outcome.result
    if result is None:
        return outcome.describe()
    if result.status != "success" or result.server != url:
        return f"{result}: expected a success from {url}"
    if len(result.refs) != 1:  # SaveImage reported its one image
        return f"{result}: {len(result.refs)} images in the outputs {result.outputs}"
    if len(result.fetch()) != 1:
        return f"{result}: the history names {result.refs} but the file was not served"
    image = result.images[0]
    if image.size != (8, 8) or image.getpixel((0, 0)) != rgb(outcome.color):
        return f"{result}: {result.refs[0].filename} is an image of another prompt ({image.getpixel((0, 0))})"
    return None


def check_complete(outcome: Outcome, url: str) -> Result:
    problem = incomplete(outcome, url)
    assert problem is None, problem
    assert outcome.result is not None
    return outcome.result


def check_progress(task: Task) -> None:
    """The socket got this prompt's progress events: it reached the backend that ran the prompt."""
    assert task.progress is not None, f"no progress event for {task.prompt_id} (attempts {task.attempts})"
    assert (task.progress.value, task.progress.max) == (STEPS, STEPS), task.progress


# ---------------------------------------------------------------- with affinity


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("mode", list(AFFINITY))
def test_with_affinity_every_prompt_succeeds_with_its_files_and_progress(
    mode: Mode, phase: str, backends: list[str], tmp_path: Path
) -> None:
    with Balancer(mode, backends, tmp_path / "lb") as lb, engine_on(lb.url) as engine:
        outcomes = run_phase(engine, phase, WITH_AFFINITY_PROMPTS[phase], timeout=120)
        failed = [o.describe() for o in outcomes if o.error is not None]
        assert not failed, f"{len(failed)} of {len(outcomes)} failed through {mode}: {failed}"
        results = [check_complete(o, lb.url) for o in outcomes]
        for outcome in outcomes:
            if phase == "concurrent":  # submit() asks for events; submit_many() is the quiet bulk path
                assert outcome.task is not None
                check_progress(outcome.task)

        entry = entry_for(engine, lb.url)
        assert entry["affinity"] == AFFINITY[mode], entry
        assert entry["backend_changes"] == 0, entry
        assert entry["affinity_error"] is None, entry
        assert engine.get_status()["retries"] == 0  # nothing was lost and sent again
        where = [homes(backends, r.prompt_id) for r in results]
        assert all(len(w) == 1 for w in where), f"each prompt runs once, on one backend: {where}"
        assert len({w[0] for w in where}) == 1, f"one session, one backend: {where}"


@pytest.mark.parametrize("mode", list(AFFINITY))
def test_uploaded_inputs_reach_the_backend_that_runs_the_prompt(
    mode: Mode, backends: list[str], tmp_path: Path
) -> None:
    """An upload through the balancer carries the same cookie and key as the prompt: the file lands on the backend
    that runs it (a different one would fail LoadImage's validation or give another picture)."""
    from PIL import Image

    from comfy_notebook.core.uploads import Upload

    colors = [rgb(next_color()) for _ in range(4)]
    with Balancer(mode, backends, tmp_path / "lb") as lb, engine_on(lb.url) as engine:
        tasks = [
            engine.submit(
                {
                    "1": {"class_type": "LoadImage", "inputs": {"image": Upload(Image.new("RGB", (4, 4), color))}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "lb-up"}},
                }
            )
            for color in colors
        ]
        results = [task.result(timeout=120) for task in tasks]
        for color, result in zip(colors, results, strict=True):
            assert result.images[0].convert("RGB").getpixel((1, 1)) == color
            assert len(homes(backends, result.prompt_id)) == 1  # ran once, on one backend
        assert entry_for(engine, lb.url)["uploads"] == len(colors)


# ---------------------------------------------------------------- without affinity


@pytest.mark.parametrize("phase", PHASES)
def test_round_robin_gives_complete_results_or_a_clear_no_affinity_error(
    phase: str, backends: list[str], tmp_path: Path
) -> None:
    with Balancer("roundrobin", backends, tmp_path / "lb") as lb, engine_on(lb.url, SHORT) as engine:
        outcomes = run_phase(engine, phase, RR_PROMPTS, timeout=RR_PROMPT_TIMEOUT * (1 if phase == "sequential" else 2))
        hung: list[str] = []
        wrong: list[str] = []
        unclear: list[str] = []
        for outcome in outcomes:
            error = outcome.error
            if error is None:
                problem = incomplete(outcome, lb.url)  # never a success with files missing (or another's files)
                if problem is not None:
                    wrong.append(problem)
            elif isinstance(error, TimeoutError):
                hung.append(outcome.describe())
            elif isinstance(error, PromptLost) and "restarted" in str(error):
                unclear.append(outcome.describe())  # the old report: a balancer is not a restart
            elif not (isinstance(error, NoAffinity) and NO_AFFINITY_TEXT in str(error) and error.server == lb.url):
                unclear.append(outcome.describe())
        ok = sum(o.error is None for o in outcomes) - len(wrong)
        clear = sum(isinstance(o.error, NoAffinity) for o in outcomes)
        print(f"round robin, {phase}: {ok} complete, {clear} NoAffinity, {len(wrong)} wrong successes, "
              f"{len(hung)} hung, {len(unclear)} other errors, of {len(outcomes)}")  # fmt: skip
        entry = entry_for(engine, lb.url)
        problems = [
            f"{len(hung)} of {len(outcomes)} prompts hung behind round robin: {hung}" if hung else "",
            f"{len(wrong)} of {len(outcomes)} successes are incomplete: {wrong}" if wrong else "",
            f"{len(unclear)} of {len(outcomes)} failed without the no-affinity error: {unclear}" if unclear else "",
        ]
        why = entry["affinity_error"]
        if entry["affinity"] != "broken" or not isinstance(why, str) or NO_AFFINITY_TEXT not in why:
            problems.append(f"the status does not say the URL's affinity is broken: {entry}")
        elif "cookie" not in why.lower() or "hash" not in why.lower():
            problems.append(f"the status's affinity_error does not name the fixes: {why}")
        if engine.get_status()["pending_tasks_count"] != 0:
            problems.append(f"tasks left pending: {engine.get_status()}")
        assert not any(problems), "\n".join(p for p in problems if p)


# ---------------------------------------------------------------- failover through the balancer

STREAM_TOTAL = 16
STREAM_OUTSTANDING = 3


def test_killing_the_backend_behind_the_cookie_loses_no_prompt(
    pool: LocalPool, backends: list[str], tmp_path: Path
) -> None:
    with Balancer("cookie", backends, tmp_path / "lb") as lb, engine_on(lb.url) as engine:
        first_color = next_color()
        first = check_complete(Outcome(first_color, None, engine.run(graph(first_color), timeout=60), None, 0), lb.url)
        where = homes(backends, first.prompt_id)
        assert len(where) == 1, where
        victim = backends.index(where[0])  # the backend the engine's cookie (and its socket) lead to
        assert entry_for(engine, lb.url)["affinity"] == "cookie"

        stream: list[tuple[int, Task]] = []

        def top_up() -> None:
            while len(stream) < STREAM_TOTAL and sum(not t.done() for _, t in stream) < STREAM_OUTSTANDING:
                color = next_color()
                stream.append((color, engine.submit(graph(color, seconds=0.2))))

        def states() -> list[str]:
            return [f"{t.status} {t.attempts}" for _, t in stream]

        def running_after_two_done() -> bool:
            top_up()
            return sum(t.done() for _, t in stream) >= 2 and any(t.status == RUNNING for _, t in stream)

        restarted = False
        try:
            poll(running_after_two_done, 60, lambda: f"no prompt running after two done: {states()}")
            on_victim = [t for _, t in stream if not t.done()]
            pool.kill(victim)

            def changed() -> bool:
                top_up()
                return bool(entry_for(engine, lb.url)["backend_changes"] >= 1)

            poll(changed, 30, lambda: f"no backend change seen: {entry_for(engine, lb.url)}; {states()}")
            pool.restart(victim, wait=False)  # back while the stream goes on; the engine stays where it moved
            restarted = True

            def all_done() -> bool:
                top_up()
                return len(stream) == STREAM_TOTAL and all(t.done() for _, t in stream)

            poll(all_done, 180, lambda: f"the stream did not finish: {states()}")
        finally:
            if not restarted:
                pool.restart(victim, wait=False)
            pool.wait_ready([victim])

        for color, task in stream:
            outcome = Outcome(color, task, None, None, 0.0)
            try:
                outcome.result = task.result(0)
            except Exception as exc:
                outcome.error = exc
            assert outcome.error is None, outcome.describe()
            check_complete(outcome, lb.url)
            check_progress(task)  # the socket followed the new cookie too

        moved = [t for t in on_victim if len(t.attempts) > 1]
        assert moved, f"no prompt of the killed backend was sent again: {[t.attempts for t in on_victim]}"
        living = [b for i, b in enumerate(backends) if i != victim]
        for task in moved:
            assert homes(living, task.prompt_id), f"{task.prompt_id} is in no living backend's history"
        entry = entry_for(engine, lb.url)
        assert entry["backend_changes"] >= 1, entry
        assert entry["affinity"] == "cookie", entry
        status = engine.get_status()
        assert status["duplicates"] == sum(t.duplicates for _, t in stream), status
        assert status["pending_tasks_count"] == 0
        print(f"failover: {len(moved)} prompts moved, {entry['backend_changes']} backend changes")
