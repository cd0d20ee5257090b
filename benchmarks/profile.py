"""Where the time goes in a merging block: its pieces timed one by one, each jitted on its own.

The inputs of every piece are read from one run of the block itself (its intermediates: the
attention branch, the sharpness, the saliency, the plan), and the pieces are the functions
:func:`tldr_jax.merge.merge_step` is made of, so the profile measures the model's own code.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from benchmarks.plan import ModelSpec
from benchmarks.timing import blocking, median_time

__all__ = ["profile_blocks"]


def profile_blocks(spec: ModelSpec, label: str, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Time the pieces of each distinct block of a schedule as separately jitted functions.

    Pieces: ``attn`` (norm1 + attention + residual, with the ``log(size)`` bias where sizes exist),
    ``saliency_attn`` (the extra cost of also computing the pre-bias softmax sharpness: the same
    piece with ``need="sharpness"`` minus ``attn``), ``saliency`` (min-max / background / sharpening),
    ``match`` (bipartite plan: normalise, similarity matmul, argmax, argsort, gathers), ``merge``
    (``merge_wavg``: gathers + scatter-add of tokens and sizes), ``merge_step`` (the three together, as
    the block runs them) and ``mlp`` (norm2 + MLP + residual on the merged tokens). ``block`` is the
    whole block jitted as one function.
    """
    import jax
    import jax.numpy as jnp

    import tldr_jax
    from tldr_jax.api import build
    from tldr_jax.merge import bipartite_plan, merge_step, merge_wavg
    from tldr_jax.models import MergeSpec, TokenState
    from tldr_jax.saliency import saliency_from_sharpness

    cfg = spec.config()
    tree = tldr_jax.init(0, spec.arch, **dict(spec.overrides)).tree
    sched = spec.schedule(label)
    key = jax.random.key(0)

    def blockfn(fn: Callable[..., Any]) -> Callable[..., Any]:
        @jax.jit
        def run(tree, *args):
            return fn(build(tldr_jax.Params(tree, cfg)).blocks_0, *args)

        return lambda *args: jax.block_until_ready(run(tree, *args))

    def whole(block, x, size, *, r, intermediates=False):
        state, aux = block(TokenState(x, size), MergeSpec(r=r))
        return (state.x, state.size, aux) if intermediates else (state.x, state.size)

    def attention(block, x, log_size, *, need):
        h, stats = block.attn(block.norm1(x), log_size, need)
        return x + h, stats

    attn = {need: blockfn(functools.partial(attention, need=need)) for need in (None, "sharpness")}
    mlp = blockfn(lambda b, x: x + b.mlp(b.norm2(x)))
    sal_fn = blocking(jax.jit(saliency_from_sharpness))
    merge_fn = blocking(jax.jit(merge_wavg))

    rows = []
    seen = set()
    for layer, (n_in, r) in enumerate(zip(sched.tokens[:-1], sched.r)):
        has_size = any(sched.r[:layer])
        kind = (n_in, r, has_size)
        if kind in seen:
            continue
        seen.add(kind)
        x = jax.random.normal(jax.random.fold_in(key, layer), (1, n_in, cfg.embed_dim), jnp.float32)
        size = None
        if has_size:
            size = 1.0 + jax.random.uniform(jax.random.fold_in(key, 100 + layer), (1, n_in, 1))
        log_size = jnp.log(size[..., 0]) if size is not None else None
        row: dict[str, Any] = {"layer": layer, "tokens_in": n_in, "r": r, "prop_attn_bias": has_size}
        row["attn"] = median_time(functools.partial(attn[None], x, log_size), repeats)
        block = blockfn(functools.partial(whole, r=r))
        if r:
            sharp_attn = functools.partial(attn["sharpness"], x, log_size)
            row["attn_with_sharpness"] = median_time(sharp_attn, repeats)
            row["saliency_attn"] = max(row["attn_with_sharpness"] - row["attn"], 0.0)
            _, _, aux = blockfn(functools.partial(whole, r=r, intermediates=True))(x, size)
            # The block's own intermediates feed the pieces below.
            x2, sharp, sal, plan = x + aux["attn"], aux["sharpness"], aux["saliency"], aux["plan"]
            row["saliency"] = median_time(functools.partial(sal_fn, sharp), repeats)
            plan_fn = blocking(jax.jit(functools.partial(bipartite_plan, r=r)))
            row["match"] = median_time(functools.partial(plan_fn, x2, saliency=sal), repeats)
            row["merge"] = median_time(functools.partial(merge_fn, plan, x2, size), repeats)
            step_fn = blocking(jax.jit(functools.partial(merge_step, r=r)))
            step = functools.partial(step_fn, x2, sharpness=sharp, size=size)
            row["merge_step"] = median_time(step, repeats)
            row["mlp"] = median_time(functools.partial(mlp, merge_fn(plan, x2, size)[0]), repeats)
        else:
            row["mlp"] = median_time(functools.partial(mlp, x), repeats)
        row["block"] = median_time(functools.partial(block, x, size), repeats)
        unmerged = blockfn(functools.partial(whole, r=0))
        row["block_without_merge"] = median_time(functools.partial(unmerged, x, size), repeats)
        if r:
            overhead = row["saliency_attn"] + row["saliency"] + row["match"] + row["merge"]
            row["merge_overhead"] = overhead
            row["merge_overhead_fraction"] = overhead / row["block"]
        row["loadavg_1m"] = os.getloadavg()[0]
        rows.append(row)
        log(
            f"  layer {layer} ({n_in} tokens, r={r}): block {row['block'] * 1e3:.1f} ms"
            + (f", merge overhead {row['merge_overhead_fraction']:.1%}" if r else "")
        )
    total_block_s = 0.0
    by_kind = {(rw["tokens_in"], rw["r"], rw["prop_attn_bias"]): rw for rw in rows}
    for layer, (n_in, r) in enumerate(zip(sched.tokens[:-1], sched.r)):
        has_size = any(sched.r[:layer])
        total_block_s += by_kind[(n_in, r, has_size)]["block"]
    overhead_s = sum(rw.get("merge_overhead", 0.0) for rw in rows)
    return {
        "model": spec.key,
        "schedule": label,
        "batch": 1,
        "repeats": repeats,
        "layers": rows,
        "sum_of_blocks_s": total_block_s,
        "merge_overhead_s": overhead_s,
        "merge_overhead_fraction_of_encoder": overhead_s / total_block_s if total_block_s else None,
    }
