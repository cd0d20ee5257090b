"""UMT video-text retrieval against the official code (``../shared/golden/umt_retrieval``).

The golden set is the official ``UMT`` retrieval model (vid-TLDR merging in its vision encoder, the xbert
text tower, ``tasks/retrieval_utils.evaluation`` + ``itm_eval``) run on a tiny seeded model in float32
and float64. Float64 parity is asked at 1e-9 for every tower output and every schedule; the float32
evaluation matrices at 1e-4 and the metrics exactly, at k = 2 (re-ranking changes the order) and 128.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR, golden

from tldr_jax import retrieval as R

GOLD = GOLDEN_DIR / "umt_retrieval"
SCHEDULES = ("zero", "ints", "frac")
F64_ATOL = 1e-9
#: The official float64 run stores the re-ranked matrices as float32 (it pre-allocates them so):
#: a float64 port's values round to them within half a float32 ulp (|score| < 1: 6e-8).
X_F32_STORAGE_ATOL = 1e-7
F32_ATOL = 1e-4


@pytest.fixture(scope="module")
def gold():
    return golden("umt_retrieval/golden_retrieval.npz")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The golden official checkpoint converted by ``checkpoints_convert`` into a retrieval directory."""
    pytest.importorskip("torch")
    if not (GOLD / "umt_retrieval.pth").exists():
        pytest.skip(f"golden retrieval checkpoint not found in {GOLD}")
    from checkpoints_convert import convert

    out = tmp_path_factory.mktemp("ret") / "umt_tiny_ret"
    convert(
        GOLD / "umt_retrieval.pth",
        out,
        vocab=GOLD / "vocab.txt",
        text_config=GOLD / "text_config.json",
        num_heads=2,
        num_frames=4,
        img_size=32,
        verbose=False,
    )
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    """The converted golden model, loaded by ``tldr_jax.load``."""
    import tldr_jax

    loaded = tldr_jax.load(model_dir)
    assert isinstance(loaded, R.RetrievalModel)
    return loaded


def schedule(gold, name):
    """The golden per-layer r (counts as ints, fractions as floats)."""
    return tuple(int(v) if v >= 1 or v == 0 else float(v) for v in gold[f"{name}/schedule"])


def video(gold, dtype=np.float32):
    """(B, T, C, H, W) golden clips as tldr_jax's (B, T, H, W, C)."""
    return gold["video_btchw"].transpose(0, 1, 3, 4, 2).astype(dtype)


def official_metrics(gold, key):
    return json.loads(str(gold[key]))


# --------------------------------------------------------------------------------------------------
# Tokenizer.
# --------------------------------------------------------------------------------------------------


def test_tokenizer_gives_the_official_ids_and_masks(model, gold):
    ids, mask = R.tokenize(model, list(gold["texts"]), max_length=16)
    np.testing.assert_array_equal(ids, gold["input_ids"])
    np.testing.assert_array_equal(mask, gold["attention_mask"])
    assert R.tokenizer.decode_pieces(model, ids) == [str(t) for t in gold["text_tokens"]]


def test_tokenizer_adds_cls_but_no_sep_and_truncates_to_max_length(model):
    sep = model.vocab.id_of("[SEP]")
    ids, mask = R.tokenize(model, ["a man a man a man a man a man a man", "dog"], max_length=8)
    assert ids.shape == (2, 8) and (ids[:, 0] == model.vocab.id_of("[CLS]")).all()
    assert not (ids == sep).any()
    assert mask[0].sum() == 8 and mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="max_length"):
        R.tokenize(model, ["dog"], max_length=64)  # more than the 32 position embeddings


# --------------------------------------------------------------------------------------------------
# Float64 parity with the official float64 run.
# --------------------------------------------------------------------------------------------------


def assert_close(got, want, atol, what):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


