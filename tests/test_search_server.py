"""``tldr-jax serve``: the JSON API, media with range requests, thumbnails, the token view, reloads.

In-process with Starlette's TestClient, a tiny random model and a collection of ``.npy`` clips plus two
small MP4 files (one starting with black frames). The load tests over loopback with uvicorn are in
``tests/test_search_load.py``.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import search_fixtures
from search_fixtures import QUERIES, R_SPEC

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from tldr_jax.cli.main import main as cli_main  # noqa: E402
from tldr_jax.search import build_index, search  # noqa: E402
from tldr_jax.search.server import create_app  # noqa: E402
from tldr_jax.search.service import Limits, SearchService  # noqa: E402
from tldr_jax.search.thumbnails import THUMBNAIL_DIR, representative_frame  # noqa: E402
from tldr_jax.video.decode import write_video  # noqa: E402

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)


def _write_videos(folder):
    """Two MP4 files: ``bright.mp4`` (a moving pattern) and ``dark_start.mp4`` (black first half)."""
    t = np.arange(16)[:, None, None, None]
    y, x = np.mgrid[0:48, 0:64]
    frames = ((x[None, ..., None] * 3 + y[None, ..., None] * 2 + t * 9 + np.arange(3) * 60) % 256)
    write_video(folder / "bright.mp4", frames.astype(np.uint8), fps=8)
    dark = frames.astype(np.uint8).copy()
    dark[:8] = 0
    dark[8:] = np.maximum(dark[8:], 90)
    write_video(folder / "dark_start.mp4", dark, fps=8)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    search_fixtures.write_clips(folder, n=4)
    _write_videos(folder)
    return folder


@pytest.fixture(scope="module")
def index_dir(model_dir, collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("served_idx") / "index"
    build_index(model_dir, collection, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    return out


def _client(index_dir, **kwargs):
    service = SearchService(index_dir, limits=Limits(max_query_chars=200, max_k=20, max_rerank=50), **kwargs)
    service.warm_up()
    return TestClient(create_app(service, warm_up=False)), service


@pytest.fixture(scope="module")
def client(index_dir):
    client, _ = _client(index_dir)
    with client:
        yield client


def _row(client, name):
    for row in range(client.get("/api/info").json()["videos"]):
        if client.get(f"/api/videos/{row}").json()["video"] == name:
            return row
    raise AssertionError(name)


def test_search_returns_the_hits_of_the_python_api(client, index_dir):
    from tldr_jax.search import load_index

    with load_index(index_dir) as index:
        for query in QUERIES:
            got = client.get("/api/search", params={"q": query, "k": 3, "rerank": 4})
            assert got.status_code == 200, got.text
            body = got.json()
            expected = [h.to_json() for h in search(index, query, k=3, rerank=4)]
            assert [h["video"] for h in body["hits"]] == [h["video"] for h in expected]
            itm = [h["itm"] for h in expected]
            np.testing.assert_allclose([h["itm"] for h in body["hits"]], itm, atol=1e-5)
            assert body["rerank"] == 4 and body["videos"] == len(index)
            assert body["generation"] == index.generation
            itc = client.get("/api/search", params={"q": query, "k": 6, "rerank": 0}).json()["hits"]
            expected = [h.to_json() for h in search(index, query, k=6)]
            assert [h["row"] for h in itc] == [h["row"] for h in expected] and "itm" not in itc[0]
            np.testing.assert_allclose([h["score"] for h in itc], [h["score"] for h in expected], atol=1e-6)


@pytest.mark.parametrize(
    "url, status, match",
    [
        ("/api/search?q=!!!", 400, "empty after the official caption cleaning"),
        ("/api/search?q=", 400, "empty"),
        ("/api/search?q=w1&k=0", 400, "k=0 is out of bounds; give 1 to 20"),
        ("/api/search?q=w1&k=21", 400, "k=21 is out of bounds"),
        ("/api/search?q=w1&k=ten", 400, "k must be an integer; got 'ten'"),
        ("/api/search?q=w1&k=5&rerank=2", 400, "k=5 exceeds rerank=2"),
        ("/api/search?q=w1&rerank=51", 400, "rerank=51 is out of bounds; give 0 to 50"),
        ("/api/search?q=" + "w1+" * 100, 400, "the query is 300 characters long; at most 200"),
        ("/api/videos/99", 404, "no video 99: the index holds rows 0 to 5"),
        ("/api/similar/99", 404, "no video 99"),
        ("/api/thumbnails/99.jpg", 404, "no video 99"),
        ("/api/tokens/99.png", 404, "no video 99: the index holds rows 0 to 5"),
        ("/api/tokens/-1.png", 404, "Not Found"),
        ("/api/tokens/../index.json", 404, "Not Found"),
        ("/media/99", 404, "no video 99"),
        ("/api/videos/-1", 404, "Not Found"),
        ("/api/nothing", 404, "Not Found"),
        ("/media/../index.json", 404, "Not Found"),
        ("/static/../server.py", 404, "Not Found"),
        ("/static/%2e%2e/server.py", 404, "Not Found"),
        ("/static/..%2fservice.py", 404, "Not Found"),
    ],
)
def test_bad_requests_are_one_json_line(client, url, status, match):
    got = client.get(url)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert match in error and "\n" not in error, error


def test_info_health_videos_and_page(client, index_dir, collection):
    info = client.get("/api/info").json()
    assert info["videos"] == 6 and info["rerank_available"] and info["limits"]["max_k"] == 20
    assert client.get("/api/health").json() == {"status": "ok"}
    row = _row(client, "bright.mp4")
    video = client.get(f"/api/videos/{row}").json()
    assert video["playable"] and video["media"] == f"/media/{row}" and video["frames"] == 4
    assert video["tokens"] == f"/api/tokens/{row}.png"
    assert video["path"] == str(collection / "bright.mp4")
    npy = client.get(f"/api/videos/{_row(client, 'clip0.npy')}").json()
    assert not npy["playable"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and "http" not in page.text.lower()
    for asset in ("app.js", "style.css"):
        got = client.get(f"/static/{asset}")
        assert got.status_code == 200 and "http://" not in got.text and "https://" not in got.text


def test_similar_uses_the_stored_vector_and_leaves_the_video_out(client, index_dir):
    from tldr_jax.search import load_index

    with load_index(index_dir, False) as index:
        vectors = np.asarray(index.vectors)
    for row in range(len(vectors)):
        body = client.get(f"/api/similar/{row}", params={"k": 3}).json()
        rows = [h["row"] for h in body["hits"]]
        sims = vectors @ vectors[row]
        sims[row] = -np.inf
        assert row not in rows and len(rows) == 3
        assert rows == list(np.argsort(-sims, kind="stable")[:3])
        np.testing.assert_allclose([h["itc"] for h in body["hits"]], np.sort(sims)[::-1][:3], atol=1e-6)


def test_media_serves_ranges_of_collection_files_only(client, collection):
    row = _row(client, "bright.mp4")
    data = (collection / "bright.mp4").read_bytes()
    full = client.get(f"/media/{row}")
    assert full.status_code == 200 and full.content == data and full.headers["content-type"] == "video/mp4"
    assert full.headers["accept-ranges"] == "bytes"
    part = client.get(f"/media/{row}", headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    tail = client.get(f"/media/{row}", headers={"Range": "bytes=-20"})
    assert tail.status_code == 206 and tail.content == data[-20:]
    assert client.get(f"/media/{row}", headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    npy = client.get(f"/media/{_row(client, 'clip0.npy')}")
    assert npy.status_code == 404 and "not a playable video file" in npy.json()["error"]


def test_entry_paths_outside_the_collection_are_never_opened(model_dir, index_dir, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    info = json.loads((copy / "index.json").read_text())
    row = next(i for i, e in enumerate(info["entries"]) if e["video"] == "bright.mp4")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"SECRET-CONTENT")
    info["entries"][row]["path"] = str(info["root"]) + "/../" + outside.name
    (copy / "index.json").write_text(json.dumps(info))
    client, _ = _client(copy)
    with client:
        for url in (f"/media/{row}", f"/api/thumbnails/{row}.jpg", f"/api/tokens/{row}.png"):
            got = client.get(url)
            error = got.json()["error"]
            assert got.status_code == 404 and "not inside the collection root" in error, error
            assert b"SECRET-CONTENT" not in got.content


def test_thumbnails_show_a_representative_frame_and_are_cached(client, index_dir, collection):
    import io

    from PIL import Image

    for name in ("dark_start.mp4", "bright.mp4", "clip1.npy"):
        row = _row(client, name)
        got = client.get(f"/api/thumbnails/{row}.jpg")
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg", got.text
        img = np.asarray(Image.open(io.BytesIO(got.content)))
        assert img.ndim == 3 and img.mean() > 40, (name, img.mean())  # never the black first frame
        entry = client.get(f"/api/videos/{row}").json()
        assert (index_dir / THUMBNAIL_DIR / f"{entry['sha256'][:32]}.jpg").read_bytes() == got.content
    assert representative_frame(collection / "dark_start.mp4").mean() > 40


def test_token_view_is_the_indexed_run_of_the_clip(client, index_dir):
    """The view runs the index's model with the index's schedule on the clip as the build read it: its
    merged tokens are the stored ones, and the PNG (frames, saliency, groups) is served and cached."""
    import io

    from PIL import Image

    from tldr_jax.search import load_index
    from tldr_jax.search.token_view import MAX_FRAMES, TOKEN_VIEW_DIR, analyze_row, render_view

    with load_index(index_dir) as index:
        for row in range(len(index)):
            view = analyze_row(index, row)
            np.testing.assert_allclose(view.tokens, index.tokens[row], atol=1e-5)
            m = view.maps
            assert m.grid == (4, 2, 2) and m.tokens_in == 16 and m.tokens_out == index.settings["tokens"][-1]
            assert m.num_groups == m.tokens_out and m.saliency is not None and m.saliency_layer == 0
            assert view.frames.dtype == np.uint8 and view.frames.shape == (4, 32, 32, 3)
            stats = view.stats()
            assert stats["merged"] == int((m.group_size > 1).sum()) and 0 < stats["merged"] <= 16
        for name in ("bright.mp4", "clip1.npy"):
            row = _row(client, name)
            got = client.get(f"/api/tokens/{row}.png")
            assert got.status_code == 200 and got.headers["content-type"] == "image/png", got.text
            img = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGB"))
            expected = render_view(analyze_row(index, row))
            assert img.shape == expected.shape and np.array_equal(img, expected)
            # 4 frames of 32 px enlarged to 128 px tiles: one column per frame, three rows
            assert img.shape[1] > MAX_FRAMES * 128 and img.shape[0] > 3 * 128
            entry = index.entries[row]
            cached = list((index_dir / TOKEN_VIEW_DIR).glob(f"{entry.sha256[:32]}-*.png"))
            assert len(cached) == 1 and cached[0].read_bytes() == got.content
            assert client.get(f"/api/tokens/{row}.png").content == got.content  # from the cache


def test_token_view_needs_the_model_and_a_valid_frame_count(index_dir):
    from tldr_jax.search import load_index
    from tldr_jax.search.token_view import analyze_row, render_view

    with load_index(index_dir, False) as index, pytest.raises(ValueError, match="opened without a model"):
        index.clip(0)
    with load_index(index_dir) as index:
        with pytest.raises(IndexError, match="no video 6"):
            index.clip(6)
        view = analyze_row(index, 0)
        with pytest.raises(ValueError, match="max_frames must be at least 1"):
            render_view(view, max_frames=0)
        two = render_view(view, max_frames=2, min_tile=32)
        assert two.shape[1] < render_view(view, min_tile=32).shape[1]


def test_warming_up_answers_503(index_dir):
    service = SearchService(index_dir)
    with TestClient(create_app(service, warm_up=False)) as client:
        for url in ("/api/search?q=w1", "/api/info", "/api/videos/0", "/media/0", "/api/tokens/0.png"):
            got = client.get(url)
            assert got.status_code == 503 and "warming up" in got.json()["error"]
        assert client.get("/api/health").json() == {"status": "warming up"}
        assert client.get("/").status_code == 200


def _add_and_reindex(model_dir, folder, out, times):
    """Add ``extra<i>.npy`` to ``folder`` and rebuild the index ``out``, ``times`` times."""
    for i in range(times):
        np.save(folder / f"extra{i}.npy", np.random.default_rng(i).standard_normal((4, 32, 32, 3))
                .astype(np.float32))
        build_index(model_dir, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)


def test_a_reindex_is_picked_up_without_a_failed_query(model_dir, collection, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(collection, folder)
    out = tmp_path / "index"
    build_index(model_dir, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    client, service = _client(out)
    errors, done = [], threading.Event()

    def query_loop():
        while not done.is_set():
            got = client.get("/api/search", params={"q": QUERIES[0], "k": 3, "rerank": 3})
            if got.status_code != 200 or len(got.json()["hits"]) != 3:
                errors.append(got.text)

    with client:
        first = client.get("/api/info").json()
        reader = threading.Thread(target=query_loop)
        reader.start()
        try:
            _add_and_reindex(model_dir, folder, out, 2)
        finally:
            done.set()
            reader.join()
        after = client.get("/api/info").json()
        assert after["videos"] == first["videos"] + 2 and after["generation"] != first["generation"]
        hits = client.get("/api/search", params={"q": QUERIES[1], "k": 8, "rerank": 0}).json()["hits"]
        assert {h["video"] for h in hits} >= {"extra0.npy", "extra1.npy"}
    assert not errors, errors[:3]


def test_cli_serve_refuses_bad_input_in_one_line(tmp_path, model_dir, collection, capsys):
    plain = tmp_path / "plain"
    build_index(model_dir, collection, plain, r=R_SPEC, batch_size=4, progress=False)
    for argv, match in [
        (["serve", str(tmp_path / "missing")], "no index at"),
        (["serve", str(plain), "--rerank", "5"], "holds no video tokens, which --rerank needs"),
        (["serve", str(plain), "--port", "0"], "expected a positive integer"),
    ]:
        code = cli_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], err


def test_loopback_detection():
    from tldr_jax.cli.serve import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.4")
