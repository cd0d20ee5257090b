"""Reading retrieval annotations (:mod:`tldr_jax.retrieval.annotations`): the official dataset conventions.
"""

from __future__ import annotations

import json

import pytest

from tldr_jax.retrieval.annotations import load_annotations


def test_annotations_paragraphs_several_captions_and_several_videos(tmp_path):
    entries = [
        {"video": "a.mp4", "caption": ["First part.", "Second part!"]},
        {"video": "b.mp4", "caption": "One caption"},
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(entries))
    multi = load_annotations(path, "root", dataset="msvd")
    assert multi.videos == ["root/a.mp4", "root/b.mp4"]
    assert multi.texts == ["first part", "second part", "one caption"]
    assert multi.txt2vid == [[0], [0], [1]] and multi.vid2txt == [[0, 1], [2]]
    para = load_annotations(path, None, dataset="didemo")
    assert para.texts == ["first part second part", "one caption"] and para.vid2txt == [[0], [1]]
    path.write_text(
        json.dumps(
            [
                {"video": ["x.mp4", "y.mp4"], "caption": "Pushing something"},
                {"video": "z.mp4", "caption": "Lifting it"},
            ]
        )
    )
    ssv2 = load_annotations(path, dataset="ssv2_label")
    assert ssv2.videos == ["x.mp4", "y.mp4", "z.mp4"] and ssv2.txt2vid == [[0, 1], [2]]
    assert ssv2.vid2txt == [[0], [0], [1]]
    path.write_text(json.dumps([{"video": "a.mp4"}]))
    with pytest.raises(ValueError, match="'video' and 'caption'"):
        load_annotations(path)