def assert_reranked(got, want, atol, what):
    """Re-ranked matrices: the same -100 (unscored) positions, scores within ``atol``."""
    got = np.asarray(got)
    np.testing.assert_array_equal(got == R.UNSCORED, want == R.UNSCORED, err_msg=what)
    assert_close(got, want.astype(np.float64), atol, what)


def test_float64_parity_of_every_output_and_schedule(model, gold):
    ids, mask = R.tokenize(model, list(gold["texts"]), 16)
    with jax.enable_x64(True):
        m64 = model.astype(jnp.float64)
        assert m64.dtype == jnp.float64
        clips = jnp.asarray(video(gold, np.float64))
        assert_close(
            R.text_hidden_states(m64, ids, mask), gold["text_hidden_states_f64"], F64_ATOL, "hidden states"
        )
        text = R.encode_text(m64, ids, mask)
        assert text.embeds.dtype == jnp.float64
        for key, got in (("text_embeds", text.embeds), ("text_proj", text.proj), ("text_feat", text.feat)):
            assert_close(got, gold[key + "_f64"], F64_ATOL, key)
        for name in SCHEDULES:
            vid = R.encode_video(m64, clips, r=schedule(gold, name))
            sim = vid.feat @ text.feat.T
            logits = R.itm_logits(m64, text.embeds, mask, vid.tokens)
            checks = {
                "vision_embeds": vid.tokens,
                "pooled_vision": vid.pooled[:, None],
                "vision_proj": vid.proj[:, None],
                "vision_feat": vid.feat[:, None],
                "vision_size": vid.size,
                "itc_sim_v2t": sim,
                "itc_sim_t2v": sim.T,
                "itc_logits_v2t_with_temp": sim / m64.text["temp"],
                "itm_cls": R.fusion_cls(m64, text.embeds, mask, vid.tokens),
                "itm_logits": logits,
                "itm_score": logits[..., 1],
                "itm_prob": jax.nn.softmax(logits)[..., 1],
            }
            for key, got in checks.items():
                assert_close(got, gold[f"{name}/{key}_f64"], F64_ATOL, f"{name}/{key}")
            for k in (2, 128):
                res = R.evaluate(m64, vid, text, txt2vid=gold["txt2img"], vid2txt=gold["img2txt"], k=k)
                pre = f"{name}/eval_k{k}"
                assert_close(res.i2t_emb, gold[f"{pre}_i2t_emb_f64"], F64_ATOL, f"{pre} i2t_emb")
                assert_close(res.t2i_emb, gold[f"{pre}_t2i_emb_f64"], F64_ATOL, f"{pre} t2i_emb")
                assert_reranked(res.i2t, gold[f"{pre}_i2t_x_f64"], X_F32_STORAGE_ATOL, f"{pre} i2t")
                assert_reranked(res.t2i, gold[f"{pre}_t2i_x_f64"], X_F32_STORAGE_ATOL, f"{pre} t2i")
                assert R.official_only(res.metrics) == official_metrics(gold, f"{pre}_metrics_f64")
                assert R.official_only(res.metrics_emb) == official_metrics(gold, f"{pre}_metrics_emb_f64")


# --------------------------------------------------------------------------------------------------
# Float32: the evaluation end to end.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def f32_runs(model, gold):
    """``{(schedule, k): EvalResult}``: the whole evaluation from raw captions and clips (batches of 2 + 1,
    as the official loader), the texts encoded once and reused for k = 128."""
    texts = list(gold["texts"])
    runs = {}
    for name in SCHEDULES:
        first = R.evaluate(
            model,
            video(gold),
            texts,
            txt2vid=gold["txt2img"],
            k=2,
            r=schedule(gold, name),
            max_length=16,
            batch_size=2,
        )
        runs[name, 2] = first
        text = R.encode_texts(model, texts, max_length=16)
        vid = R.encode_videos(model, list(video(gold)), r=schedule(gold, name), batch_size=2)
        runs[name, 128] = R.evaluate(model, vid, text, vid2txt=gold["img2txt"], k=128)
    return runs


