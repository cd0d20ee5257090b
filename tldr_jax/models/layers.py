"""The layers of a block: tubelet embedding, attention with the vid-TLDR/ToMe statistics, MLP."""

from __future__ import annotations

import functools
import math
from typing import Literal

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from tldr_jax.configs import ArchConfig
from tldr_jax.numerics import acc_dtype, dot_kwargs, is_low_precision
from tldr_jax.options import AttentionTuning
from tldr_jax.saliency import sharpness_from_mean

Array = jax.Array
Need = Literal[None, "sharpness", "keys"]

__all__ = [
    "DEFAULT_TUNING", "Attention", "Mlp", "PatchEmbed", "attend_blocked", "chunking", "fused_attention",
    "linear", "softmax_values",
]

#: The attention tuning of a call that names none (:class:`~tldr_jax.options.AttentionTuning`'s defaults).
DEFAULT_TUNING = AttentionTuning()


class PatchEmbed(nnx.Module):
    """Tubelet embedding: a Conv3D with stride = kernel = ``(tubelet, patch, patch)``."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nnx.Conv(
            cfg.in_chans, cfg.embed_dim, kernel_size=k, strides=k, padding="VALID", rngs=rngs
        )

    def __call__(self, video: Array) -> Array:
        """``(B, T, H, W, C)`` -> ``(B, T' * H' * W', D)`` in (t, h, w) order.

        With a bfloat16 / float16 kernel the convolution runs in that dtype with float32 accumulation
        and returns float32 (the residual stream's dtype in low precision).
        """
        kernel = self.proj.kernel[...]
        if not is_low_precision(kernel.dtype):
            return einops.rearrange(self.proj(video), "b t h w d -> b (t h w) d")
        y = jax.lax.conv_general_dilated(
            video.astype(kernel.dtype), kernel, window_strides=self.proj.strides, padding="VALID",
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), preferred_element_type=jnp.float32,
        )
        if self.proj.bias is not None:
            y = y + self.proj.bias[...].astype(jnp.float32)
        return einops.rearrange(y, "b t h w d -> b (t h w) d")


def linear(layer: nnx.Linear, x: Array) -> Array:
    """``layer(x)``: ``(..., Din)`` -> ``(..., Dout)``.

    With a bfloat16 / float16 kernel (``apply(dtype=...)`` casts only the kernels), ``x`` is cast to the
    kernel's dtype, the product accumulates in float32 and the float32 bias is added: the result is
    float32, and the caller stores it in the low precision where that is accurate enough. Any other
    kernel runs ``layer`` itself, unchanged.
    """
    kernel = layer.kernel[...]
    if not is_low_precision(kernel.dtype):
        return layer(x)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    y = jax.lax.dot_general(x.astype(kernel.dtype), kernel, dims, preferred_element_type=jnp.float32)
    if layer.bias is not None:
        y = y + layer.bias[...].astype(jnp.float32)
    return y


class Attention(nnx.Module):
    """Multi-head self-attention with proportional attention and the statistics a merge needs.

    How the attention is computed (query chunks for memory, CPU cache blocking one head at a time,
    key blocks, the fused kernel) is the :class:`~tldr_jax.options.AttentionTuning` value each call
    receives; :func:`chunking` turns it into the plan of one layer. Every plan gives the unchunked
    result up to float rounding.
    """

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = cfg.head_dim**-0.5
        self.qkv = nnx.Linear(d, 3 * d, use_bias=cfg.qkv_bias == "qkv", rngs=rngs)
        if cfg.qkv_bias == "qv":
            self.q_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
            self.v_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.proj = nnx.Linear(d, d, rngs=rngs)

    def __call__(
        self,
        x: Array,
        log_size: Array | None = None,
        need: Need = None,
        tuning: AttentionTuning = DEFAULT_TUNING,
        key_mask: Array | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Attend.

        Args:
          x: ``(B, N, D)``.
          log_size: ``(B, N)`` proportional-attention bias ``log(size)`` added to the logits, or None.
          need: ``"sharpness"`` also returns the ``(B, N)`` vid-TLDR sharpness of the softmax taken
            *before* the size bias; ``"keys"`` returns ToMe's metric, the ``(B, N, Dh)`` keys averaged
            over heads.
          tuning: the chunk, block and kernel settings (static).
          key_mask: ``(N,)`` additive key mask (0 or ``-inf``) on the logits of both softmaxes (padded
            tokens, :attr:`AttentionTuning.token_bucket`), or None.

        Returns:
          ``(out (B, N, D), stats)``: ``stats`` holds ``"sharpness"`` or ``"keys"`` as asked (else empty).

        When ``B * H * N * N`` exceeds the plan's threshold (:func:`chunking`) the queries are
        processed in static chunks, so no ``(B, H, N, N)`` tensor is ever alive. Each row still sums
        over all its keys in the same order, so the chunked result equals the unchunked one up to float
        rounding (XLA fuses the two differently).
        """
        qkv = linear(self.qkv, x)  # float32 in low precision
        if hasattr(self, "q_bias"):
            zeros = jnp.zeros_like(self.v_bias[...])
            qkv = qkv + jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(qkv.dtype)
        q, k, v = einops.rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q = q * self.scale
        keys = k
        low = self.qkv.kernel[...].dtype
        if is_low_precision(low):  # the attention products' operands in the low precision
            q, k, v = q.astype(low), k.astype(low), v.astype(low)
        bias = None if log_size is None else log_size[:, None, None, :].astype(acc_dtype(q.dtype))
        block = tuning.key_block
        rows, threshold, after, per_head = chunking(tuning, need)
        if need is None and _use_fused(tuning.fused, q, rows, threshold):
            out, sharp = fused_attention(q, k, v, bias, key_mask=key_mask), None
        elif block is not None and q.shape[2] > block:
            out, sharp = attend_blocked(
                q, k, v, bias, need_sharpness=need == "sharpness", block=block, key_mask=key_mask
            )
        else:
            out, sharp = _attend(
                q,
                k,
                v,
                bias,
                need_sharpness=need == "sharpness",
                query_chunk=rows,
                chunk_min_elements=threshold,
                normalise_after=after,
                per_head=per_head,
                key_mask=key_mask,
            )
        stats = {"sharpness": sharp} if need == "sharpness" else {}
        if need == "keys":
            stats["keys"] = jnp.mean(keys, axis=1)
        return linear(self.proj, einops.rearrange(out, "b h n d -> b n (h d)")), stats


def chunking(tuning: AttentionTuning, need: Need, backend: str | None = None) -> tuple[int, int, bool, bool]:
    """The chunk plan of a layer that needs ``need`` under ``tuning``.

    Returns ``(rows per chunk, threshold in elements of (B, H, N, N), normalise after PV, one head at a
    time)``; the last two apply to the chunks only. On CPU (``backend``, default JAX's) with
    ``tuning.cpu_blocking`` the lower of the memory guard and the CPU blocking threshold wins, and with
    it the CPU row counts.
    """
    rows, threshold = tuning.query_chunk, tuning.chunk_min_elements
    cpu = (backend or jax.default_backend()) == "cpu" and tuning.cpu_blocking
    per_head = cpu and tuning.cpu_head_rows is not None
    if cpu and tuning.cpu_block_min_elements < threshold:
        threshold = tuning.cpu_block_min_elements
        if per_head:
            rows = tuning.cpu_head_rows
        else:
            rows = tuning.cpu_block_rows_sharpness if need == "sharpness" else tuning.cpu_block_rows
    return rows, threshold, cpu and tuning.normalise_after_values and need != "sharpness", per_head


def _attend(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None,
    *,
    need_sharpness: bool,
    query_chunk: int,
    chunk_min_elements: int,
    normalise_after: bool = False,
    per_head: bool = False,
    key_mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """Softmax attention with an optional key bias and the pre-bias vid-TLDR sharpness.

    Args:
      q, k, v: ``(B, H, N, Dh)``; ``q`` already scaled.
      bias: ``(B or 1, 1, 1, N)`` additive ``log(size)`` bias on the logits, or None.
      need_sharpness: also return the ``(B, N)`` sharpness of the softmax *before* the bias.
      query_chunk, chunk_min_elements: process ``query_chunk`` query rows at a time when
        ``B * H * N * N`` exceeds ``chunk_min_elements``.
      normalise_after: in those chunks, without sharpness, compute the output with
        :func:`softmax_values` (normalised after the value product).
      per_head: in those chunks, attend one head at a time (:func:`_heads_one_by_one`).
      key_mask: ``(N,)`` additive mask on the logits of both softmaxes, or None.

    Returns:
      ``(out (B, H, N, Dh), sharpness (B, N) or None)``.
    """
    bsz, heads, n, dh = q.shape
    if bsz * heads * n * n <= chunk_min_elements or query_chunk >= n:
        return _all_heads(
            q, k=k, v=v, bias=bias, need_sharpness=need_sharpness, after=False, key_mask=key_mask
        )
    num = math.ceil(n / query_chunk)  # static chunk count; equal chunks, a multiple of 8 rows
    chunk = 8 * math.ceil(math.ceil(n / num) / 8)
    num = math.ceil(n / chunk)
    q_pad = jnp.pad(q, ((0, 0), (0, 0), (0, num * chunk - n), (0, 0)))  # padded rows dropped below
    q_chunks = jnp.moveaxis(q_pad.reshape(bsz, heads, num, chunk, dh), 2, 0)
    if per_head:  # keys and values heads first, once, for the scan over heads
        rows_of, k, v = _heads_one_by_one, jnp.moveaxis(k, 1, 0), jnp.moveaxis(v, 1, 0)
    else:
        rows_of = _all_heads
    chunk_rows = functools.partial(rows_of, k=k, v=v, bias=bias, need_sharpness=need_sharpness,
                                   after=normalise_after, key_mask=key_mask)
    out, sharp = jax.lax.map(jax.checkpoint(chunk_rows), q_chunks)  # (num, B, H, C, Dh), (num, B, C)
    out = jnp.moveaxis(out, 0, 2).reshape(bsz, heads, num * chunk, dh)[:, :, :n]
    sharp = None if sharp is None else jnp.moveaxis(sharp, 0, 1).reshape(bsz, num * chunk)[:, :n]
    return out, sharp


def _block(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None,
    *,
    need_sharpness: bool,
    after: bool = False,
    key_mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """One block of queries against all keys.

    Args:
      q: ``(B, h, C, Dh)`` scaled queries; ``k``, ``v``: ``(B, h, N, Dh)``; ``bias``: ``(B or 1, 1, 1, N)``
        or None.
      need_sharpness: also return the head sum of the softmax taken *before* the bias.
      after: without sharpness, normalise after the value product (:func:`softmax_values`).
      key_mask: ``(N,)`` additive mask added to the logits (both softmaxes), or None.

    Returns:
      ``(out (B, h, C, Dh) in v's dtype, (B, C, N) sum over the h heads of the pre-bias softmax, or None)``.
    """
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k, **dot_kwargs(k.dtype))  # float32 in low precision
    if key_mask is not None:
        logits = logits + key_mask.astype(logits.dtype)
    if after and not need_sharpness:
        return softmax_values(logits, bias, v), None
    probs = jax.nn.softmax(logits.astype(acc_dtype(logits.dtype)), axis=-1)
    head_sum = jnp.sum(probs, axis=1) if need_sharpness else None
    if bias is not None:  # proportional attention; the sharpness is taken before the bias
        probs = jax.nn.softmax((logits + bias).astype(acc_dtype(logits.dtype)), axis=-1)
    elif need_sharpness:
        # Same values, computed a second time on purpose: when one softmax feeds both the head sum
        # and the value product, XLA CPU fuses them badly (the fused program is several times
        # slower); the barrier keeps the two softmaxes apart.
        barrier = jax.lax.optimization_barrier(logits)
        probs = jax.nn.softmax(barrier.astype(acc_dtype(logits.dtype)), axis=-1)
    out = jnp.einsum("bhnm,bhmd->bhnd", probs.astype(v.dtype), v, **dot_kwargs(v.dtype))
    return out.astype(v.dtype), head_sum


def _all_heads(
    q: Array, *, k: Array, v: Array, bias: Array | None, need_sharpness: bool, after: bool,
    key_mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """:func:`_block` over all heads at once, with the sharpness of the head-mean pre-bias softmax.

    Args:
      q: ``(B, H, C, Dh)`` scaled queries; ``k``, ``v``: ``(B, H, N, Dh)``.
      bias, need_sharpness, after, key_mask: as :func:`_block`.

    Returns:
      ``(out (B, H, C, Dh), sharpness (B, C) or None)``.
    """
    out, head_sum = _block(q, k, v, bias, need_sharpness=need_sharpness, after=after, key_mask=key_mask)
    return out, None if head_sum is None else sharpness_from_mean(head_sum / q.shape[1])


def _heads_one_by_one(
    q: Array, *, k: Array, v: Array, bias: Array | None, need_sharpness: bool, after: bool,
    key_mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """:func:`_block` for each head in turn (``lax.scan``): a ``(C, N)`` block of logits at a time.

    Args:
      q: ``(B, H, C, Dh)`` scaled queries; ``k``, ``v``: ``(H, B, N, Dh)`` (heads first).
      bias, need_sharpness, after, key_mask: as :func:`_block`.

    Returns:
      ``(out (B, H, C, Dh), sharpness (B, C) or None)``; the head mean of the pre-bias softmax is
      summed head by head in order, as ``jnp.mean`` over the head axis sums it.
    """
    bsz, heads, rows, _ = q.shape

    def head(total: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        qh, kh, vh = (a[:, None] for a in xs)  # (B, 1, ., Dh)
        out, head_sum = _block(
            qh, kh, vh, bias, need_sharpness=need_sharpness, after=after, key_mask=key_mask
        )
        return (total if head_sum is None else total + head_sum), out[:, 0]

    acc = acc_dtype(q.dtype)
    init = jnp.zeros((bsz, rows, k.shape[2]) if need_sharpness else (), acc)
    total, out = jax.lax.scan(head, init, (jnp.moveaxis(q, 1, 0), k, v))
    sharp = sharpness_from_mean(total / heads) if need_sharpness else None
    return jnp.moveaxis(out, 0, 1), sharp


def softmax_values(logits: Array, bias: Array | None, v: Array) -> Array:
    """``softmax(logits + bias) @ v``, normalised after the value product.

    Args:
      logits: ``(B, H, C, N)`` scaled ``QK^T`` (float32 in low precision).
      bias: ``(B or 1, 1, 1, N)`` additive ``log(size)`` bias, or None.
      v: ``(B, H, N, Dh)`` values.

    Returns:
      ``(B, H, C, Dh)`` in ``v``'s dtype: ``(e @ v) / sum(e)`` with ``e = exp(s - max s)`` rounded to
      ``v``'s dtype (the normaliser sums the very weights that multiply ``v``, and XLA computes the
      exponentials once for both), ``s = logits + bias`` in float32 / float64. The same function as the
      softmax followed by ``PV`` up to float rounding, with one pass over the ``(C, N)`` weights fewer
      (faster in the CPU chunks; docs/guides/scale_precision.md), so it serves the layers that need no
      sharpness there.
    """
    acc = acc_dtype(logits.dtype)
    s = logits.astype(acc) if bias is None else (logits + bias).astype(acc)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))).astype(v.dtype)
    den = jnp.sum(e.astype(acc), axis=-1, keepdims=True)
    out = jnp.einsum("bhnm,bhmd->bhnd", e, v, **dot_kwargs(v.dtype))
    return (out / den).astype(v.dtype)


def _use_fused(fused: bool | None, q: Array, query_chunk: int, chunk_min_elements: int) -> bool:
    """Whether a statistic-free layer calls :func:`fused_attention` (``AttentionTuning.fused``)."""
    if fused is not None:
        return bool(fused)
    bsz, heads, n, _ = q.shape
    chunked = bsz * heads * n * n > chunk_min_elements and query_chunk < n
    return is_low_precision(q.dtype) and jax.default_backend() == "gpu" and not chunked


def fused_attention(
    q: Array, k: Array, v: Array, bias: Array | None, *, key_mask: Array | None = None
) -> Array:
    """Softmax attention through :func:`jax.nn.dot_product_attention` (no statistics).

    Args:
      q, k, v: ``(B, H, N, Dh)``; ``q`` already scaled.
      bias: ``(B or 1, 1, 1, N)`` additive ``log(size)`` bias on the logits, or None.
      key_mask: ``(N,)`` additive key mask, or None.

    Returns:
      ``(B, H, N, Dh)``, equal to :func:`_attend`'s output up to float rounding.
    """
    def heads_last(a: Array) -> Array:
        return einops.rearrange(a, "b h n d -> b n h d")

    if key_mask is not None:
        bias = key_mask if bias is None else bias + key_mask
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], 1, 1, k.shape[2])).astype(q.dtype)
    out = jax.nn.dot_product_attention(heads_last(q), heads_last(k), heads_last(v), bias=bias, scale=1.0)
    return einops.rearrange(out, "b n h d -> b h n d")


