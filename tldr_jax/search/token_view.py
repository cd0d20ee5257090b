"""The vid-TLDR view of an indexed clip: which tokens were kept and merged, and the saliency, as a PNG.

The clip of a row (:meth:`~tldr_jax.search.index.VideoIndex.clip`: the file read with the index's
preprocessing) runs through the index's own model with the index's own merge schedule ``r`` and apply
options, with the O(N) source map and the saliency requested (:func:`tldr_jax.vis.analyze`). The figure
has one column per shown frame (evenly spaced, at most :data:`MAX_FRAMES`) and three rows, drawn by
:func:`tldr_jax.vis.render_panels`: the frame as the model saw it, the saliency of the first merging
layer over it (dark patches: background that vid-TLDR down-weights), and the merged-token groups after
the last layer (one tint per group of more than one patch, outlines between groups, dropped patches
darkened). A header line gives the token counts. Small inputs are enlarged (nearest neighbour) so each
tile is at least :data:`MIN_TILE` pixels.

Views are cached in ``INDEX/token_views/<content hash>-<settings hash>.png`` (written atomically):
keyed by the file's content (and a window's frames) and by what the view depends on (model
fingerprint, schedule, frames, options), so a re-index keeps them and a rebuild with another model
makes new ones. An index folder that cannot be written still serves views (made again each time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tldr_jax.files import cached_bytes
from tldr_jax.retrieval.features import clip_preprocessing
from tldr_jax.search.index import VideoIndex
from tldr_jax.video import denormalize
from tldr_jax.vis import TokenMaps, analyze, render_panels, token_maps

#: The folder of an index where views are cached.
TOKEN_VIEW_DIR = "token_views"
#: Frames shown (evenly spaced over the clip).
MAX_FRAMES = 4
#: Smallest tile side in pixels: smaller model inputs are enlarged by an integer factor.
MIN_TILE = 112
#: Apply options of an index that the view runs with (``attention`` is stored as text and only changes
#: float rounding; ``source`` and ``return_saliency`` are set here).
VIEW_OPTIONS: tuple[str, ...] = ("method", "pool", "prop_attn", "dtype", "precision", "fast_compile",
                                 "gpu_tuning")
_PAD, _LEFT, _TOP = 4, 120, 40

__all__ = ["MAX_FRAMES", "TOKEN_VIEW_DIR", "TokenView", "analyze_row", "render_view", "token_view_png"]


@dataclasses.dataclass(frozen=True)
class TokenView:
    """What the view of one clip shows.

    Attributes:
      frames: ``(T, H, W, 3)`` uint8, the clip as the model saw it (normalisation undone).
      maps: the :class:`~tldr_jax.vis.TokenMaps` of the clip (owner, group size, weight, saliency).
      r: the merge schedule the index was built with (as recorded in ``index.json``).
      tokens: ``(N', D)`` float32, the merged tokens of this run (what ``tokens.npy`` stores for the row
        when the index keeps tokens).
    """

    frames: np.ndarray
    maps: TokenMaps
    r: Any
    tokens: np.ndarray

    def stats(self) -> dict[str, int]:
        """Counts on the patch grid: ``patches``, ``tokens_out``, ``groups`` (tokens holding patches),
        ``merged`` (patches in a group of more than one), ``dropped`` (patches of weight 0)."""
        m = self.maps
        return {
            "patches": int(m.owner.size), "tokens_out": int(m.tokens_out), "groups": m.num_groups,
            "merged": int((m.group_size > 1).sum()), "dropped": int((m.weight <= 0).sum()),
        }


def _schedule(r: Any) -> Any:
    """A recorded schedule as :func:`tldr_jax.apply` takes it (JSON lists back to tuples)."""
    return tuple(_schedule(v) for v in r) if isinstance(r, list) else r


def _options(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.get("options", {}).items() if k in VIEW_OPTIONS}


def analyze_row(index: VideoIndex, row: int) -> TokenView:
    """Run the index's model on row ``row``'s clip with the index's schedule, source map and saliency.

    Args:
      index: a :class:`~tldr_jax.search.index.VideoIndex` opened with its model.
      row: the row (``0 <= row < len(index)``).

    Returns:
      :class:`TokenView`.

    Raises:
      IndexError: no such row. ValueError: no model, a path outside the collection, a bad clip.
      VideoReadError: the file is missing or unreadable.
    """
    clip = index.clip(row)  # (T, H, W, 3) float32, normalised
    s = index.settings
    options = _options(s)
    output = analyze(index.model.vision, clip, _schedule(s["r"]), **options)
    maps = token_maps(output, index.model.vision.config)
    prep = clip_preprocessing(index.model, int(s["num_frames"]), s.get("trim_seconds"))
    frames = denormalize(clip, prep.mean, prep.std)
    return TokenView(frames=np.asarray(frames, np.uint8), maps=maps, r=s["r"],
                     tokens=np.asarray(output.tokens[0], np.float32))


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def _row_labels(view: TokenView) -> list[str]:
    m = view.maps
    sal = "saliency" if m.saliency is not None else "saliency (none:\nno merging)"
    if m.saliency_layer is not None:
        sal = f"saliency\n(layer {m.saliency_layer})"
    return ["frame", sal, "merged groups"]


def render_view(view: TokenView, *, max_frames: int = MAX_FRAMES, min_tile: int = MIN_TILE) -> np.ndarray:
    """The figure of a :class:`TokenView`: ``(H, W, 3)`` uint8, rows frame / saliency / merged groups,
    one column per shown frame, a header line with the token counts.

    Args:
      view: from :func:`analyze_row`.
      max_frames: at most this many evenly spaced frames are shown (>= 1).
      min_tile: tiles smaller than this (pixels) are enlarged by an integer factor (nearest neighbour).

    Returns:
      ``(40 + 3 h + 4 * 4, 120 + C w + (C + 1) * 4, 3)`` uint8 for ``C`` columns of ``h x w`` tiles.
    """
    if int(max_frames) < 1:
        raise ValueError(f"max_frames must be at least 1; got {max_frames}.")
    frames, maps = view.frames, view.maps
    factor = max(1, -(-int(min_tile) // frames.shape[1]))
    if factor > 1:
        frames = np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)
        maps = dataclasses.replace(maps, patch=maps.patch * factor)
    cols = max(1, min(len(frames), int(max_frames)))
    which = np.linspace(0, len(frames) - 1, cols).round().astype(int)
    panels = render_panels(frames[which], maps)  # (C, 3, h, w, 3)
    h, w = panels.shape[2:4]
    canvas = np.full((_TOP + 3 * h + 4 * _PAD, _LEFT + cols * w + (cols + 1) * _PAD, 3), 255, np.uint8)
    for c in range(cols):
        for k in range(3):
            y, x = _TOP + _PAD + k * (h + _PAD), _LEFT + _PAD + c * (w + _PAD)
            canvas[y : y + h, x : x + w] = panels[c, k]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    st = view.stats()
    head = (f"{maps.tokens_in} tokens -> {st['tokens_out']} (r = {json.dumps(view.r)}); "
            f"{st['merged']} of {st['patches']} patches merged, {st['dropped']} dropped")
    draw.text((4, 4), head, fill=(20, 20, 20), font=_font(13))
    small = _font(12)
    for k, label in enumerate(_row_labels(view)):
        draw.multiline_text((4, _TOP + _PAD + k * (h + _PAD) + h // 2 - 8), label, fill=(20, 20, 20),
                            font=small)
    for c, t in enumerate(which):
        draw.text((_LEFT + _PAD + c * (w + _PAD), _TOP - 16), f"frame {int(t)}", fill=(60, 60, 60),
                  font=small)
    return np.asarray(img)


def _encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _settings_key(index: VideoIndex) -> str:
    """A short hash of what a view depends on besides the file (model, schedule, frames, options)."""
    s = index.settings
    what = {k: s.get(k) for k in ("model", "r", "num_frames", "trim_seconds", "options")}
    what["view"] = [MAX_FRAMES, MIN_TILE]
    return hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def token_view_png(index: VideoIndex, row: int, *, cache: bool = True) -> bytes:
    """The PNG of row ``row``'s token view: read from ``INDEX/token_views/`` or made
    (:func:`analyze_row`, :func:`render_view`) and cached there (atomically; skipped when the folder is
    read-only or ``cache=False``).

    Args:
      index: a :class:`~tldr_jax.search.index.VideoIndex` opened with its model.
      row: the row (``0 <= row < len(index)``).
      cache: read and write ``INDEX/token_views/`` (False: always compute, write nothing).

    Returns:
      the PNG file's bytes.

    Raises:
      IndexError: no such row. ValueError: no model, a path outside the collection, a bad clip.
      VideoReadError: the file is missing or unreadable.
    """
    if not 0 <= row < len(index):
        raise IndexError(f"no video {row}: the index holds rows 0 to {len(index) - 1}.")
    # result_name: the content hash (and a window's frames), as the feature cache keys the entry
    stem = index.entries[row].result_name.removesuffix(".npz")
    cached = index.path / TOKEN_VIEW_DIR / f"{stem}-{_settings_key(index)}.png"
    return cached_bytes(cached, lambda: _encode_png(render_view(analyze_row(index, row))), cache=cache)