@pytest.mark.parametrize("k", [2, 128])
@pytest.mark.parametrize("name", SCHEDULES)
def test_float32_evaluation_matches_the_official_matrices_and_metrics(f32_runs, gold, name, k):
    res = f32_runs[name, k]
    pre = f"{name}/eval_k{k}"
    assert_close(res.i2t_emb, gold[f"{pre}_i2t_emb"], F32_ATOL, "i2t_emb")
    assert_close(res.t2i_emb, gold[f"{pre}_t2i_emb"], F32_ATOL, "t2i_emb")
    assert_reranked(res.i2t, gold[f"{pre}_i2t_x"], F32_ATOL, "i2t")
    assert_reranked(res.t2i, gold[f"{pre}_t2i_x"], F32_ATOL, "t2i")
    assert R.official_only(res.metrics) == official_metrics(gold, f"{pre}_metrics")
    assert R.official_only(res.metrics_emb) == official_metrics(gold, f"{pre}_metrics_emb")
    assert res.i2t.dtype == np.float32 and res.metrics_emb_dsl is None
    assert res.official()["test/"] == official_metrics(gold, f"{pre}_metrics")


def test_k2_reranking_changes_the_order_and_scores_only_the_top_k(f32_runs, gold):
    res = f32_runs["ints", 2]
    assert ((res.i2t != R.UNSCORED).sum(axis=1) == 2).all() and (
        (res.t2i != R.UNSCORED).sum(axis=1) == 2
    ).all()
    itc_top1 = np.argmax(res.t2i_emb, axis=1)
    itm_top1 = np.argmax(res.t2i, axis=1)
    assert (itc_top1 != itm_top1).any()  # the matching head re-orders what ITC ranked


def test_rerank_scores_equal_the_all_pairs_itm_scores(model, gold, f32_runs):
    """Grouped re-ranking (keys/values shared per video, padded groups) gives every pair's own score."""
    ids, mask = R.tokenize(model, list(gold["texts"]), 16)
    text = R.encode_text(model, ids, mask)
    vid = R.encode_videos(model, video(gold), r=schedule(gold, "frac"), batch_size=2)
    every = np.asarray(R.itm_score(model, text.embeds, mask, vid.tokens))  # (texts, videos)
    sim = np.asarray(vid.feat @ text.feat.T)
    for k, batch in ((2, 2), (3, 2), (128, 32)):
        i2t, t2i, plan = R.rerank(model, sim, text, np.asarray(vid.tokens), k, text_batch=batch)
        scored = i2t != R.UNSCORED
        np.testing.assert_allclose(i2t[scored], every.T[scored], rtol=0, atol=2e-6)
        scored = t2i != R.UNSCORED
        np.testing.assert_allclose(t2i[scored], every[scored], rtol=0, atol=2e-6)
        assert plan.texts.shape[1] == min(batch, 5) and plan.num_pairs <= 5 * min(k, 3) + 3 * min(k, 5)


def test_rerank_plan_covers_both_directions_once_with_static_groups():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 11))
    plan = R.plan_rerank(sim, k=3, text_batch=4)
    pairs = {
        (int(v), int(t)) for v, ts, ok in zip(plan.video, plan.texts, plan.valid) for t, o in zip(ts, ok) if o
    }
    assert len(pairs) == plan.num_pairs  # each pair once
    want = {(v, int(t)) for v in range(7) for t in np.argsort(-sim[v])[:3]}
    want |= {(int(v), t) for t in range(11) for v in np.argsort(-sim[:, t])[:3]}
    assert pairs == want
    assert plan.num_pairs < 7 * 3 + 11 * 3  # shared pairs are not scored twice
    assert plan.texts.shape == plan.valid.shape and plan.texts.shape[1] == 4


