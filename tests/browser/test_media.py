"""A real result's rendering in headless Chromium: the stills and animations decode, the videos and the audio load
and play inline from their data URIs, as they do in a saved notebook opened without a kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfy_notebook.engine.engine import Engine
from comfy_notebook.notebook import render
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST
from tests.integration.test_outputs import FRAMES, RATE, SECONDS, SIZE, every_kind, fresh_tag

#: Resolves once every <video>/<audio> has its metadata (or one failed), with what each element knows then.
MEDIA_STATE = """async () => {
  const load = (el) => el.readyState >= 1 ? Promise.resolve() : new Promise((ok) => {
    el.addEventListener("loadedmetadata", ok, {once: true});
    el.addEventListener("error", ok, {once: true});
  });
  const media = [...document.querySelectorAll("video, audio")];
  await Promise.all(media.map(load));
  return media.map((el) => ({tag: el.tagName, src: el.src.slice(0, 20), error: el.error && el.error.code,
    duration: el.duration, width: el.videoWidth || 0, height: el.videoHeight || 0}));
}"""

#: Plays each video muted (autoplay rules allow that) and resolves with how far it got.
PLAYED = """async () => Promise.all([...document.querySelectorAll("video")].map(async (el) => {
  el.muted = true;
  await el.play();
  await new Promise((ok) => el.addEventListener("timeupdate", ok, {once: true}));
  return el.currentTime > 0;
}))"""


def test_a_result_plays_inline_in_chromium(lab_pool: LocalPool, page: Any, screenshots: Path) -> None:
    engine = Engine(lab_pool.urls, FAST)
    try:
        result = engine.run(every_kind(fresh_tag()), timeout=180)
    finally:
        engine.close()
    page.set_content(f"<html><body>{render.result_html(result)}</body></html>")
    images = page.eval_on_selector_all(
        "img.comfy-result-media", "els => els.map(el => [el.complete, el.naturalWidth, el.naturalHeight])"
    )
    assert images == [[True, SIZE, SIZE]] * (FRAMES + 3)  # the stills, the WEBP, the PNG and the GIF
    state = page.evaluate(MEDIA_STATE)
    videos = [s for s in state if s["tag"] == "VIDEO"]
    audio = [s for s in state if s["tag"] == "AUDIO"]
    assert [(v["src"], v["error"], v["width"], v["height"]) for v in videos] == [
        ("data:video/mp4;base6", None, SIZE, SIZE),
        ("data:video/webm;base", None, SIZE, SIZE),
    ]
    assert all(abs(v["duration"] - FRAMES / 8.0) < 0.2 for v in videos), videos
    assert [(a["src"], a["error"]) for a in audio] == [("data:audio/flac;base", None), ("data:audio/wav;base6", None)]
    assert all(abs(a["duration"] - SECONDS) < 0.05 for a in audio), (audio, RATE)
    assert page.evaluate(PLAYED) == [True, True]
    page.screenshot(path=screenshots / "media-result.png", full_page=True)
