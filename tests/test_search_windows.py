"""Moments: videos indexed as time windows (``build_index(window=...)``, ``tldr-jax index --window``).

A synthetic 60 s video (2 fps, 32 x 32) shows a red square from 20 s to 30 s on a still background; a
separate 10 s video of the square alone, encoded whole, is the query vector (matched by construction):
the best window must be ``[20, 30)``. The window rule is unit-tested at 24, 25, 29.97 and 30 fps.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import search_fixtures
from search_fixtures import R_SPEC

from tldr_jax.cli.main import main as cli_main
from tldr_jax.retrieval.features import clip_preprocessing
from tldr_jax.search import build_index, load_index, search
from tldr_jax.search.query import search_vector
from tldr_jax.search.ray_engine import _rows, _source, worker_name
from tldr_jax.search.thumbnails import representative_frame, thumbnail
from tldr_jax.video import (
    Segment,
    Window,
    check_window,
    file_windows,
    load_clip,
    read_video,
    sample_indices,
    video_windows,
    write_video,
)

av = pytest.importorskip("av")

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
FPS = 2
SQUARE = (20, 30)  # seconds


def _frames(seconds: float, square: tuple[float, float] | None) -> np.ndarray:
    """A still textured background; a red square in the seconds ``square``."""
    rng = np.random.default_rng(0)
    background = (rng.integers(0, 4, size=(4, 4, 3)) * 40 + 30).astype(np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), np.uint8))
    frames = np.repeat(background[None], int(seconds * FPS), axis=0)
    if square is not None:
        frames[int(square[0] * FPS) : int(square[1] * FPS), 8:24, 8:24] = (230, 20, 20)
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("moments")
    for sub in ("long", "query"):
        (root / sub).mkdir()
    write_video(root / "long" / "long.mp4", _frames(60, SQUARE), fps=FPS)
    write_video(root / "query" / "square.mp4", _frames(10, (0, 10)), fps=FPS)  # the square alone
    return root


@pytest.fixture(scope="module")
def windowed(model_dir, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("widx") / "index"
    return build_index(model_dir, videos / "long", out, r=R_SPEC, batch_size=4, keep_tokens=True,
                       window=10, stride=5, progress=False)


@pytest.fixture(scope="module")
def query_vector(model_dir, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("qidx") / "index"
    with build_index(model_dir, videos / "query", out, r=R_SPEC, batch_size=4, progress=False) as idx:
        return np.asarray(idx.vectors[0])


# --------------------------------------------------------------------------------------------------
# The window rule (no files).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [24, 25, Fraction(30000, 1001), 30, 29.97])
def test_windows_are_exact_at_every_frame_rate(fps):
    rate = Fraction(2997, 100) if fps == 29.97 else Fraction(fps)  # a float: the decimal as written
    total = math.floor(60 * rate) + 3  # a little over 60 s: the last frames lie after [50, 60)
    wins = video_windows(total, fps, 10, 5)
    duration = total / rate
    whole = [w for w in wins if w.end - w.start == 10]
    assert [w.start for w in whole[:11]] == [5.0 * i for i in range(11)]  # same seconds at every rate
    for w in wins:
        assert w.first == math.ceil(Fraction(repr(w.start)) * rate) or w is wins[-1]
        assert w.stop == min(total, math.ceil(Fraction(repr(w.end)) * rate)) or w is wins[-1]
        for f in (w.first, w.stop - 1):  # its frames are shown within it
            assert w.start - 1e-9 <= f / rate < w.end + 1e-9
    assert wins[-1].stop == total and math.isclose(wins[-1].end, float(duration))  # the tail, end-aligned
    assert math.isclose(wins[-1].end - wins[-1].start, 10)
    covered = np.zeros(total, bool)
    for w in wins:
        covered[w.first : w.stop] = True
    assert covered.all()


def test_window_rule_short_videos_tail_and_defaults():
    assert video_windows(100, 25, 10) == [Window(0.0, 4.0, 0, 100)]  # shorter than a window: the whole
    wins = video_windows(1500, 25, 10)  # stride = window / 2
    assert [(w.start, w.end, w.first, w.stop) for w in wins[:2]] == [(0, 10, 0, 250), (5, 15, 125, 375)]
    assert len(wins) == 11 and wins[-1] == Window(50.0, 60.0, 1250, 1500)  # ends exactly: no tail window
    wins = video_windows(1510, 25, 10, 10)  # 60.4 s: a tail window aligned to the end
    assert wins[-2] == Window(50.0, 60.0, 1250, 1500) and wins[-1].stop == 1510
    assert math.isclose(wins[-1].start, 50.4) and wins[-1].first == 1260
    assert video_windows(30, 30, 0.1, 0.1)[1] == Window(0.1, 0.2, 3, 6)  # decimal seconds stay exact
    assert Segment(Path("a/v.mp4"), Window(20.0, 30.5, 1, 2)).name == "v.mp4#t=20,30.5"


@pytest.mark.parametrize(
    "window, stride, error, match",
    [
        (0, None, ValueError, "window must be a positive number of seconds"),
        (10, 20, ValueError, "stride=20 s exceeds window=10 s"),
        (10, -1, ValueError, "stride must be a positive"),
        ("10", None, TypeError, "window must be a number"),
        (float("nan"), None, ValueError, "positive number"),
    ],
)
def test_check_window_names_the_value(window, stride, error, match):
    with pytest.raises(error, match=match):
        check_window(window, stride)


def test_worker_names_are_stable_per_accelerator():
    assert worker_name([1, 0]) == "gpu1" and worker_name(["0"]) == "gpu0"
    assert worker_name([], {"TPU": ["3"], "GPU": []}) == "tpu3"
    assert worker_name() == "cpu" and worker_name([], {"GPU": []}) == "cpu"
    assert worker_name(["a/b"]) == "gpua-b"  # only characters a folder name takes


def test_ray_rows_carry_the_window(tmp_path):
    seg = Segment(tmp_path / "v.mp4", Window(5.0, 15.0, 10, 30))
    rows = _rows({tmp_path / "a.npy": "a.npz", seg: "b.npz"})
    batch = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
    assert _source(batch, 0) == tmp_path / "a.npy" and _source(batch, 1) == seg


# --------------------------------------------------------------------------------------------------
# Files: decoding a window, the index, search.
# --------------------------------------------------------------------------------------------------


def test_a_window_is_sampled_as_a_whole_video_is(tmp_path):
    levels = np.arange(40) * 5 + 20
    frames = np.broadcast_to(levels[:, None, None, None], (40, 16, 16, 3)).astype(np.uint8)
    path = write_video(tmp_path / "ramp.mp4", frames, fps=30000 / 1001)
    assert file_windows(path, 0.5, 0.25) == video_windows(40, Fraction(30000, 1001), 0.5, 0.25)
    got = read_video(path, 4, frames=(10, 30)).mean(axis=(1, 2, 3))
    want = levels[10 + sample_indices(20, 4, "middle")]
    np.testing.assert_allclose(got, want, atol=3)
    with pytest.raises(ValueError, match="0 <= first < stop"):
        read_video(path, 4, frames=(30, 10))


def test_best_window_is_the_square(windowed, query_vector, videos):
    assert windowed.windowed and windowed.video_count == 1 and len(windowed) == 11
    assert windowed.info["format"] == 2 and windowed.settings["window"] == 10
    spans = [(e.start, e.end, e.frame_range) for e in windowed.entries]
    assert spans == [(w.start, w.end, (w.first, w.stop)) for w in video_windows(120, FPS, 10, 5)]
    hits = search_vector(windowed, query_vector, k=5, moments=3)
    assert len(hits) == 1  # k counts videos: one video, its best window
    best = hits[0]
    assert (best.start, best.end) == SQUARE and best.video == "long.mp4"
    cosines = np.asarray(windowed.vectors) @ (query_vector / np.linalg.norm(query_vector))
    assert best.row == int(np.argmax(cosines)) and best.itc > 0.9  # the same frames, encoded apart
    assert len(best.moments) == 3
    for m in best.moments:  # other windows of the video, worse, none overlapping the hit or each other
        assert m.score <= best.score and (m.end <= best.start or m.start >= best.end)
    assert all(a.score >= b.score for a, b in zip(best.moments, best.moments[1:]))
    rows = [m.row for m in best.moments]
    assert all(windowed.entries[r].video == "long.mp4" for r in rows)
    js = best.to_json()
    assert js["start"] == 20 and js["end"] == 30
    assert js["moments"][0].keys() == {"start", "end", "score", "row"}
    json.dumps(js)


def test_text_search_groups_windows_into_videos(windowed):
    hits = search(windowed, "w1 w2", k=3, rerank=3, max_length=16)
    assert len(hits) == 1 and hits[0].itm is not None and hits[0].start is not None
    itc_hits = search(windowed, "w1 w2", k=3, max_length=16, moments=0)
    assert itc_hits[0].moments == () and itc_hits[0].score == itc_hits[0].itc


def test_clip_and_thumbnail_of_a_window(windowed, videos):
    row = next(i for i, e in enumerate(windowed.entries) if (e.start, e.end) == SQUARE)
    entry = windowed.entries[row]
    seg = Segment(videos / "long" / "long.mp4", entry.window)
    prep = clip_preprocessing(windowed.model, 4)
    np.testing.assert_array_equal(windowed.clip(row), load_clip(seg, prep))
    frame = representative_frame(videos / "long" / "long.mp4", entry.frame_range)
    assert frame[16, 16, 0] > 180 and frame[16, 16, 1] < 80  # the middle of the window: the square
    assert thumbnail(windowed, row)[:2] == b"\xff\xd8"
    assert (windowed.path / "thumbnails" / f"{entry.sha256[:32]}-40-60.jpg").is_file()


def test_reindex_encodes_only_the_new_windows(model_dir, videos, windowed, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(videos / "long", folder)
    out = tmp_path / "index"
    shutil.copytree(windowed.path, out)
    write_video(folder / "short.mp4", _frames(4, None), fps=FPS)
    again = build_index(model_dir, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, window=10,
                        stride=5, progress=False)
    assert again.build.computed == ["short.mp4#t=0,4"] and len(again.build.reused) == 11
    assert again.video_count == 2 and len(again) == 12
    np.testing.assert_array_equal(np.asarray(again.vectors[:11]), np.asarray(windowed.vectors))
    assert "2 videos in 12 windows (1 encoded, 11 reused" in again.build.summary(2, 12)
    changed = r"window: 10.0 in the index, 20.0 now; stride: 5.0 in the index, 10.0 now\); index into a new"
    with pytest.raises(ValueError, match=changed):
        build_index(model_dir, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, window=20,
                    progress=False)


def test_whole_file_indexes_keep_format_1(model_dir, videos, tmp_path):
    idx = build_index(model_dir, videos / "long", tmp_path / "plain", r=R_SPEC, batch_size=4, progress=False)
    info = json.loads((tmp_path / "plain" / "index.json").read_text())
    assert info["format"] == 1 and "window" not in info["settings"]
    assert not {"start", "end", "frame_range"} & set(info["entries"][0])
    assert not idx.windowed and len(idx) == idx.video_count == 1
    hit = search(load_index(tmp_path / "plain"), "w1", k=1, max_length=16)[0]
    assert hit.start is None and "start" not in hit.to_json() and "moments" not in hit.to_json()
    info["format"] = 3
    (tmp_path / "plain" / "index.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="has format 3; this tldr_jax reads 1 and 2"):
        load_index(tmp_path / "plain")


def test_cli_window(model_dir, videos, windowed, tmp_path, capsys):
    out = tmp_path / "cli"
    shutil.copytree(windowed.path, out)
    argv = ["index", str(videos / "long"), "--model", str(model_dir), "--out", str(out), "--r", "6,4,2",
            "--batch-size", "4", "--keep-tokens", "--window", "10", "--stride", "5", "-q"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 video in 11 windows (0 encoded, 11 reused" in printed and "windows 10 s every 5 s" in printed
    assert cli_main(["search", str(out), "w1", "--max-length", "16", "--moments", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 video in 11 windows" in lines[0] and "long.mp4  0:" in lines[1] and "also at" in lines[2]
    assert cli_main(["search", str(out), "w1", "--max-length", "16", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert {"start", "end", "moments"} <= set(hit) and len(hit["moments"]) == 3


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--stride", "5"], "--stride 5 needs --window SECONDS"),
        (["--window", "10", "--stride", "20"], "--stride 20 s exceeds --window 10 s"),
        (["--window", "10", "--trim-seconds", "30"], "--window 10 and --trim-seconds 30"),
        (["--window", "0"], "expected a positive number, got '0'"),
    ],
)
def test_cli_window_errors_name_the_value(model_dir, videos, tmp_path, capsys, extra, match):
    argv = ["index", str(videos / "long"), "--model", str(model_dir), "--out", str(tmp_path / "new"), *extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "new").exists()


def test_api_hits_carry_the_moment_and_the_player_url(windowed):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from tldr_jax.search.server import create_app
    from tldr_jax.search.service import SearchService

    service = SearchService(windowed.path)
    service.warm_up()
    with TestClient(create_app(service, warm_up=False)) as client:
        got = client.get("/api/search", params={"q": "w1 w2", "k": 3, "rerank": 0}).json()
        expected = search(windowed, "w1 w2", k=3)
        assert got["videos"] == 1 and got["windows"] == 11 and len(got["hits"]) == 1
        assert got["hits"] == [h.to_json() for h in expected]
        hit = got["hits"][0]
        video = client.get(f"/api/videos/{hit['row']}").json()
        assert (video["start"], video["end"]) == (hit["start"], hit["end"])
        label = f"{hit['start']:g},{hit['end']:g}"
        assert video["play"] == f"/media/{hit['row']}#t={label}" and video["playable"]
        info = client.get("/api/info").json()
        assert info["videos"] == 1 and info["windows"] == 11
        thumb = client.get(f"/api/thumbnails/{hit['row']}.jpg")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


@pytest.mark.slow  # a headless Chromium against uvicorn
def test_the_page_plays_the_moment_found(windowed, tmp_path):
    """A real browser: the first hit plays from its window (a media fragment), and the video's other
    moments are buttons that play from theirs."""
    import os

    pytest.importorskip("uvicorn")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the system chromium)")
    chromium = (os.environ.get("TLDR_JAX_CHROMIUM") or shutil.which("chromium")
                or shutil.which("chromium-browser"))
    if chromium is None:
        pytest.skip("needs Chromium: apt-get install chromium (or set TLDR_JAX_CHROMIUM)")
    from tldr_jax.search.server import create_app, serve_in_thread
    from tldr_jax.search.service import SearchService

    expected = search(windowed, "w1 w2", k=12)[0]
    service = SearchService(windowed.path)
    service.warm_up()
    with serve_in_thread(create_app(service, warm_up=False)) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url + "/")
            sync_api.expect(page.locator("#status")).to_contain_text("ready", timeout=30_000)
            page.fill("#q", "w1 w2")
            page.press("#q", "Enter")
            first = page.locator("#results li.hit").first
            first.wait_for(timeout=30_000)
            sync_api.expect(first.locator(".name")).to_contain_text(f"long.mp4 @ 0:{expected.start:02.0f}")
            sync_api.expect(page.locator("#status")).to_contain_text("(11 moments)")
            first.click()
            fragment = f"/media/{expected.row}#t={expected.start:g},{expected.end:g}"
            sync_api.expect(page.locator("#player")).to_have_attribute("src", fragment)
            page.wait_for_function("() => document.querySelector('#player').readyState >= 1", timeout=30_000)
            at = page.evaluate("document.querySelector('#player').currentTime")
            assert expected.start <= at < expected.end, at
            buttons = page.locator("#moments button.moment")
            assert buttons.count() == 1 + len(expected.moments)
            other = expected.moments[0]
            buttons.nth(1).click()
            sync_api.expect(page.locator("#player")).to_have_attribute(
                "src", f"/media/{expected.row}#t={other.start:g},{other.end:g}")
            page.wait_for_function(
                f"() => {{ const p = document.querySelector('#player');"
                f" return p.readyState >= 1 && p.currentTime >= {other.start}; }}", timeout=30_000)
            page.screenshot(path=str(tmp_path / "moments.png"), full_page=True)
            assert (tmp_path / "moments.png").stat().st_size > 1000 and not errors, errors
        finally:
            browser.close()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda e: e.update(frame_range=[30, 10]), "frame_range [30, 10], not [first, stop)"),
        (lambda e: e.update(start="20"), "not seconds 0 <= start < end"),
        (lambda e: e.update(end=5.0), "not seconds 0 <= start < end"),
        (lambda e: e.pop("end"), "has start, frame_range but not all of start, end, frame_range"),
    ],
)
def test_damaged_window_fields_are_named(windowed, tmp_path, edit, match):
    copy = tmp_path / "index"
    shutil.copytree(windowed.path, copy)
    info = json.loads((copy / "index.json").read_text())
    edit(info["entries"][4])
    (copy / "index.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        load_index(copy, model=False)
    assert "entry 4 ('long.mp4')" in str(err.value) and "Rebuild it" in str(err.value)
