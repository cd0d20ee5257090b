"""Cross-check the analytic FLOPs of :mod:`tldr_jax.flops` against XLA's own cost analysis.

What XLA CPU reports (``jax.jit(f).lower(...).compile().cost_analysis()``, jax 0.10; see
``benchmarks/xla_flops.py`` for the details):

* ``dot`` / ``convolution``: 2 flops per multiply-accumulate, i.e. exactly twice the fvcore MACs
  that :mod:`tldr_jax.flops` counts;
* every other op: ~1 flop per element (elementwise, reductions, gathers, sort comparisons), with
  the exact GELU at ~64 flops per element (XLA CPU expands ``erf`` into a polynomial) and
  ``exp``/``log``/``rsqrt`` in a separate ``transcendentals`` count; LayerNorm therefore costs
  XLA ~8 flops per element where fvcore counts 5.

So the comparison is split: every ``dot`` and ``convolution`` of the optimised HLO is costed by XLA
on its own and attributed to a term of the analytic model (patch embedding, qkv, attention, proj,
merge similarity, MLP, head), and each term must agree **exactly** (tolerance 0: both are exact
integer counts). The merge similarity is identified by its ``precision=HIGHEST`` and the MLP by its
width, so counting the similarity wrongly or running the MLP on unmerged tokens fails a named term.
The rest of XLA's total (elementwise work) is only bounded.

Two documented XLA behaviours:

* it rewrites a matrix-*vector* dot (a size-1 non-contracting dimension, e.g. a classifier head at
  batch 1) into multiply + reduce, which then counts as elementwise; configs with a head are
  therefore checked at batch 2;
* its module total counts a ``while`` loop body once, whatever the trip count. tldr_jax runs
  large attention (``AttentionTuning.chunk_min_elements``) as a ``lax.map`` over query chunks,
  so ``benchmarks/xla_flops.py`` multiplies every op by its loops' ``known_trip_count``; the chunked
  cases below force that path on a tiny model.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import jax
import jax.numpy as jnp
import pytest

import tldr_jax
from benchmarks.xla_flops import MatmulOp, xla_flops
from tldr_jax.configs import ArchConfig
from tldr_jax.options import AttentionTuning

cap_warning = pytest.mark.filterwarnings("ignore::tldr_jax.schedule.ScheduleCapWarning")

# Tiny configs whose widths are all different (D=48, 3D=144, F=96, heads of 24, head K=5, proj P=16),
# so that every matmul can be told apart by its shape.
TINY = dict(depth=3, num_heads=2, embed_dim=48, mlp_dim=96, num_frames=4, img_size=64)
UMT = dict(TINY, tubelet_size=1)  # 4 * 4 * 4 = 64 tokens
UMT_PROJ = dict(UMT, vision_proj_dim=16)
VIDEOMAE = dict(TINY, num_classes=5)  # tubelet 2: 2 * 4 * 4 = 32 tokens, fc_norm + head
VIVIT = dict(TINY, num_classes=5)  # CLS token (protected) + learned positions: 33 tokens

CASES = [
    # (id, arch, overrides, r, batch, method)
    ("umt-r0", "umt_b16", UMT, 0, 1, "vid_tldr"),
    ("umt-const8", "umt_b16", UMT, 8, 1, "vid_tldr"),
    ("umt-decaying", "umt_b16", UMT, (20, 6, 3), 1, "vid_tldr"),
    ("umt-fraction", "umt_b16", UMT, 0.25, 1, "vid_tldr"),
    ("umt-late-merge", "umt_b16", UMT, (0, 10), 1, "vid_tldr"),
    ("umt-capped", "umt_b16", UMT, (40, 30), 1, "vid_tldr"),
    ("umt-batch2", "umt_b16", UMT_PROJ, (20, 6, 3), 2, "vid_tldr"),
    ("umt-tome", "umt_b16", UMT, (20, 6, 3), 1, "tome"),
    ("videomae", "videomae_b", VIDEOMAE, (8, 4), 2, "vid_tldr"),
    ("videomae-tome", "videomae_b", VIDEOMAE, 0.2, 2, "tome"),
    ("vivit-cls", "vivit_b", VIVIT, 5, 2, "vid_tldr"),
]

TERMS = ("patch_embed", "qkv", "attn", "proj", "merge", "mlp", "head")


@pytest.fixture(scope="module", autouse=True)
def _batched_program():
    """Compare against the batched program: on one CPU device `apply` otherwise maps over the clips,
    and XLA's module total counts a loop body once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tldr_jax.api, "_per_clip_default", lambda video: False)
        yield


