"""``tldr-jax qa`` and ``tldr-jax mc`` on the converted golden models: one question, a data set with and
without vid-TLDR (the official accuracies), multiple choice, and one line for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qa_fixtures import GOLD, SIZES, video

from tldr_jax.cli.main import main


@pytest.fixture(scope="module")
def data(tmp_path_factory, qa_gold):
    """The golden clips as .npy files, a QA annotation file, the answer list and an MC file."""
    root = tmp_path_factory.mktemp("qa_data")
    clips = root / "clips"
    clips.mkdir()
    for i, clip in enumerate(video(qa_gold)):
        np.save(clips / f"v{i}.npy", clip)
    entries = [
        {"video": f"v{v}.npy", "question": str(q), "answer": str(a), "question_id": i}
        for i, (v, q, a) in enumerate(
            zip(qa_gold["question_video"], qa_gold["questions"], qa_gold["question_gt"])
        )
    ]
    (root / "qa.json").write_text(json.dumps(entries))
    (root / "answers.json").write_text(json.dumps([str(a) for a in qa_gold["answers"]]))
    (root / "answers.txt").write_text("\n".join(str(a) for a in qa_gold["answers"]) + "\n")
    mc = [
        {"video": f"v{v}.npy", "caption": [str(c) for c in caps], "answer": int(a)}
        for v, caps, a in zip(qa_gold["mc_video"], qa_gold["mc_captions"], qa_gold["mc_answer"])
    ]
    (root / "mc.json").write_text(json.dumps(mc))
    return root


def test_one_question_prints_the_ranked_answers(qa_model_dir, data, capsys):
    argv = ["qa", "--model", str(qa_model_dir), str(data / "clips" / "v0.npy"), "What is the man playing?"]
    assert main([*argv, "--answers", str(data / "answers.txt"), "--top", "3", "--r", "0", "-q"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 3 and "question 'What is the man playing?'" in out
    probs = [float(line.split()[1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_a_data_set_is_evaluated_with_and_without_merging_as_the_official_code(
    qa_model_dir, data, qa_gold, tmp_path, capsys
):
    out = tmp_path / "qa.json"
    argv = [
        "qa",
        "--model",
        str(qa_model_dir),
        "--annotations",
        str(data / "qa.json"),
        "--videos",
        str(data / "clips"),
        "--answer-list",
        str(data / "answers.json"),
        "--r",
        "6,4,2",
        "--max-question-length",
        "12",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and f"wrote   {out}" in printed
    result = json.loads(out.read_text())
    merged, plain = result["runs"]
    assert merged["accuracy"] == float(qa_gold["qa/ints/k20/accuracy"])
    assert plain["label"] == "no merging" and plain["accuracy"] == float(qa_gold["qa/zero/k20/accuracy"])
    preds = [row["prediction"] for row in merged["predictions"]]
    assert preds == [str(a) for a in qa_gold["qa/ints/k20/pred_answers"]]
    assert merged["predictions"][0]["question_id"] == 0 and len(merged["predictions"][0]["top"]) == 5


def test_multiple_choice_with_and_without_merging(tmp_path, data, qa_gold, capsys):
    pytest.importorskip("torch")
    from checkpoints_convert import convert

    model_dir = tmp_path / "mc_model"
    convert(
        GOLD / "umt_mc.pth",
        model_dir,
        vocab=GOLD / "vocab.txt",
        text_config=GOLD / "qa_config.json",
        verbose=False,
        **SIZES,
    )
    out = tmp_path / "mc.json"
    argv = [
        "mc",
        "--model",
        str(model_dir),
        "--annotations",
        str(data / "mc.json"),
        "--videos",
        str(data / "clips"),
        "--r",
        "0.25,0.1,0",
        "--max-length",
        "16",
        "--frames",
        "4",  # the MSR-VTT-MC preset samples 12
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    merged, plain = json.loads(out.read_text())["runs"]
    assert (
        merged["pred"] == qa_gold["mc/frac/pred"].tolist()
        and plain["pred"] == qa_gold["mc/zero/pred"].tolist()
    )
    assert merged["accuracy"] == float(qa_gold["mc/frac/accuracy"])
    np.testing.assert_allclose(merged["scores"], qa_gold["mc/frac/scores"], rtol=0, atol=1e-5)


def bad_cases(model_dir, data, tmp_path):
    clip, answers = str(data / "clips" / "v0.npy"), str(data / "answers.json")
    base = ["qa", "--model", str(model_dir)]
    dataset = [*base, "--annotations", str(data / "qa.json"), "--answer-list", answers]
    return [
        ([*base, clip, "what?"], "needs VIDEO, QUESTION and --answers"),
        ([*base], "give VIDEO QUESTION --answers FILE"),
        ([*base, clip, "what?", "--answers", str(tmp_path / "none.json")], "--answers"),
        ([*base, str(tmp_path / "v.mp4"), "what?", "--answers", answers], "VIDEO"),
        ([*dataset], "pass --videos FOLDER"),
        ([*dataset, "--videos", str(data / "clips"), "--out", str(tmp_path)], "is a directory"),
        ([*dataset, "--videos", str(data / "clips"), "--r", "9,9,9,9,9"], "r"),
        (["qa", "--model", str(data), clip, "what?", "--answers", answers], "not a QA model directory"),
        ([*base, clip, "what?", "--answers", answers, "--annotations", str(data / "qa.json")], "not both"),
        (
            [
                "mc",
                "--model",
                str(model_dir),
                "--annotations",
                str(data / "mc.json"),
                "--videos",
                str(data / "clips"),
            ],
            "not a retrieval model directory",
        ),
    ]


def test_every_bad_input_is_one_line_and_nothing_is_written(qa_model_dir, data, tmp_path, capsys):
    for argv, message in bad_cases(qa_model_dir, data, tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_vision_commands_run_the_encoder_of_a_qa_directory(qa_model_dir, capsys):
    assert main(["run", "--model", str(qa_model_dir), "--r", "0", "-q"]) == 0
    assert "the vision encoder of a QA model" in capsys.readouterr().out