def test_reranking_compiles_once_for_any_k(model, gold):
    """Static shapes: other k (other numbers of work items) reuse the one compiled group program."""
    from tldr_jax.retrieval import evaluation as ev

    rng = np.random.default_rng(1)
    text = R.encode_texts(
        model, [f"a man {w}" for w in ("runs", "eats", "walks", "swims", "plays", "sings")], max_length=16
    )
    tokens = rng.normal(size=(5, 7, 64)).astype(np.float32)
    sim = rng.normal(size=(5, 6)).astype(np.float32)
    R.rerank(model, sim, text, tokens, 1, text_batch=3)
    before = ev._itm_groups._cache_size()
    for k in (2, 3, 6, 128):
        R.rerank(model, sim, text, tokens, k, text_batch=3)
    assert ev._itm_groups._cache_size() == before


# --------------------------------------------------------------------------------------------------
# Metrics, ground truth, dual softmax.
# --------------------------------------------------------------------------------------------------


def test_metrics_best_rank_of_several_ground_truths_and_rank_statistics():
    # 2 videos x 4 texts; video 0's captions are texts 0 and 3, video 1's are 1 and 2.
    i2t = np.array([[0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.5, 0.3]])
    t2i = i2t.T.copy()
    m = R.retrieval_metrics(i2t, t2i, txt2vid=[0, 1, 1, 0], vid2txt=[[0, 3], [1, 2]])
    # video 0: order 1,3,2,0 -> best gt rank 1 (text 3); video 1: order 0,2,3,1 -> rank 1 (text 2)
    assert m["txt_r1"] == 0.0 and m["txt_r5"] == 100.0 and m["txt_mdr"] == 2.0 and m["txt_mnr"] == 2.0
    # text queries: t0 -> [0.1, 0.9]: gt 0 at rank 1; t1: gt 1 at rank 1; t2: gt 1 rank 0; t3: gt 0 rank 0
    assert m["img_r1"] == 50.0 and m["img_mdr"] == 1.5 and m["img_mnr"] == 1.5
    assert m["r_mean"] == round((m["txt_r_mean"] + m["img_r_mean"]) / 2, 2)
    assert list(m)[:9] == list(R.metrics.OFFICIAL_KEYS)


def test_ground_truth_is_derived_from_either_map():
    t2v, v2t = R.ground_truth(3, 5, txt2vid=[0, 0, 1, 2, 2])
    assert v2t == [[0, 1], [2], [3, 4]]
    t2v2, v2t2 = R.ground_truth(3, 5, vid2txt=np.array([[0, 1], [2, -1], [3, 4]]))
    assert t2v2 == [[0], [0], [1], [2], [2]] and v2t2 == v2t
    with pytest.raises(ValueError, match="txt2vid"):
        R.ground_truth(3, 5)
    with pytest.raises(ValueError, match="no ground truth"):
        R.ground_truth(3, 5, vid2txt=[[0, 1], [-1, -1], [3, 4]])


def test_dual_softmax_is_only_an_explicit_labelled_option(model, f32_runs, gold):
    res = f32_runs["zero", 128]
    assert res.metrics_emb_dsl is None
    vid = R.encode_videos(model, video(gold), r=0, batch_size=3)
    text = R.encode_texts(model, list(gold["texts"]), max_length=16)
    dsl = R.evaluate(model, vid, text, txt2vid=gold["txt2img"], k=128, dual_softmax=0.01)
    assert dsl.metrics == res.metrics and dsl.metrics_emb == res.metrics_emb  # official numbers untouched
    rescored = R.dual_softmax(dsl.i2t_emb, 0.01)
    assert dsl.metrics_emb_dsl == R.retrieval_metrics(
        rescored, R.dual_softmax(dsl.t2i_emb, 0.01), gold["txt2img"], gold["img2txt"]
    )
    assert not np.allclose(rescored, dsl.i2t_emb)