def _compile(arch: str, overrides: dict, r, batch: int, method: str, attention=None):
    params = tldr_jax.init(0, arch, **overrides)
    cfg = params.config
    video = jnp.zeros((batch, cfg.num_frames, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)

    def run(tree, video):
        # precision=None: the model's dots keep JAX's default precision (on CPU the same float32
        # arithmetic), so the merge similarity stays the one HIGHEST-precision dot (see _term).
        out = tldr_jax.apply(tldr_jax.Params(tree, cfg), video, r, method=method, precision=None,
                             attention=attention)
        return out.tokens, out.pooled, out.logits, out.embedding

    compiled = jax.jit(run).lower(params.tree, video).compile()
    return params, compiled


def _term(op: MatmulOp, cfg: ArchConfig) -> str:
    """Which analytic term a dot / convolution of the optimised HLO belongs to."""
    if op.opcode == "convolution":
        return "patch_embed"
    if op.highest_precision:
        return "merge"  # bipartite_plan's similarity is the only HIGHEST-precision dot
    if op.batched:
        return "attn"  # q k^T and attn @ v (batched over batch x heads)
    out = op.out_shape[-1]
    if out == 3 * cfg.embed_dim:
        return "qkv"
    if out == cfg.mlp_dim or op.contraction == cfg.mlp_dim:
        return "mlp"
    if out in (cfg.num_classes, cfg.vision_proj_dim):
        return "head"
    if out == cfg.embed_dim and op.contraction == cfg.embed_dim:
        return "proj"
    raise AssertionError(f"unattributed matmul {op.out_shape} <- {op.operand_shapes}: {op.text[:160]}")


def _analytic_terms(params, r, batch: int, method: str) -> dict[str, float]:
    """The analytic MACs per term (times 2: XLA's flops per MAC)."""
    comp = tldr_jax.flops_breakdown(params, r=r, batch=batch, method=method)["components"]
    terms = {k: comp[k] for k in ("patch_embed", "qkv", "proj", "merge", "mlp", "head")}
    terms["attn"] = comp["attn_scores"] + comp["attn_values"]
    return {k: 2 * v for k, v in terms.items()}


@pytest.fixture(scope="module")
def compiled_cases() -> dict[str, tuple]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)
        for case_id, arch, overrides, r, batch, method in CASES:
            params, compiled = _compile(arch, overrides, r, batch, method)
            out[case_id] = (params, xla_flops(compiled), r, batch, method)
    return out


# --------------------------------------------------------------------------------------------------
# The convention itself.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,args,macs",
    [
        (lambda a, b: a @ b, ((8, 16), (16, 4)), 8 * 16 * 4),
        (lambda a, b: jnp.einsum("bnd,bmd->bnm", a, b), ((3, 8, 16), (3, 10, 16)), 3 * 8 * 10 * 16),
        (
            lambda x, k: jax.lax.conv_general_dilated(
                x, k, (1, 16, 16), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
            ),
            ((1, 4, 32, 32, 3), (1, 16, 16, 3, 64)),
            16 * 64 * 16 * 16 * 3,
        ),
    ],
    ids=["dot", "batched-dot", "conv3d"],
)
def test_xla_counts_two_flops_per_mac(fn, args, macs):
    compiled = jax.jit(fn).lower(*(jnp.ones(s, jnp.float32) for s in args)).compile()
    counts = xla_flops(compiled)
    assert counts.total == 2 * macs
    assert counts.matmul == counts.matmul_once == 2 * macs
    assert [op.flops for op in counts.ops] == [2 * macs]


# --------------------------------------------------------------------------------------------------
# The model: every matmul term must agree exactly.
# --------------------------------------------------------------------------------------------------


@cap_warning
@pytest.mark.slow  # the XLA FLOPs walk compiles every case once (compiled_cases)
@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_matmul_terms_match_analytic_exactly(compiled_cases, case_id):
    params, counts, r, batch, method = compiled_cases[case_id]
    cfg = params.config
    measured = Counter()
    for op in counts.ops:
        assert op.flops == 2 * op.contraction * math.prod(op.out_shape), op.text[:160]
        measured[_term(op, cfg)] += op.flops
    expected = _analytic_terms(params, r, batch, method)
    for term in TERMS:
        assert measured[term] == expected[term], (
            f"{case_id}: XLA counts {measured[term]:.0f} flops for {term!r}, the analytic model "
            f"{expected[term]:.0f} (2 x MACs)"
        )
    comp = tldr_jax.flops_breakdown(params, r=r, batch=batch, method=method)
    assert counts.matmul == 2 * (comp["total"] - comp["components"]["norm"])


