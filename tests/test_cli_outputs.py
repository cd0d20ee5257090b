"""Issue 28 on the command line: output paths checked before any model load or decode, queries that
cannot be searched refused alike by ``search`` and ``retrieve --query``, long queries shortened, and the
smaller flags (``--actors``, ``--trim-seconds``)."""

from __future__ import annotations

import json
import os

import pytest
import search_fixtures

from tldr_jax.cli.main import main as cli_main

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
plain_index = pytest.fixture(scope="module")(search_fixtures.plain_index)


def run(capsys, *argv):
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tldr-jax ") and ": error: " in lines[0], err
    return lines[0]


# A model that does not exist: an output path refused first proves it is checked before the model.
NO_MODEL = "/nonexistent/model"
RETRIEVE = ["retrieve", "--model", NO_MODEL, "--videos", "{tmp}", "--query", "dog"]
INDEX = ["index", "{tmp}", "--model", NO_MODEL, "--out"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--model", NO_MODEL, "--json", "{tmp}/missing/r.json"], ["--json", "does not exist"]),
        (["run", "--model", NO_MODEL, "--json", "{tmp}"], ["--json", "is a directory"]),
        ([*RETRIEVE, "--json", "{tmp}/no/r.json"], ["--json", "does not exist"]),
        ([*RETRIEVE, "--json", "{tmp}"], ["--json", "is a directory"]),
        ([*INDEX, "{tmp}/no/such/index"], ["--out", "does not exist"]),
        ([*INDEX, "{tmp}/afile"], ["--out", "is a file"]),
        ([*INDEX, "{tmp}/afile/index"], ["--out", "is a file"]),
        (["vis", "--model", NO_MODEL, "--out", "{tmp}/no/v.png"], ["--out", "does not exist"]),
        (["finetune", NO_MODEL, "{tmp}", "--out", "{tmp}/no/run"], ["--out", "does not exist"]),
    ],
)
def test_output_paths_are_checked_before_the_model(tmp_path, capsys, argv, words):
    (tmp_path / "afile").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    line = one_error_line(err)
    assert code == 2 and all(w in line for w in words), line
    assert NO_MODEL not in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(tmp_path) and real(p, mode))
    for argv in (["run", "--model", NO_MODEL, "--json", tmp_path / "r.json"],
                 ["index", tmp_path, "--model", NO_MODEL, "--out", tmp_path / "index"]):
        code, _, err = run(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and "is not writable" in line and "Errno" not in line, line


@pytest.mark.parametrize("query", ["", "!!!", "  ?! "])
def test_empty_queries_are_the_same_one_line_in_search_and_retrieve(tmp_path, capsys, query):
    code, _, err = run(capsys, "search", tmp_path / "no_index", query)
    searched = one_error_line(err)
    code2, _, err = run(capsys, "retrieve", "--model", NO_MODEL, "--videos", tmp_path, "--query", query)
    retrieved = one_error_line(err)
    assert code == code2 == 2
    assert "nothing to search for" in searched
    assert searched.split(": error: ")[1] == retrieved.split(": error: ")[1]


def test_long_queries_are_shortened_in_the_header_and_warn_once(plain_index, capsys):
    query = " ".join(f"w{i % 20}" for i in range(400))
    code, out, err = run(capsys, "search", plain_index, query, "--k", "2", "--max-length", "16")
    assert code == 0
    header = out.splitlines()[0]
    assert header.startswith("query") and len(header) < 200 and f"({len(query)} characters)" in header, header
    warned = [x for x in err.splitlines() if "warning" in x]
    assert len(warned) == 1 and "the first 15 were kept" in warned[0], err


def test_retrieve_query_header_is_shortened(model_dir, clips, capsys):
    query = "w1 " * 100
    code, out, err = run(capsys, "retrieve", "--model", model_dir, "--videos", clips, "--query", query,
                         "--r", "6,4,2", "--batch-size", "4", "--max-length", "16", "--top", "2", "-q")
    assert code == 0, err
    header = next(x for x in out.splitlines() if x.startswith("query"))
    assert len(header) < 200 and "(300 characters)" in header, header
    assert sum("word pieces" in x for x in err.splitlines()) == 1, err


def test_actors_without_ray_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "index", tmp_path, "--model", NO_MODEL, "--out", tmp_path / "i",
                       "--actors", "2")
    assert code == 2 and "--actors 2 needs --engine ray" in one_error_line(err)


def test_trim_seconds_reaches_build_index(model_dir, clips, tmp_path, capsys, monkeypatch):
    import tldr_jax.search.build as build

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(build, "build_index", fake)
    argv = ["index", clips, "--model", model_dir, "--out", tmp_path / "i", "--trim-seconds"]
    code, _, err = run(capsys, *argv, "2.5", "-q")
    assert code == 2 and "stop here" in err and seen["trim_seconds"] == 2.5
    code, _, err = run(capsys, *argv, "0")
    assert code == 2 and "--trim-seconds" in err


def test_retrieve_json_is_written_atomically(model_dir, clips, tmp_path, capsys):
    js = tmp_path / "r.json"
    code, _, err = run(capsys, "retrieve", "--model", model_dir, "--videos", clips, "--query", "w1 w2", "--r",
                       "6,4,2", "--batch-size", "4", "--max-length", "16", "--json", js, "-q")
    assert code == 0, err
    assert json.loads(js.read_text())["queries"][0]["query"] == "w1 w2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left
