"""How fast a forward could possibly run on this machine: a lower bound on its time from measured rates.

A speed target is only worth chasing where the hardware allows it. :func:`lower_bound` adds up, over a
schedule's layers (:func:`tldr_jax.flops.flops_breakdown`), the time each kind of unavoidable work
would take at the best rate this machine showed for that kind of work in *either* framework:

* the linear layers (tubelet embedding, ``qkv``, ``proj``, MLP) at the GEMM peak;
* ``QK^T`` and ``PV`` of every layer at the best rate measured for that layer's token count;
* one exponential per attention logit (``heads * N^2`` per layer; the softmax needs at least that).

LayerNorm, GELU, the softmax's reductions, the saliency and the merge count as free, and nothing
overlaps, so no program computing the same function can be faster: the largest speed-up over a
measured baseline is ``baseline / bound``. :func:`probe_rates` measures the rates (best of a few runs,
JAX and PyTorch, each precision); ``benchmarks.precision_bench`` reports the bound next to its targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from benchmarks.timing import call_times

__all__ = ["LINEAR_PARTS", "lower_bound", "probe_rates"]

#: The ``flops_breakdown`` components that are GEMMs (or a convolution run as one).
LINEAR_PARTS = ("patch_embed", "qkv", "proj", "mlp")


def lower_bound(breakdown: Mapping[str, Any], heads: int, rates: Mapping[str, Any]) -> dict[str, float]:
    """Seconds below which a forward of ``breakdown``'s schedule cannot run at ``rates``.

    Args:
      breakdown: :func:`tldr_jax.flops.flops_breakdown`'s result (multiply-adds, 2 FLOP each).
      heads: attention heads per layer.
      rates: ``{"gemm": GFLOP/s, "qk": {N: GFLOP/s}, "pv": {N: GFLOP/s}, "exp": G elements/s}``, with
        a ``qk`` / ``pv`` rate for every layer's input token count.

    Returns:
      ``{"linear_s", "qk_s", "pv_s", "exp_s", "total_s"}``.

    Raises:
      KeyError: naming the token count whose attention rate is missing.
    """
    linear = sum(2 * breakdown["components"][k] for k in LINEAR_PARTS)
    out = {"linear_s": linear / (rates["gemm"] * 1e9), "qk_s": 0.0, "pv_s": 0.0, "exp_s": 0.0}
    for layer in breakdown["layers"]:
        n = int(layer["tokens_in"])
        for part, key in (("attn_scores", "qk"), ("attn_values", "pv")):
            if n not in rates[key]:
                raise KeyError(f"no {key} rate for N = {n} tokens (have {sorted(rates[key])}): "
                               f"probe every layer's token count")
            out[key + "_s"] += 2 * layer[part] / (rates[key][n] * 1e9)
        out["exp_s"] += heads * n * n * breakdown["batch"] / (rates["exp"] * 1e9)
    out["total_s"] = sum(out.values())
    return out


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    return min(call_times(fn, repeats))


def probe_rates(tokens: Iterable[int], heads: int, head_dim: int, precision: str, *, chunk: int = 128,
                repeats: int = 5) -> dict[str, Any]:
    """Best measured ``QK^T`` / ``PV`` rates per token count and exponential rate, JAX or PyTorch.

    Args:
      tokens: the token counts to probe (each layer's input count).
      heads, head_dim: attention shape (batch 1).
      precision: ``"f32"`` or ``"bf16"`` (bfloat16 operands; JAX accumulates in float32, PyTorch
        returns bfloat16 as under autocast).
      chunk: query rows of the chunked JAX ``QK^T`` probe (cache-resident logits).
      repeats: timed calls per probe (the best counts).

    Returns:
      ``{"qk": {N: GFLOP/s}, "pv": {N: GFLOP/s}, "exp": G elements/s, "probes": {name: rate}}``:
      each rate the best of its probes (``probes`` has them all).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    if precision not in ("f32", "bf16"):
        raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")
    low = jnp.bfloat16 if precision == "bf16" else jnp.float32
    tlow = torch.bfloat16 if precision == "bf16" else torch.float32
    rng = np.random.default_rng(0)
    probes: dict[str, float] = {}
    out: dict[str, Any] = {"qk": {}, "pv": {}}
    for n in sorted({int(t) for t in tokens}):
        x = rng.standard_normal((1, heads, n, head_dim), np.float32)
        found = _attention_probes(jnp.asarray(x).astype(low), torch.from_numpy(x).to(tlow), chunk, repeats)
        probes.update({f"{k} N={n}": v for k, v in found.items()})
        for key in ("qk", "pv"):
            out[key][n] = max(v for k, v in found.items() if k.startswith(key + " "))
    n = max(int(t) for t in tokens)
    x = rng.standard_normal((heads, min(chunk, n), n), np.float32)
    jx, tx = jnp.asarray(x).astype(low), torch.from_numpy(x).to(tlow)
    buf = torch.empty_like(tx)
    jexp = jax.jit(lambda a: jnp.exp(a.astype(jnp.float32)).astype(a.dtype))
    probes[f"exp jax {x.shape}"] = x.size / _best(lambda: jexp(jx).block_until_ready(), repeats) / 1e9
    probes[f"exp torch {x.shape}"] = x.size / _best(lambda: torch.exp(tx, out=buf), repeats) / 1e9
    out["exp"] = max(v for k, v in probes.items() if k.startswith("exp "))
    out["probes"] = probes
    return out


def _attention_probes(jx: Any, tx: Any, chunk: int, repeats: int, head_rows: int = 512) -> dict[str, float]:
    """GFLOP/s of ``QK^T`` and ``PV`` for ``(1, H, N, Dh)`` queries = keys = values: JAX on the whole
    layer, on a ``chunk``-row block of queries (all heads) and on one head's ``head_rows``-row block
    (the blocks tldr_jax's CPU attention runs), and PyTorch on the whole layer."""
    import jax
    import jax.numpy as jnp
    import torch

    acc = {"preferred_element_type": jnp.float32}
    qk = jax.jit(lambda a, b: jnp.einsum("bhnd,bhmd->bhnm", a, b, **acc))
    pv = jax.jit(lambda p, v: jnp.einsum("bhnm,bhmd->bhnd", p, v, **acc))
    _, heads, n, head_dim = jx.shape
    rows, one = min(chunk, n), min(head_rows, n)
    jq, jp, tp = jx[:, :, :rows], qk(jx, jx).astype(jx.dtype), torch.matmul(tx, tx.transpose(-1, -2))
    hq, hk, hp = jx[:, :1, :one], jx[:, :1], jp[:, :1, :one]
    seconds = {
        "qk jax": _best(lambda: qk(jx, jx).block_until_ready(), repeats),
        f"qk jax {rows}-row chunk": n / rows * _best(lambda: qk(jq, jx).block_until_ready(), repeats),
        f"qk jax one head x {one} rows": heads * n / one
        * _best(lambda: qk(hq, hk).block_until_ready(), repeats),
        "qk torch": _best(lambda: torch.matmul(tx, tx.transpose(-1, -2)), repeats),
        "pv jax": _best(lambda: pv(jp, jx).block_until_ready(), repeats),
        f"pv jax one head x {one} rows": heads * n / one
        * _best(lambda: pv(hp, hk).block_until_ready(), repeats),
        "pv torch": _best(lambda: torch.matmul(tp, tx), repeats),
    }
    flop = 2 * heads * n * n * head_dim
    return {name: flop / t / 1e9 for name, t in seconds.items()}
