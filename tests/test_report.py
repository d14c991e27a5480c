"""The report, built from a real (tiny) demo suite, judged through the OpenAI stand-in, opened in Chromium.

The browser tests need Debian's `chromium` (`apt-get install chromium`) and playwright's Python package;
without them they skip, except under CI (`CI` set), where they fail. Set `VCHAIN_REPORT_SCREENSHOT` to a
PNG path to save a screenshot of the demo suite's page there (`docs/report-screenshot.png`).
"""

import functools
import http.server
import io
import os
import shutil
import threading
from pathlib import Path

import openai
import pytest
from markupsafe import escape
from PIL import Image

from vchain import _io
from vchain.backends.openai import OpenAIJudge
from vchain.chain import ThoughtChain
from vchain.errors import ConfigurationError
from vchain.judging import SCORES_FILE, judge_runs, read_scores
from vchain.report import write_report
from vchain.run import MANIFEST_FILE, Manifest
from vchain.suite import run_suite
from vchain.testing import FakeOpenAIServer, demo_pipeline, draw_image

from .conftest import SCHEMA

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium on a closed network: no sandbox (tests may run as root), no GPU, and none of the
# background connections that a closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Two paper cases under vchain and t2v on the tiny demo models, judged by the stand-in's scores."""

    root = tmp_path_factory.mktemp("demo") / "suite"
    run_suite(lambda: demo_pipeline(steps=5), root, cases=[0, 13], variants=["vchain", "t2v"])
    with FakeOpenAIServer(schema_path=SCHEMA) as server:
        judge_runs(root, OpenAIJudge(client=openai.OpenAI(api_key="test", base_url=server.base_url)))
        assert len(server.requests) == 4 and not any(r.schema_errors for r in server.requests)
    return root