def attend_blocked(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None,
    *,
    need_sharpness: bool,
    block: int = 512,
    key_mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """Softmax attention over blocks of ``block`` keys with an online softmax (no ``(B, H, N, N)`` tensor).

    Args:
      q, k, v: ``(B, H, N, Dh)``; ``q`` already scaled.
      bias: ``(B or 1, 1, 1, N)`` additive ``log(size)`` bias on the logits, or None.
      need_sharpness: also return the ``(B, N)`` vid-TLDR sharpness (negative entropy of the
        head-averaged softmax *before* the bias). The first pass over the key blocks also keeps each
        head's pre-bias row maximum and normaliser; a second pass recomputes each block's logits,
        averages the normalised probabilities over heads and sums ``A log A``.
      block: keys per block (keys are padded to a multiple; padded keys get probability 0).
      key_mask: ``(N,)`` additive key mask on both softmaxes, or None.

    Returns:
      ``(out (B, H, N, Dh), sharpness (B, N) or None)``; equal to :func:`_attend` up to float rounding
      (the softmax normalisers are summed block by block).
    """
    bsz, heads, n, dh = q.shape
    acc = acc_dtype(q.dtype)
    num = math.ceil(n / block)
    pad = num * block - n
    mask = jnp.where(jnp.arange(num * block) < n, 0.0, -jnp.inf).astype(acc)  # padded keys: -inf
    if key_mask is not None:
        mask = mask + jnp.pad(key_mask.astype(acc), (0, pad))

    def blocks(a: Array) -> Array:  # (B, H, N, Dh) -> (num, B, H, block, Dh)
        a = jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0)))
        return einops.rearrange(a, "b h (k m) d -> k b h m d", m=block)

    full_bias = mask if bias is None else jnp.pad(bias.astype(acc), ((0, 0),) * 3 + ((0, pad),)) + mask
    bias_b = einops.rearrange(jnp.broadcast_to(full_bias, full_bias.shape[:-1] + (num * block,)),
                              "... (k m) -> k ... m", m=block)
    mask_b = einops.rearrange(mask, "(k m) -> k m", m=block)
    kb, vb = blocks(k), blocks(v)

    def logits_of(kk: Array) -> Array:  # (B, H, N, block) float32 logits of one key block
        return jnp.einsum("bhnd,bhmd->bhnm", q, kk, **dot_kwargs(kk.dtype)).astype(acc)

    def online(stats: tuple[Array, Array], s: Array) -> tuple[tuple[Array, Array], Array, Array]:
        top, den = stats  # running row maximum and normaliser
        top_new = jnp.maximum(top, jnp.max(s, axis=-1, keepdims=True))
        p = jnp.exp(s - top_new)
        scale = jnp.exp(top - top_new)
        return (top_new, den * scale + jnp.sum(p, axis=-1, keepdims=True)), p, scale

    def first(carry, xs):
        (top, den, o), pre = carry
        kk, vv, bb, mm = xs
        s = logits_of(kk)
        (top, den), p, scale = online((top, den), s + bb)
        pv = jnp.einsum("bhnm,bhmd->bhnd", p.astype(v.dtype), vv, **dot_kwargs(v.dtype))
        o = o * scale + pv.astype(acc)
        if need_sharpness and bias is not None:  # the pre-bias softmax has its own statistics
            pre, _, _ = online(pre, s + mm)
        return ((top, den, o), pre), None

    row = (bsz, heads, n, 1)
    stats0 = (jnp.full(row, -jnp.inf, acc), jnp.zeros(row, acc))
    init = ((*stats0, jnp.zeros((bsz, heads, n, dh), acc)), stats0)
    ((top, den, o), pre), _ = jax.lax.scan(first, init, (kb, vb, bias_b, mask_b))
    out = (o / den).astype(v.dtype)
    if not need_sharpness:
        return out, None
    top0, den0 = (top, den) if bias is None else pre

    def second(total, xs):
        kk, mm = xs
        probs = jnp.exp(logits_of(kk) + mm - top0) / den0  # (B, H, N, block), the pre-bias softmax
        return total + sharpness_from_mean(jnp.mean(probs, axis=1)), None

    sharp, _ = jax.lax.scan(second, jnp.zeros((bsz, n), acc), (kb, mask_b))
    return out, sharp


class Mlp(nnx.Module):
    """Two-layer GELU MLP."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.embed_dim, cfg.mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.embed_dim, rngs=rngs)
        self.approximate = cfg.gelu_approximate

    def __call__(self, x: Array) -> Array:
        """``(B, N, D)`` -> ``(B, N, D)``."""
        h = jax.nn.gelu(linear(self.fc1, x), approximate=self.approximate)
        low = self.fc1.kernel[...].dtype
        return linear(self.fc2, h.astype(low) if is_low_precision(low) else h)
