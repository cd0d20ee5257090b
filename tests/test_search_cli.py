"""``tldr-jax index`` and ``tldr-jax search``: the same results as the Python API, bad input as one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import search_fixtures
from search_fixtures import N_CLIPS, QUERIES

from tldr_jax.cli.main import main as cli_main
from tldr_jax.search import search

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
index = pytest.fixture(scope="module")(search_fixtures.index)
plain_index = pytest.fixture(scope="module")(search_fixtures.plain_index)


def test_cli_index_then_search(model_dir, clips, index, tmp_path, capsys):
    out = tmp_path / "cli_idx"
    argv = ["index", str(clips), "--model", str(model_dir), "--out", str(out), "--r", "6,4,2",
            "--batch-size", "4", "--keep-tokens", "-q"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{N_CLIPS} videos ({N_CLIPS} encoded, 0 reused" in printed and "16 -> 4 tokens" in printed
    assert "tokens 6.0 KiB (24.0 KiB without merging)" in printed
    assert cli_main(argv[:-1]) == 0  # without -q: run_directory's progress bar on stderr
    again = capsys.readouterr()
    assert f"(0 encoded, {N_CLIPS} reused" in again.out and f"{N_CLIPS}/{N_CLIPS}" in again.err

    assert cli_main(["search", str(out), QUERIES[0], "--k", "3", "--rerank", "4", "--max-length", "16",
                     "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    expected = search(index, QUERIES[0], k=3, rerank=4, max_length=16)
    assert [h["video"] for h in hits] == [h.video for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.itm for h in expected], atol=1e-6)
    assert cli_main(["search", str(out), QUERIES[1], "--k", "2", "--max-length", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query") and len(lines) == 3 and "itc" in lines[1]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["search", "{missing}", "w1"], "no index at"),
        (["search", "{plain}", "w1", "--rerank", "3", "--k", "2"], "holds no video tokens"),
        (["search", "{plain}", "w1", "--k", "0"], "expected a positive integer"),
        (["search", "{plain}", "w1", "--k", "5", "--rerank", "2"], "exceeds --rerank"),
        (["search", "{plain}", "!!!"], "is empty after the official caption cleaning"),
        (["search", "{plain}", "🙂"], "every piece is [UNK]"),
        (["index", "{empty}", "--model", "{model}", "--out", "{new}"], "no video or .npy files"),
        (["index", "{clips}", "--model", "{clips}", "--out", "{new}"], "not a retrieval model"),
        (["index", "{clips}", "--model", "{model}", "--out", "{plain}", "--r", "5,4,2"], "another model"),
        (["index", "{broken}", "--model", "{model}", "--out", "{new}", "--r", "6,4,2", "-q"], "--skip-bad"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(model_dir, clips, plain_index, tmp_path, capsys, argv, match):
    plain = tmp_path / "plain"
    shutil.copytree(plain_index, plain)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.mp4").write_bytes(b"not a video" * 100)
    fill = {"broken": tmp_path / "broken",
            "missing": tmp_path / "missing", "plain": plain, "empty": tmp_path / "empty", "model": model_dir,
            "clips": clips, "new": tmp_path / "new"}
    code = cli_main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "new" / "index.json").exists()


def test_cli_query_errors_and_headers_match_the_python_api(plain_index, tmp_path, capsys):
    from tldr_jax.search import load_index
    from tldr_jax.search.query import describe

    for query in ("!!!", "🙂🐶"):
        with pytest.raises(ValueError) as err:
            search(plain_index, query)
        assert cli_main(["search", str(plain_index), query]) == 2
        assert capsys.readouterr().err.strip() == f"tldr-jax search: error: {err.value}"
    long = " ".join(["w1", "w2"] * 30)
    assert cli_main(["search", str(plain_index), long, "--k", "2", "--max-length", "16"]) == 0
    out, err = capsys.readouterr()
    with load_index(plain_index) as idx:
        assert out.splitlines()[0] == f"query   {describe(idx, long)}" and "(179 characters)" in out
    assert "tldr-jax: warning: the query" in err and "first 15 were kept (45 dropped)" in err