# --------------------------------------------------------------------------------------------------
# Annotations and presets.
# --------------------------------------------------------------------------------------------------


def test_pre_text_cleans_captions_like_the_official_datasets():
    assert R.pre_text("A man's  guitar-solo, on (stage)!  ") == "a mans guitar solo on stage"
    assert R.pre_text("<person> walks/runs") == "person walks runs"


def test_annotations_paragraphs_several_captions_and_several_videos(tmp_path):
    entries = [
        {"video": "a.mp4", "caption": ["First part.", "Second part!"]},
        {"video": "b.mp4", "caption": "One caption"},
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(entries))
    multi = R.load_annotations(path, "root", dataset="msvd")
    assert multi.videos == ["root/a.mp4", "root/b.mp4"]
    assert multi.texts == ["first part", "second part", "one caption"]
    assert multi.txt2vid == [[0], [0], [1]] and multi.vid2txt == [[0, 1], [2]]
    para = R.load_annotations(path, None, dataset="didemo")
    assert para.texts == ["first part second part", "one caption"] and para.vid2txt == [[0], [1]]
    path.write_text(
        json.dumps(
            [
                {"video": ["x.mp4", "y.mp4"], "caption": "Pushing something"},
                {"video": "z.mp4", "caption": "Lifting it"},
            ]
        )
    )
    ssv2 = R.load_annotations(path, dataset="ssv2_label")
    assert ssv2.videos == ["x.mp4", "y.mp4", "z.mp4"] and ssv2.txt2vid == [[0, 1], [2]]
    assert ssv2.vid2txt == [[0], [0], [1]]
    path.write_text(json.dumps([{"video": "a.mp4"}]))
    with pytest.raises(ValueError, match="'video' and 'caption'"):
        R.load_annotations(path)


def test_dataset_presets_follow_the_official_configs():
    d = R.DATASETS
    assert {n: p.max_txt_l for n, p in d.items()} == {
        "msrvtt": 32,
        "msvd": 64,
        "didemo": 64,
        "activitynet": 150,
        "lsmdc": 96,
        "ssv2_label": 25,
        "ssv2_template": 25,
    }
    assert all(p.num_frames == 12 and p.k_test == 128 and p.img_size == 224 for p in d.values())
    assert [n for n, p in d.items() if p.is_paragraph_retrieval] == ["didemo", "activitynet"]
    assert d["msvd"].multi_txt_gt and d["didemo"].trim_seconds == 30
    assert d["msrvtt"].eval_kwargs() == {"k": 128, "r": "msrvtt", "max_length": 32}
    import tldr_jax

    assert all(p.r in tldr_jax.PRESETS["umt_b16"] for p in d.values())
    with pytest.raises(ValueError, match="msrvtt"):
        R.get_dataset("msrvt")


# --------------------------------------------------------------------------------------------------
# Command line (tldr-jax retrieve).
# --------------------------------------------------------------------------------------------------


def cli_args(argv):
    import argparse

    from tldr_jax.cli import retrieve as cli

    parser = argparse.ArgumentParser(prog="tldr-jax")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["retrieve", *argv])


