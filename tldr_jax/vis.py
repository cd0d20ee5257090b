"""Visualise vid-TLDR: the saliency of the first merging layer and the merged-token groups, per frame.

The figure (:func:`saliency_grid`) has one column per shown frame and three rows:

1. the input frame (as the model saw it, after resizing and cropping);
2. the saliency of the first merging layer (``apply(..., return_saliency=True)``), one value per patch
   token, drawn as a heat map over the frame (background tokens that vid-TLDR zeroes are dark);
3. the merged-token groups after the last layer, from the O(N) source map
   (``apply(..., source="origin")``): every input patch token belongs to exactly one output token
   (``TokenOrigin.owner``); patches sharing an owner are one group. Groups of more than one patch are
   tinted with one colour per group (the same colour across frames when a group spans time), and
   group boundaries are drawn wherever neighbouring patches have different owners, so unmerged
   regions show the plain patch grid and merged regions show as larger cells.

Token layout: patch tokens are ordered ``(t, h, w)`` over the ``(T', H', W')`` grid
(``T' = T / tubelet_size``); protected leading tokens (ViViT's CLS, ``cfg.protected``) are skipped.
A token covers ``tubelet_size`` consecutive frames, so frame ``t`` shows token time ``t // tubelet``.

Everything is drawn with numpy (Pillow for text, GIF and PNG); matplotlib is used only for its
colour maps when installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.files import atomic_output
from tldr_jax.options import check_int
from tldr_jax.video import IMAGENET_MEAN, IMAGENET_STD, check_fps, denormalize, write_video

ROW_TITLES: tuple[str, ...] = ("frame", "saliency", "merge groups")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
ANIMATION_EXTENSIONS: tuple[str, ...] = (".gif", ".mp4", ".webm", ".mov", ".avi", ".mkv")

__all__ = [
    "TokenMaps",
    "analyze",
    "group_colors",
    "overlay_groups",
    "overlay_saliency",
    "render_panels",
    "saliency_animation",
    "saliency_grid",
    "save_animation",
    "save_image",
    "token_maps",
    "visualize",
]


@dataclasses.dataclass(frozen=True)
class TokenMaps:
    """Per-patch maps on the token grid ``(T', H', W')``.

    Attributes:
      owner: int, the output token holding each input patch token (after the last layer).
      group_size: int, how many patch tokens share that owner.
      weight: float, the accumulated vid-TLDR factor of each patch (0: dropped as background).
      saliency: float in ``[0, 1]``, the saliency of the first merging layer, or None (ToMe, or no
        merging).
      saliency_layer: index of the layer the saliency comes from, or None.
      tubelet: frames per token time step.
      patch: patch size in pixels.
      tokens_in: token count entering the first layer.
      tokens_out: token count leaving the last layer.
    """

    owner: np.ndarray
    group_size: np.ndarray
    weight: np.ndarray
    saliency: np.ndarray | None
    saliency_layer: int | None
    tubelet: int
    patch: int
    tokens_in: int
    tokens_out: int

    @property
    def grid(self) -> tuple[int, int, int]:
        """``(T', H', W')``."""
        return tuple(int(s) for s in self.owner.shape)  # type: ignore[return-value]

    @property
    def num_groups(self) -> int:
        """Output tokens holding patches (CLS excluded)."""
        return int(np.unique(self.owner).size)


# --------------------------------------------------------------------------------------------------
# From model output to token-grid maps.
# --------------------------------------------------------------------------------------------------


def analyze(params: Any, video: Any, r: Any = 0, *, method: str = "vid_tldr", **apply_kwargs: Any) -> Any:
    """Run :func:`tldr_jax.apply` with the O(N) source map and saliency: what :func:`token_maps` needs.

    ``video`` may be ``(T, H, W, 3)`` or ``(B, T, H, W, 3)`` normalised float frames.
    """
    from tldr_jax.api import apply

    x = np.asarray(video, np.float32)
    if x.ndim == 4:
        x = x[None]
    return apply(params, x, r, method=method, source="origin", return_saliency=True, **apply_kwargs)


def _owner_of(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, weight)``, each ``(B, N0)``, from a TokenOrigin or a dense ``(B, N', N0)`` map."""
    if source is None:
        raise ValueError(
            "the output has no source map; run apply(..., source='origin', return_saliency=True) "
            "(or tldr_jax.vis.analyze)."
        )
    if hasattr(source, "owner"):
        return np.asarray(source.owner), np.asarray(source.weight, np.float32)
    dense = np.asarray(source, np.float32)
    # Dense maps lose the owner of tokens whose weight dropped to 0; argmax then picks token 0.
    return dense.argmax(axis=1), dense.max(axis=1)


def token_maps(output: Any, cfg: Any, *, batch: int = 0, saliency_index: int = 0) -> TokenMaps:
    """The per-patch owner, group-size, weight and saliency maps of one clip of an :class:`Output`.

    Args:
      output: from ``apply(..., source="origin", return_saliency=True)``.
      cfg: the model's :class:`~tldr_jax.configs.ArchConfig` (``params.config``).
      batch: which clip of the batch.
      saliency_index: which merging layer's saliency (0: the first). Only layers that see all input
        tokens (no merge before them) can be mapped to the grid.
    """
    owner, weight = _owner_of(output.source)
    protected = int(cfg.protected)
    n0 = owner.shape[1]
    hw = (cfg.img_size // cfg.patch_size) ** 2
    num_patches = n0 - protected
    if num_patches % hw:
        raise ValueError(f"{num_patches} patch tokens do not fill a {cfg.img_size // cfg.patch_size}^2 grid.")
    side = cfg.img_size // cfg.patch_size
    grid = (num_patches // hw, side, side)
    own = owner[batch, protected:].astype(np.int64)
    _, inverse, counts = np.unique(own, return_inverse=True, return_counts=True)
    sal, layer = None, None
    sched = getattr(output, "schedule", None)
    if output.saliency:
        if not 0 <= saliency_index < len(output.saliency):
            raise ValueError(
                f"saliency_index {saliency_index} out of range: {len(output.saliency)} merging layer(s)."
            )
        s = np.asarray(output.saliency[saliency_index], np.float32)[batch]
        if s.shape[0] != n0:
            raise ValueError(
                f"merging layer {saliency_index} sees {s.shape[0]} tokens, not the {n0} input tokens; only "
                "layers before the first merge map onto the patch grid. Use saliency_index=0."
            )
        sal = s[protected:].reshape(grid)
        if sched is not None:
            merging = [i for i, v in enumerate(sched.r) if v]
            layer = merging[saliency_index] if saliency_index < len(merging) else None
    tokens_out = int(output.tokens.shape[1]) if getattr(output, "tokens", None) is not None else -1
    return TokenMaps(
        owner=own.reshape(grid),
        group_size=counts[inverse].reshape(grid),
        weight=weight[batch, protected:].reshape(grid),
        saliency=sal,
        saliency_layer=layer,
        tubelet=int(cfg.tubelet_size),
        patch=int(cfg.patch_size),
        tokens_in=int(n0),
        tokens_out=tokens_out,
    )


# --------------------------------------------------------------------------------------------------
# Drawing.
# --------------------------------------------------------------------------------------------------


def _colormap(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """``values`` in ``[0, 1]`` -> ``(..., 3)`` float RGB in ``[0, 1]`` (matplotlib when available)."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    try:
        import matplotlib

        return np.asarray(matplotlib.colormaps[name](v))[..., :3].astype(np.float32)
    except (ImportError, KeyError):
        # A dark-to-bright ramp (black -> purple -> orange -> yellow) without matplotlib.
        stops = np.array([[0, 0, 0.02], [0.35, 0.05, 0.45], [0.85, 0.3, 0.15], [0.99, 0.95, 0.4]], np.float32)
        pos = v * (len(stops) - 1)
        lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
        frac = (pos - lo)[..., None]
        return stops[lo] * (1 - frac) + stops[lo + 1] * frac


def group_colors(ids: np.ndarray) -> np.ndarray:
    """A distinct, deterministic RGB colour (float ``[0, 1]``) per integer id (golden-ratio hues)."""
    ids = np.asarray(ids, np.int64)
    hue = (ids * 0.61803398875) % 1.0
    sat = 0.65 + 0.3 * ((ids * 0.37) % 1.0)
    val = np.full(hue.shape, 0.95, np.float32)
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.zeros((*ids.shape, 3), np.float32)
    for k, (r, g, b) in enumerate(table):
        m = i == k
        rgb[m] = np.stack([r[m], g[m], b[m]], axis=-1)
    return rgb


def _upsample(grid2d: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(grid2d, factor, axis=0), factor, axis=1)


def overlay_saliency(frame: np.ndarray, saliency: np.ndarray, *, alpha: float = 0.65, cmap: str = "inferno"):
    """Blend a ``(h, w)`` token saliency (``[0, 1]``) over a ``(H, W, 3)`` uint8 frame (``H = h * p``)."""
    factor = frame.shape[0] // saliency.shape[0]
    heat = _colormap(_upsample(saliency, factor), cmap)
    out = (1 - alpha) * frame.astype(np.float32) / 255.0 + alpha * heat
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def group_edges(owner: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels where the right or lower neighbour has a different owner."""
    edge = np.zeros(owner.shape, bool)
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    edge[:-1, :] |= owner[:-1, :] != owner[1:, :]
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    return edge


def overlay_groups(
    frame: np.ndarray,
    owner: np.ndarray,
    group_size: np.ndarray,
    *,
    alpha: float = 0.5,
    edge_color: Sequence[int] = (255, 255, 255),
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Tint merged groups (one colour per owner) and outline every group on a uint8 frame.

    ``owner``, ``group_size`` and ``weight`` are ``(h, w)`` token maps; patches with ``weight == 0``
    (dropped by vid-TLDR's background removal) are darkened.
    """
    factor = frame.shape[0] // owner.shape[0]
    own = _upsample(owner, factor)
    merged = _upsample(group_size > 1, factor)[..., None]
    img = frame.astype(np.float32) / 255.0
    tint = group_colors(own)
    img = np.where(merged, (1 - alpha) * img + alpha * tint, 0.75 * img)
    if weight is not None:
        dropped = _upsample(weight <= 0, factor)[..., None]
        img = np.where(dropped & merged, 0.55 * img, img)
    img[group_edges(own)] = np.asarray(edge_color, np.float32) / 255.0
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _display_frames(frames: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 5:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3); got shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr
    return denormalize(arr, mean or IMAGENET_MEAN, std or IMAGENET_STD)


def render_panels(frames: np.ndarray, maps: TokenMaps) -> np.ndarray:
    """``(T, 3, H, W, 3)`` uint8: for each frame, the frame, the saliency overlay and the groups."""
    t_frames, h, w, _ = frames.shape
    t_tok, gh, gw = maps.grid
    if h != gh * maps.patch or w != gw * maps.patch:
        raise ValueError(
            f"frames are {h}x{w} but the token grid is {gh}x{gw} of {maps.patch}px patches; pass the frames "
            "the model saw (after preprocess)."
        )
    out = np.empty((t_frames, 3, h, w, 3), np.uint8)
    for t in range(t_frames):
        k = min(t // maps.tubelet, t_tok - 1)
        out[t, 0] = frames[t]
        if maps.saliency is not None:
            out[t, 1] = overlay_saliency(frames[t], maps.saliency[k])
        else:
            out[t, 1] = (frames[t].astype(np.float32) * 0.3).astype(np.uint8)
        out[t, 2] = overlay_groups(frames[t], maps.owner[k], maps.group_size[k], weight=maps.weight[k])
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _draw_text(canvas: np.ndarray, items: Sequence[tuple[int, int, str]], size: int = 12) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(size)
    for x, y, text in items:
        draw.text((x, y), text, fill=(20, 20, 20), font=font)
    return np.asarray(img)


def _row_titles(maps: TokenMaps) -> tuple[str, ...]:
    sal = "saliency" if maps.saliency is not None else "saliency (n/a)"
    if maps.saliency_layer is not None:
        sal = f"saliency, layer {maps.saliency_layer}"
    groups = f"groups {maps.tokens_in}->{maps.tokens_out}"
    return ("frame", sal, groups)


def saliency_grid(
    frames: Any,
    output: Any,
    cfg: Any,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_frames: int = 8,
    pad: int = 4,
    labels: bool = True,
    label_width: int = 110,
    header: int = 18,
    batch: int = 0,
) -> np.ndarray:
    """A PNG-ready ``(H_img, W_img, 3)`` uint8 grid: rows frame / saliency / merge groups, one column
    per shown frame.

    Args:
      frames: the model input, ``(T, H, W, 3)`` (or with a batch axis): uint8, or normalised floats
        (then ``mean``/``std`` undo the normalisation; ImageNet by default).
      output: from ``apply(..., source="origin", return_saliency=True)`` (see :func:`analyze`).
      cfg: the model config (``params.config``).
      mean: the per-channel mean the floats were normalised with (default: ImageNet's).
      std: the per-channel standard deviation they were normalised with (default: ImageNet's).
      max_frames: at most this many evenly spaced frames are shown.
      pad: white margin around and between tiles.
      labels: add row titles (a ``label_width`` column) and frame numbers (a ``header`` row).
      label_width: pixels of the row-title column.
      header: pixels of the frame-number row.
      batch: which clip of a batched input and output.

    Layout: ``H_img = 3 * H + 4 * pad (+ header)``, ``W_img = C * W + (C + 1) * pad (+ label_width)``
    for ``C = min(T, max_frames)`` columns.
    """
    shown = _display_frames(frames, mean, std)
    maps = token_maps(output, cfg, batch=batch)
    t_total = shown.shape[0]
    cols = max(1, min(t_total, int(max_frames)))
    which = np.linspace(0, t_total - 1, cols).round().astype(int)
    panels = render_panels(shown[which], maps)
    h, w = panels.shape[2:4]
    left, top = (label_width, header) if labels else (0, 0)
    canvas = np.full((top + 3 * h + 4 * pad, left + cols * w + (cols + 1) * pad, 3), 255, np.uint8)
    for c in range(cols):
        for row in range(3):
            y = top + pad + row * (h + pad)
            x = left + pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = panels[c, row]
    if labels:
        titles = _row_titles(maps)
        items = [(4, top + pad + row * (h + pad) + h // 2 - 6, title) for row, title in enumerate(titles)]
        items += [(left + pad + c * (w + pad) + 2, 2, f"t={int(t)}") for c, t in enumerate(which)]
        canvas = _draw_text(canvas, items)
    return canvas


def saliency_animation(
    frames: Any,
    output: Any,
    cfg: Any,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pad: int = 4,
    batch: int = 0,
) -> np.ndarray:
    """``(T, H + 2 pad, 3 W + 4 pad, 3)`` uint8 frames: frame | saliency | groups side by side."""
    shown = _display_frames(frames, mean, std)
    panels = render_panels(shown, token_maps(output, cfg, batch=batch))
    t, _, h, w, _ = panels.shape
    out = np.full((t, h + 2 * pad, 3 * w + 4 * pad, 3), 255, np.uint8)
    for k in range(3):
        x = pad + k * (w + pad)
        out[:, pad : pad + h, x : x + w] = panels[:, k]
    return out


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``(H, W, 3)`` image (PNG/JPEG/WebP by extension)."""
    from PIL import Image

    p = Path(path)
    with atomic_output(p) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp)
    return p


def save_animation(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames as a GIF (Pillow) or a video (PyAV), by extension."""
    return write_video(path, frames, fps)


def visualize(
    params: Any,
    video: Any,
    out: str | Path,
    r: Any = 0,
    *,
    method: str = "vid_tldr",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_frames: int = 8,
    fps: float = 4.0,
    **apply_kwargs: Any,
) -> tuple[Path, TokenMaps]:
    """Run the model on a normalised ``(T, H, W, 3)`` clip and write the visualisation.

    ``apply_kwargs`` are further options of :func:`tldr_jax.apply` (``pool``, ``dtype``, ``precision``,
    ...; the source map and saliency are requested here).

    ``out`` ending in ``.png``/``.jpg``/``.webp`` gets the :func:`saliency_grid`; ``.gif``/``.mp4``/...
    gets the :func:`saliency_animation` over all frames. Returns the path and the token maps. Every
    argument is checked before the model runs; the file appears only once complete.
    """
    p = Path(out)
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS + ANIMATION_EXTENSIONS:
        raise ValueError(
            f"cannot write {str(p)!r}: use one of {', '.join(IMAGE_EXTENSIONS + ANIMATION_EXTENSIONS)}."
        )
    if p.is_dir():
        raise ValueError(f"cannot write {str(p)!r}: it is a directory; give a file name such as vis.png.")
    fps = check_fps(fps)
    check_int("max_frames", max_frames, minimum=1)
    output = analyze(params, video, r, method=method, **apply_kwargs)
    cfg = params.config
    if ext in IMAGE_EXTENSIONS:
        save_image(saliency_grid(video, output, cfg, mean=mean, std=std, max_frames=max_frames), p)
    else:
        save_animation(saliency_animation(video, output, cfg, mean=mean, std=std), p, fps)
    return p, token_maps(output, cfg)
