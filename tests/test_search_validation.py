"""An index's own files are checked before use (:mod:`tldr_jax.search.validate`): a damaged
``index.json``, vector or token file, or cached result is refused with one line naming the file and the
fix; nothing is ever unpickled; entry paths are shown as recorded and never opened outside the
collection.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import search_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_fixtures import R_SPEC, write_clips

from tldr_jax.search import build_index, load_index, search
from tldr_jax.search.index import INDEX_FILE, TOKENS_FILE, VECTORS_FILE

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
model = pytest.fixture(scope="module")(search_fixtures.model)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
index = pytest.fixture(scope="module")(search_fixtures.index)


class Bomb:
    """Unpickling it writes a marker file: a test fails if anything unpickles it."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def copy(index, tmp_path):
    path = tmp_path / "index"
    shutil.copytree(index.path, path)
    return path


def _edit(path, **fields):
    info = json.loads((path / INDEX_FILE).read_text())
    info.update(fields)
    (path / INDEX_FILE).write_text(json.dumps(info))
    return info


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_data_outside_the_index_is_refused(copy, index, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(index.path, other)
    for data in (f"../other/{index.generation}", str(other / index.generation), "data-../../x", ""):
        _edit(copy, data=data)
        with pytest.raises(ValueError, match="not the name of a data directory inside the index") as err:
            load_index(copy, model=False)
        assert str(copy / INDEX_FILE) in _one_line(err) and "Rebuild" in str(err.value)


@pytest.mark.parametrize(
    "case, match",
    [
        ("fewer rows", "has shape \\(5, 16\\), but index.json lists 6 videos of width 16"),
        ("more rows", "has shape \\(7, 16\\)"),
        ("nan", "row 2 holds NaN or inf"),
        ("float64", "holds float64"),
        ("object", "not a readable float32 array"),
        ("pickled tokens", "tokens.npy: not a readable float32 array"),
        ("tokens shape", "tokens.npy: holds float32 \\(6, 3, 64\\)"),
        ("missing", "vectors.npy is missing; the index is damaged"),
    ],
)
def test_damaged_arrays_are_refused_naming_the_file(copy, tmp_path, case, match):
    info = json.loads((copy / INDEX_FILE).read_text())
    data = copy / info["data"]
    vectors = np.load(data / VECTORS_FILE)
    Bomb.marker = tmp_path / "unpickled"
    if case == "fewer rows":
        np.save(data / VECTORS_FILE, vectors[:5])
    elif case == "more rows":
        np.save(data / VECTORS_FILE, np.concatenate([vectors, vectors[:1]]))
    elif case == "nan":
        vectors[2, 3] = np.nan
        np.save(data / VECTORS_FILE, vectors)
    elif case == "float64":
        np.save(data / VECTORS_FILE, vectors.astype(np.float64))
    elif case == "object":
        np.save(data / VECTORS_FILE, np.array([Bomb()] * 6, dtype=object), allow_pickle=True)
    elif case == "pickled tokens":
        np.save(data / TOKENS_FILE, np.array([Bomb()], dtype=object), allow_pickle=True)
    elif case == "tokens shape":
        np.save(data / TOKENS_FILE, np.zeros((6, 3, 64), np.float32))
    else:
        (data / VECTORS_FILE).unlink()
    with pytest.raises(ValueError, match=match) as err:
        load_index(copy, model=False)
    assert "Rebuild" in _one_line(err)
    assert not Bomb.marker.exists()


def test_a_vector_width_other_than_the_models_is_refused(copy):
    info = json.loads((copy / INDEX_FILE).read_text())
    data = copy / info["data"]
    np.save(data / VECTORS_FILE, np.load(data / VECTORS_FILE)[:, :8].copy())
    _edit(copy, dim=8)
    assert load_index(copy, model=False).vectors.shape == (6, 8)
    with pytest.raises(ValueError, match="vectors of width 8, but the model's features have 16") as err:
        load_index(copy)
    assert str(data / VECTORS_FILE) in _one_line(err)


def test_nan_tokens_are_refused_when_reranking(copy):
    data = copy / json.loads((copy / INDEX_FILE).read_text())["data"]
    tokens = np.load(data / TOKENS_FILE)
    tokens[:] = np.nan
    np.save(data / TOKENS_FILE, tokens)
    idx = load_index(copy)
    assert search(idx, "w1", k=2)  # ITC needs no tokens
    with pytest.raises(ValueError, match="tokens.npy: the tokens of .* hold NaN or inf"):
        search(idx, "w1", k=2, rerank=3)


def test_entry_paths_are_shown_as_recorded_and_never_opened_outside_the_collection(copy, clips):
    info = json.loads((copy / INDEX_FILE).read_text())
    info["entries"][0]["path"] = "../../etc/passwd"
    info["entries"][1]["path"] = str(clips / ".." / ".." / "etc" / "passwd")
    (copy / INDEX_FILE).write_text(json.dumps(info))
    idx = load_index(copy)
    hits = {h.row: h for h in search(idx, "w1", k=6)}
    assert hits[0].path == "../../etc/passwd"  # shown as recorded
    for row in (0, 1):
        with pytest.raises(ValueError, match="not inside the collection root .*it is not opened"):
            idx.video_path(row)
    assert idx.video_path(2) == clips / idx.entries[2].video
    # A re-index neither opens them nor keeps them: entries come from the files in the collection.
    again = build_index(idx.info["model_dir"], clips, copy, r=R_SPEC, batch_size=4, keep_tokens=True,
                        progress=False)
    assert all(e.path.startswith(str(clips)) for e in again.entries) and len(again.build.computed) == 0


def test_a_sha256_that_is_not_a_hash_is_refused(copy):
    info = json.loads((copy / INDEX_FILE).read_text())
    info["entries"][0]["sha256"] = "../../../../tmp/x"
    (copy / INDEX_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="entry 0 .* has sha256 '../../../../tmp/x', not 64 hex digits"):
        load_index(copy, model=False)


@pytest.mark.parametrize("bad", ["object", "shape", "nan", "pickled member"])
def test_a_bad_cached_result_is_named_and_overwrite_rebuilds_past_it(model_dir, tmp_path, bad):
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    out = tmp_path / "idx"
    first = build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, keep_tokens=True, progress=False)
    first.close()
    entry = first.entries[0]
    f = out / "cache" / entry.result_name
    Bomb.marker = tmp_path / "unpickled"
    with np.load(f) as z:
        arrays = dict(z)
    if bad == "object":
        arrays["embedding"] = np.array([Bomb()], dtype=object)
    elif bad == "shape":
        arrays["embedding"] = arrays["embedding"][:5]
    elif bad == "nan":
        arrays["embedding"] = np.full_like(arrays["embedding"], np.nan)
    else:
        arrays["tokens"] = np.array([Bomb()] * 2, dtype=object)
    np.savez(f, **arrays)  # object members are pickled by np.savez
    with pytest.raises(ValueError, match=f"cannot be used, e.g. {f} \\(the features of {entry.video}\\)"):
        build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, keep_tokens=True, progress=False)
    again = build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, keep_tokens=True, overwrite=True,
                        progress=False)
    assert again.build.recached == [entry.video] and again.build.computed == [entry.video.split("/")[-1]]
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert not Bomb.marker.exists()