@pytest.fixture(scope="module")
def clip_dir(gold, tmp_path_factory):
    """The golden clips as .npy files and the golden captions as JSON lines."""
    root = tmp_path_factory.mktemp("clips")
    for i, clip in enumerate(video(gold)):
        np.save(root / f"v{i}.npy", clip)
    lines = [
        json.dumps({"video": f"v{v}.npy", "caption": str(t)}) for t, v in zip(gold["texts"], gold["txt2img"])
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cli_evaluates_with_and_without_vid_tldr(model_dir, clip_dir, gold, f32_runs, capsys, tmp_path):
    out = tmp_path / "res.json"
    args = cli_args(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(clip_dir),
            "--captions",
            str(clip_dir / "captions.jsonl"),
            "--r",
            "6,4,2",
            "--k",
            "2",
            "--max-length",
            "16",
            "--raw-captions",
            "--batch-size",
            "2",
            "--json",
            str(out),
            "-q",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    runs = {r["label"]: r for r in json.loads(out.read_text())["runs"]}
    assert R.official_only(runs["vid-TLDR r=6,4,2"]["metrics"]) == official_metrics(
        gold, "ints/eval_k2_metrics"
    )
    assert R.official_only(runs["no merging"]["metrics"]) == official_metrics(gold, "zero/eval_k2_metrics")
    assert runs["vid-TLDR r=6,4,2"]["tokens"][-1] == 4 and runs["no merging"]["tokens"][-1] == 16
    assert "vid-TLDR r=6,4,2 ITM" in printed and "no merging ITC" in printed and "time" in printed


def test_cli_reads_an_official_annotation_file_with_dataset_conventions(model_dir, clip_dir, gold, tmp_path):
    """MSVD-style entries (several captions per video) give the golden texts and ground truth."""
    entries = [{"video": f"v{v}.npy", "caption": [str(gold["texts"][t]) for t in ts if t >= 0]}
               for v, ts in enumerate(gold["img2txt"])]
    ann, out = tmp_path / "msvd_ret_test.json", tmp_path / "res.json"
    ann.write_text(json.dumps(entries))
    args = cli_args(["--model", str(model_dir), "--videos", str(clip_dir), "--annotations", str(ann),
                     "--dataset", "msvd", "--raw-captions", "--max-length", "16", "--frames", "4", "--k", "2",
                     "--r", "6,4,2", "--batch-size", "2", "--no-baseline", "--json", str(out), "-q"])
    assert args.func(args) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert R.official_only(run["metrics"]) == official_metrics(gold, "ints/eval_k2_metrics")


def test_cli_query_ranks_videos_by_the_matching_head(model_dir, clip_dir, gold, capsys, tmp_path):
    out = tmp_path / "q.json"
    query = str(gold["texts"][0])
    args = cli_args(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(clip_dir),
            "--query",
            query,
            "--r",
            "6,4,2",
            "--max-length",
            "16",
            "--raw-captions",
            "--batch-size",
            "2",
            "--json",
            str(out),
            "-q",
        ]
    )
    assert args.func(args) == 0
    ranked = json.loads(out.read_text())["queries"][0]["ranked"]
    want = np.argsort(-gold["ints/eval_k128_t2i_x"][0])
    assert [r["video"].endswith(f"v{v}.npy") for r, v in zip(ranked, want)] == [True] * 3
    np.testing.assert_allclose(
        [r["itm"] for r in ranked], gold["ints/eval_k128_t2i_x"][0][want], atol=F32_ATOL
    )
    assert query in capsys.readouterr().out


def test_cli_refuses_bad_inputs_before_loading_weights(model_dir, clip_dir):
    from tldr_jax.cli import retrieve as cli

    base = ["--model", str(model_dir), "--videos", str(clip_dir), "--query", "dog"]
    with pytest.raises(FileNotFoundError, match="--videos"):
        cli.main(cli_args([*base[:2], "--videos", str(clip_dir / "missing"), "--query", "dog"]))
    with pytest.raises(ValueError, match="not a retrieval model"):
        cli.main(cli_args(["--model", str(model_dir / "vision"), *base[2:]]))
    with pytest.raises(ValueError, match="--captions"):
        cli.main(cli_args(base[:4]))
    with pytest.raises(ValueError, match="only 3 layers"):
        cli.main(cli_args([*base, "--r", "0,0,0,0,0"]))  # checked before any weights are read
    with pytest.raises(SystemExit):
        cli_args([*base, "--r", "6;4"])
    from tldr_jax.cli.main import main as tldr_jax_main

    argv = ["retrieve", "--model", str(model_dir), "--videos", str(clip_dir / "missing"), "--query", "x"]
    assert tldr_jax_main(argv) == 2