@cap_warning
@pytest.mark.slow  # the XLA FLOPs walk compiles every case once (compiled_cases)
def test_merging_changes_exactly_the_expected_terms(compiled_cases):
    """Merging must shrink qkv/attn/proj/MLP by the schedule and add the similarity matmul only."""
    params, base, *_ = compiled_cases["umt-r0"]
    _, merged, r, batch, method = compiled_cases["umt-decaying"]
    cfg = params.config
    by_term = lambda c: Counter({t: 0.0 for t in TERMS}) + Counter(
        {t: sum(o.flops for o in c.ops if _term(o, cfg) == t) for t in TERMS}
    )
    b, m = by_term(base), by_term(merged)
    assert b["merge"] == 0 and m["merge"] > 0
    assert m["patch_embed"] == b["patch_embed"]
    sched = tldr_jax.schedule(params, r)
    d, f = cfg.embed_dim, cfg.mlp_dim
    # MLP runs on the tokens *leaving* each block (after the merge).
    assert m["mlp"] == 2 * sum(2 * n * d * f for n in sched.tokens[1:])
    # The similarity is (ceil(N/2) x D) @ (D x floor(N/2)) in merging layers only.
    sim = [((n + 1) // 2) * (n // 2) * d for n, c in zip(sched.tokens, sched.r) if c]
    assert m["merge"] == 2 * sum(sim)


@pytest.mark.parametrize("chunk", [16, 24])
def test_chunked_attention_counts_every_chunk(chunk):
    """Query-chunked attention (``lax.map``): XLA's module total sees one chunk; the per-op walk with
    trip counts sees all of them, including the padded rows of a last partial chunk."""
    overrides = dict(UMT, depth=2, embed_dim=40, num_heads=2, mlp_dim=88)
    # Force the chunked path, all heads in each chunk.
    tuning = AttentionTuning(chunk_min_elements=1, query_chunk=chunk, cpu_head_rows=None)
    params, compiled = _compile("umt_b16", overrides, 0, 1, "vid_tldr", attention=tuning)
    counts = xla_flops(compiled)
    looped = [op for op in counts.ops if op.executions > 1]
    if not looped:
        pytest.skip("this tldr_jax version does not chunk attention (no loop in the HLO)")
    cfg = params.config
    n = cfg.num_tokens
    padded = -(-n // chunk) * chunk
    expected = _analytic_terms(params, 0, 1, "vid_tldr")
    attn = sum(op.flops * op.executions for op in counts.ops if _term(op, cfg) == "attn")
    assert attn == expected["attn"] * padded / n  # padded query rows are computed too
    assert all(op.executions == -(-n // chunk) for op in looped)
    others = {t: sum(op.flops * op.executions for op in counts.ops if _term(op, cfg) == t) for t in TERMS}
    assert all(others[t] == expected[t] for t in TERMS if t != "attn")
    # XLA's own total counts one chunk only.
    assert counts.matmul_once < counts.matmul
    assert counts.total < counts.matmul


@cap_warning
@pytest.mark.slow  # the XLA FLOPs walk compiles every case once (compiled_cases)
@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_elementwise_remainder_is_bounded(compiled_cases, case_id):
    """XLA's non-matmul flops (softmax, GELU, LayerNorm, merge bookkeeping) are positive and bounded.

    With ~64 flops per exact-GELU element and ~10 per attention-logit element, a generous bound is
    100 flops per element of the per-block activations ``H*N^2 + N*F + N*D``.
    """
    params, counts, r, batch, _ = compiled_cases[case_id]
    cfg = params.config
    sched = tldr_jax.schedule(params, r)
    elements = sum(
        cfg.num_heads * n_in**2 + n_out * cfg.mlp_dim + n_in * cfg.embed_dim
        for n_in, n_out in zip(sched.tokens[:-1], sched.tokens[1:])
    )
    assert counts.total > counts.matmul
    assert counts.other <= 100 * batch * elements
    # GELU alone: at least one flop per MLP hidden element.
    assert counts.other >= batch * sum(n * cfg.mlp_dim for n in sched.tokens[1:])
    # Softmax exps are transcendentals: at least one per attention logit.
    assert counts.transcendentals >= batch * cfg.num_heads * sum(n**2 for n in sched.tokens[:-1])


@pytest.mark.parametrize("chunk", [16, 24])
def test_chunks_of_one_head_at_a_time_count_every_head(chunk):
    """CPU chunks that attend one head at a time (a scan over the heads inside the chunk loop): the
    per-op walk multiplies the nested trip counts (chunks x heads), so the attention products add up
    to the analytic count, padded query rows included, and nothing else runs in the loops."""
    overrides = dict(UMT, depth=2, embed_dim=40, num_heads=2, mlp_dim=88)
    tuning = AttentionTuning(chunk_min_elements=1, query_chunk=chunk, cpu_head_rows=512)
    params, compiled = _compile("umt_b16", overrides, 0, 1, "vid_tldr", attention=tuning)
    counts = xla_flops(compiled)
    cfg = params.config
    n = cfg.num_tokens
    chunks = -(-n // chunk)
    looped = [op for op in counts.ops if op.executions > 1]
    assert looped and all(op.executions == chunks * cfg.num_heads for op in looped)
    expected = _analytic_terms(params, 0, 1, "vid_tldr")
    assert sum(op.flops * op.executions for op in looped) == expected["attn"] * chunks * chunk / n
    assert all(_term(op, cfg) != "attn" for op in counts.ops if op.executions == 1)