@pytest.fixture(scope="module")
def browser():
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
    if why is None and not Path(CHROMIUM).is_file():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI, but {why}")
        pytest.skip(why)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    """The page at `url` once every video has data; with everything the console and network reported."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}: {r.failure}"))
    page.goto(url, wait_until="load")
    page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)", timeout=15_000)
    return page, problems


def check_page(page, problems, root: Path) -> None:
    videos = page.evaluate(
        "[...document.querySelectorAll('video')].map(v => [v.readyState, v.videoWidth, v.videoHeight])"
    )
    images = page.evaluate(
        "[...document.querySelectorAll('.keyframes img')].map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(videos) == 4 and all(state >= 2 and (w, h) == (64, 64) for state, w, h in videos)
    keyframes = [Image.open(p).size for p in sorted(root.glob("*/vchain/*.png"))]
    assert len(images) == len(keyframes) == 6
    assert sorted((w, h) for _, w, h in images) == sorted(keyframes) and all(done for done, _, _ in images)
    # Under each run's scores, the 8 frames the judge saw (of the demo's 17), every one loaded.
    seen = page.evaluate(
        "[...document.querySelectorAll('.judge-frames')].map(s => [...s.querySelectorAll('img')]"
        ".map(i => [i.complete, i.naturalWidth, i.alt]))"
    )
    assert len(seen) == 4 and all(len(strip) == 8 for strip in seen)
    assert all(done and width == 64 for strip in seen for done, width, _ in strip)
    assert [alt for _, _, alt in seen[0]] == [f"frame {i} the judge saw" for i in (0, 2, 5, 7, 9, 11, 14, 16)]
    assert problems == []
    # They play: muted players may start without a user's gesture, and their clocks move.
    page.evaluate("Promise.all([...document.querySelectorAll('video')].map(v => v.play()))")
    page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.currentTime > 0)")
    page.evaluate("document.querySelectorAll('video').forEach(v => v.pause())")


def test_report_plays_from_disk_after_the_folder_is_copied(suite, browser, tmp_path):
    write_report(suite, suite / "report.html")
    copy = Path(shutil.copytree(suite, tmp_path / "moved"))
    page, problems = open_page(browser, (copy / "report.html").as_uri())
    check_page(page, problems, copy)
    screenshot = os.environ.get("VCHAIN_REPORT_SCREENSHOT")
    if screenshot:
        # A 128-colour palette keeps the file small (the demo's videos are noise, which PNG cannot shrink).
        png = Image.open(io.BytesIO(page.screenshot(full_page=True)))
        png.convert("RGB").quantize(128).save(screenshot, optimize=True)
        assert os.path.getsize(screenshot) < SCREENSHOT_MAX_BYTES
    page.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_report_plays_when_served(suite, browser):
    site = suite.parent
    write_report(suite, site / "pages" / "index.html")  # beside the runs: links go up and back down
    handler = functools.partial(QuietHandler, directory=site)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            page, problems = open_page(browser, f"http://127.0.0.1:{server.server_address[1]}/pages/index.html")
            check_page(page, problems, suite)
            page.close()
        finally:
            server.shutdown()


def test_one_control_plays_and_scrubs_a_cases_variants_together(suite, browser):
    write_report(suite, suite / "report.html")
    page, problems = open_page(browser, (suite / "report.html").as_uri())
    first, second = page.query_selector_all(".sync-group")
    states = "g => [...g.querySelectorAll('video')].map(v => [v.paused, v.currentTime / v.duration])"
    first.query_selector(".play").click()
    page.wait_for_function(
        "[...document.querySelector('.sync-group').querySelectorAll('video')]"
        ".every(v => !v.paused && v.currentTime > 0)"
    )
    assert all(paused for paused, _ in second.evaluate(states))  # another case's row is left alone
    first.query_selector(".play").click()
    assert all(paused for paused, _ in first.evaluate(states))
    first.query_selector(".scrub").evaluate("s => { s.value = 600; s.dispatchEvent(new Event('input')); }")
    page.wait_for_function(
        "[...document.querySelector('.sync-group').querySelectorAll('video')].every(v => !v.seeking)"
    )
    assert [round(fraction, 2) for _, fraction in first.evaluate(states)] == [0.6, 0.6]
    assert problems == []
    page.close()


def test_the_summary_chart_draws_each_variants_means_and_intervals(suite, tmp_path):
    html = write_report(suite, tmp_path / "report.html").read_text()
    svg = html.split('<svg class="chart"')[1].split("</svg>")[0]
    assert svg.count('<g class="estimate">') == 12 and svg.count('class="interval"') == 12  # 2 variants x 6
    rows = {row.variant: row for row in summarize_suite(suite)}
    e = rows["vchain"].estimates["physics"]
    assert f"vchain, physics: {e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]" in svg


def summarize_suite(root):
    from vchain.judging import finished_runs, summarize

    return summarize(finished_runs(root))


def test_report_shows_each_case_with_its_variants_keyframes_and_scores(suite, tmp_path):
    html = write_report(suite, tmp_path / "report.html").read_text()
    assert str(tmp_path) not in html and "file:" not in html  # relative links only
    assert html.count('<section class="case">') == 2 and html.count("<video ") == 4
    for folder in sorted(suite.glob("*/vchain")):
        chain = ThoughtChain.load(folder, with_images=False)
        assert all(escape(caption) in html for caption in chain.captions)
        assert escape(chain.composite_prompt) in html  # what vchain sampled from, beside the user's prompt
    for path in sorted(suite.rglob(SCORES_FILE)):
        scores = read_scores(path.parent).entries[0].scores
        assert escape(scores.reason("causality")) in html
    assert html.count('<table class="scores">') == 4
    assert "gpt-4o (8 frames)" in html and "[" in html.split("Judge summary")[1].split("</table>")[0]
    assert "Agreement with people: not measured. This judge is uncalibrated" in html


def test_user_text_is_escaped(tmp_path):
    prompt = 'A <script>alert("x")</script> & a rock fall.'
    folder = tmp_path / "runs" / "00_x" / "vchain"
    _io.write_json(folder / MANIFEST_FILE, Manifest(prompt=prompt).model_dump(mode="json"))
    chain = ThoughtChain(prompt, "t", "c", "ctx", "<b>bold</b> start", ["<img src=x onerror=alert(1)>"])
    chain.images = [draw_image("a", 32, 32), draw_image("b", 32, 32)]
    chain.save(folder)
    html = write_report(tmp_path / "runs", tmp_path / "report.html").read_text()
    # The page's one script is its own (the sync control); the prompt's is text.
    assert html.count("<script>") == 1 and "&lt;script&gt;" in html and "&amp; a rock" in html
    assert "<b>bold" not in html and "<img src=x" not in html and "&lt;img src=x onerror" in html


def test_a_missing_folder_an_empty_one_or_a_folder_as_output_are_refused(suite, tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        write_report(tmp_path / "nowhere", tmp_path / "r.html")
    with pytest.raises(ConfigurationError, match="holds no run folder"):
        write_report(tmp_path, tmp_path / "r.html")
    with pytest.raises(ConfigurationError, match="is a folder"):
        write_report(suite, tmp_path)


def test_each_seed_of_a_case_is_its_own_row_with_its_own_control(tmp_path):
    from vchain.pipeline import VChainPipeline
    from vchain.testing.toy import ToyGenerator

    root = tmp_path / "suite"
    run_suite(
        lambda: VChainPipeline(generator=ToyGenerator()), root, [0], ["t2v"], prompts=["A rock falls."], seeds=[0, 1]
    )
    html = write_report(root, tmp_path / "report.html").read_text()
    assert html.count('<section class="case">') == 1 and html.count('<div class="sync-group">') == 2
    assert '<p class="seed">seed 0</p>' in html and '<p class="seed">seed 1</p>' in html
    assert "t2v/seed-0/video.mp4" in html and "t2v/seed-1/video.mp4" in html