def test_nan_features_are_refused_when_building_naming_the_video(model_dir, tmp_path):
    folder = tmp_path / "videos"
    write_clips(folder, n=1)
    np.save(folder / "nan.npy", np.full((4, 32, 32, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="nan.npy: .*(non-finite|NaN)"):
        build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)


#: The undamaged ``index.json`` of each copy the fuzz test edits.
_PRISTINE: dict[str, str] = {}
#: JSON values a damaged field may hold.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [
    "kind", "format", "data", "count", "dim", "approximate", "tokens_shape", "bytes", "root", "model_dir",
    "entries", "settings", "entries.0", "entries.0.sha256", "entries.0.size", "entries.0.video",
    "entries.0.warnings", "settings.keep_tokens", "settings.tokens", "settings.num_frames", "settings.arch",
    "settings.r",
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans())
def test_fuzz_damaged_index_json_fields_give_one_line_errors(copy, field, value, drop):
    """Any field of ``index.json`` replaced by any JSON value (or removed): the index opens, or a
    ``ValueError`` of one line names ``index.json`` (or the file it points to); nothing else escapes."""
    original = _PRISTINE.setdefault(str(copy), (copy / INDEX_FILE).read_text())
    info = json.loads(original)
    *parents, last = field.split(".")
    node = info
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if drop and isinstance(node, dict):
        node.pop(key, None)
    else:
        node[key] = value
    (copy / INDEX_FILE).write_text(json.dumps(info))
    try:
        idx = load_index(copy, model=False)
    except ValueError as err:
        text = str(err)
        assert "\n" not in text and str(copy) in text, text
        return
    repr(idx)
    assert idx.vectors.shape == (len(idx), idx.info["dim"])
    idx.close()
