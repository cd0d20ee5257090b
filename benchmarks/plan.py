"""What the speed benchmark runs: the models, their schedules, and the groups timed together."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

BACKENDS = ("jax", "torch_ref", "torch_ref_compile", "hf", "hf_compile")
UMT_PRESETS = ("msrvtt", "msvd", "activitynet")

#: In-context variants of a merging schedule (``"<schedule>|<variant>"`` labels), each a whole encoder
#: compiled as one program, so that the overhead of merging is measured where XLA fuses it:
#: ``slice`` keeps the first ``N - r`` tokens (same shapes, no saliency, no matching: zero-cost
#: merging); ``sharpness+slice`` adds the pre-bias softmax sharpness; ``match+merge`` runs the
#: bipartite matching and the size-weighted merge without saliency (:mod:`benchmarks.backends`).
VARIANTS = ("slice", "sharpness+slice", "match+merge")

__all__ = [
    "BACKENDS", "UMT_PRESETS", "VARIANTS", "Group", "ModelSpec", "build_plan", "estimate_group_s",
    "full_models", "quick_models",
]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a tldr_jax architecture plus overrides, and its merge schedules.

    Attributes:
      key: name used in results.
      arch, overrides: ``tldr_jax.init(seed, arch, **overrides)``.
      schedules: label -> ``r`` (anything :func:`tldr_jax.schedule` takes).
      main: label of the headline merged schedule (the speed-up target is checked on it).
      sweep: labels forming the constant-r sweep of the plot.
      hf: the model has a Hugging Face VideoMAE counterpart.
    """

    key: str
    arch: str
    overrides: tuple[tuple[str, Any], ...]
    schedules: tuple[tuple[str, Any], ...]
    main: str
    sweep: tuple[str, ...] = ()
    hf: bool = False

    def config(self):
        """The model's :class:`~tldr_jax.configs.ArchConfig`."""
        from tldr_jax.configs import get_config

        return get_config(self.arch, **dict(self.overrides))

    def schedule(self, label: str):
        """The resolved schedule of a label (``"msrvtt"``, or a variant ``"msrvtt|slice"``)."""
        import tldr_jax

        return tldr_jax.schedule(self.config(), dict(self.schedules)[label.split("|")[0]])


@dataclasses.dataclass(frozen=True)
class Group:
    """Configurations timed together, round-robin: one model, one backend, one batch size."""

    model: str
    backend: str
    batch: int
    labels: tuple[str, ...]
    repeats: int
    warmup: int


def _scaled(preset: str, num_tokens: int) -> tuple[int, ...]:
    """A UMT-B preset with its counts scaled to a model with ``num_tokens`` tokens."""
    from tldr_jax.schedule import PRESETS

    return tuple(max(1, round(c * num_tokens / 2352)) for c in PRESETS["umt_b16"][preset])


def _videomae_solved(arch: str, overrides: dict[str, Any], reduction: float) -> tuple[int, ...]:
    import tldr_jax
    from tldr_jax.configs import get_config

    return tldr_jax.solve_schedule(get_config(arch, **overrides), reduction=reduction)


def full_models() -> dict[str, ModelSpec]:
    """UMT-B/16 (12 x 224^2, the vid-TLDR setting) and VideoMAE-B (16 x 224^2)."""
    sweep = (("const50", 50), ("const100", 100), ("const150", 150))
    return {
        "umt_b16": ModelSpec(
            key="umt_b16",
            arch="umt_b16",
            overrides=(),
            schedules=(("r0", 0),) + tuple((p, p) for p in UMT_PRESETS) + sweep,
            main="msrvtt",
            sweep=tuple(label for label, _ in sweep),
        ),
        "videomae_b": ModelSpec(
            key="videomae_b",
            arch="videomae_b",
            overrides=(),
            schedules=(("r0", 0), ("solve-40%", _videomae_solved("videomae_b", {}, 0.4))),
            main="solve-40%",
            hf=True,
        ),
    }


def quick_models() -> dict[str, ModelSpec]:
    """Tiny stand-ins with the same code paths (CI-sized)."""
    umt = dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, num_frames=8, img_size=112)
    vmae = dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, num_frames=8, img_size=112)
    n_umt = 8 * 7 * 7
    sweep = (("const8", 8), ("const16", 16), ("const32", 32))
    return {
        "umt_tiny": ModelSpec(
            key="umt_tiny",
            arch="umt_b16",
            overrides=tuple(umt.items()),
            schedules=(("r0", 0), ("msrvtt-scaled", _scaled("msrvtt", n_umt))) + sweep,
            main="msrvtt-scaled",
            sweep=tuple(label for label, _ in sweep),
        ),
        "videomae_tiny": ModelSpec(
            key="videomae_tiny",
            arch="videomae_b",
            overrides=tuple(vmae.items()),
            schedules=(("r0", 0), ("solve-40%", _videomae_solved("videomae_b", vmae, 0.4))),
            main="solve-40%",
            hf=True,
        ),
    }


def build_plan(
    models: dict[str, ModelSpec], quick: bool, batches: Sequence[int], repeats: int | None,
    backends: Sequence[str], device: str = "cpu", schedules: Sequence[str] | None = None,
) -> list[Group]:
    """The groups to run, most important first (a time budget drops the tail).

    On a GPU every group gets 20 timed rounds after 3 warm-up calls (a call takes milliseconds), and
    the PyTorch baselines also run at the large batch.
    """
    plan: list[Group] = []
    gpu = device == "gpu"

    def add(model: str, backend: str, batch: int, labels: Sequence[str], reps: int, warm: int) -> None:
        if gpu:
            reps, warm = 20, 3
        if model in models and backend in backends and batch in batches:
            known = dict(models[model].schedules)
            keep = tuple(lb for lb in labels if lb.split("|")[0] in known)
            done = {lb for g in plan if (g.model, g.backend, g.batch) == (model, backend, batch)
                    for lb in g.labels}
            keep = tuple(lb for lb in keep if lb not in done)  # big == 1: no second batch-1 group
            if schedules is not None:
                keep = tuple(lb for lb in keep if lb in schedules)
            if keep:
                plan.append(Group(model, backend, batch, keep, repeats or reps, warm))

    big = max(batches)
    if quick:
        umt, vmae = "umt_tiny", "videomae_tiny"
        umt_all = [lb for lb, _ in quick_models()[umt].schedules]
        add(umt, "jax", 1, umt_all + [f"msrvtt-scaled|{v}" for v in VARIANTS], 5, 1)
        add(umt, "torch_ref", 1, ["r0", "msrvtt-scaled"], 5, 1)
        add(vmae, "jax", 1, ["r0", "solve-40%"], 5, 1)
        add(vmae, "hf", 1, ["r0"], 5, 1)
        add(vmae, "torch_ref", 1, ["r0", "solve-40%"], 5, 1)
        add(umt, "torch_ref_compile", 1, ["msrvtt-scaled"], 5, 1)
        add(vmae, "hf_compile", 1, ["r0"], 5, 1)
        if big > 1:
            add(umt, "jax", big, ["r0", "msrvtt-scaled"], 3, 1)
        return plan
    umt, vmae = "umt_b16", "videomae_b"
    variants = [f"msrvtt|{v}" for v in VARIANTS]
    # Full size: a JAX call is already AOT-compiled, so the round-robin's first round is the warm-up
    # and the median of 3 rounds drops it; eager PyTorch gets one extra warm-up call.
    add(umt, "jax", 1, ["r0", *UMT_PRESETS, "const50", "const100", "const150", *variants], 3, 0)
    add(umt, "torch_ref", 1, ["r0", "msrvtt"], 3, 1)
    add(umt, "jax", big, ["r0", "msrvtt"], 2, 0)
    add(vmae, "jax", 1, ["r0", "solve-40%"], 3, 0)
    add(vmae, "hf", 1, ["r0"], 3, 1)
    add(vmae, "torch_ref", 1, ["r0", "solve-40%"], 3, 1)
    add(umt, "torch_ref_compile", 1, ["msrvtt"], 3, 1)
    add(vmae, "hf_compile", 1, ["r0"], 3, 1)
    add(vmae, "jax", big, ["r0", "solve-40%"], 2, 0)
    add(umt, "torch_ref", big, ["r0", "msrvtt"] if gpu else ["msrvtt"], 2, 0)
    if gpu:
        add(vmae, "torch_ref", big, ["r0", "solve-40%"], 2, 0)
        add(vmae, "hf", big, ["r0"], 2, 0)
        add(umt, "torch_ref_compile", big, ["msrvtt"], 2, 0)
        add(vmae, "hf_compile", big, ["r0"], 2, 0)
    return plan


def estimate_group_s(
    group: Group, spec: ModelSpec, s_per_gmac: dict[str, float], compile_s: dict[str, float]
) -> float:
    """Rough wall time of a group from the speeds and compile times measured so far."""
    import tldr_jax

    gmac = sum(tldr_jax.gflops(spec.config(), r=spec.schedule(lb)) for lb in group.labels)
    calls = group.repeats + group.warmup
    compiling = compile_s.get(group.backend, 0.0) * len(group.labels)
    return compiling + calls * group.batch * gmac * s_per_gmac[group.backend]
