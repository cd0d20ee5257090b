"""XLA's own FLOP counts of a compiled JAX function, split into matmul/conv ops and the rest.

``jax.jit(f).lower(...).compile().cost_analysis()["flops"]`` is XLA's ``HloCostAnalysis`` of the
optimised HLO module. On the CPU backend (jax 0.10) it reports:

* ``dot`` and ``convolution``: **2 flops per multiply-accumulate** (``2 * prod(out) * contraction``),
  i.e. twice the fvcore MAC convention of :mod:`tldr_jax.flops`;
* elementwise ops (add, multiply, compare, select, ...) and reductions: about 1 flop per element,
  also inside fusions (a fusion costs the sum of its fused ops);
* the exact (erf) GELU: about 64 flops per element, because XLA CPU expands ``erf`` into a rational
  polynomial before the cost analysis runs;
* sorts: about ``n log2 n`` comparisons; gathers/scatters: about 1 per element moved;
* ``exp``, ``log``, ``rsqrt``, ``tanh``: not in ``flops`` but in a separate ``transcendentals`` count
  (1 per element); transposes, copies, bitcasts and slices: 0;
* **a ``while`` loop body once**, whatever its trip count: a ``jax.lax.map`` over 5 chunks reports
  the flops of one chunk (e.g. tldr_jax's query-chunked attention for N > 2048 tokens, where the
  whole-module number undercounts UMT-B's attention by 4/5).

The whole-module number therefore mixes MACs with elementwise work and undercounts loops.
:func:`xla_flops` separates the parts: it walks the optimised HLO, re-runs XLA's cost analysis on a
one-instruction module for every ``dot`` / ``convolution`` (so the per-op count is still XLA's own),
multiplies each by how often it executes (``known_trip_count`` of the enclosing ``while`` loops),
and reports the rest of XLA's total as ``other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import jax

__all__ = ["MatmulOp", "XlaFlops", "xla_flops"]

_DEF = re.compile(r"^(?P<name>%?[\w.\-]+) = (?P<shape>\S+) (?P<op>[\w\-]+)\((?P<args>[^)]*)\)(?P<attrs>.*)$")
_METADATA = re.compile(r", metadata=\{[^{}]*\}")
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_DIMS = re.compile(r"\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(calls|body|condition|to_apply|branch_computations|true_computation|"
                      r"false_computation)=\{?(%[\w.\-]+(?:, ?%[\w.\-]+)*)\}?")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclass(frozen=True)
class MatmulOp:
    """One ``dot`` / ``convolution`` of the optimised HLO and XLA's flop count for it.

    Attributes:
      opcode: ``"dot"`` or ``"convolution"``.
      out_shape: output dims.
      operand_shapes: dims of the two operands.
      flops: XLA ``HloCostAnalysis`` flops of this instruction alone.
      batched: the dot has batch dimensions (attention ``q k^T`` / ``a v``).
      highest_precision: ``operand_precision={highest,...}`` (tldr_jax's merge similarity).
      contraction: product of the lhs contracting dims (dots; for convolutions the kernel volume
        times input features).
      executions: how many times it runs per call (product of the enclosing loops' trip counts).
      text: the instruction text.
    """

    opcode: str
    out_shape: tuple[int, ...]
    operand_shapes: tuple[tuple[int, ...], ...]
    flops: float
    batched: bool
    highest_precision: bool
    contraction: int
    executions: int = 1
    text: str = field(repr=False, default="")


@dataclass(frozen=True)
class XlaFlops:
    """XLA's counts of a compiled function.

    Attributes:
      total: ``cost_analysis()["flops"]`` of the whole module (loop bodies counted once).
      transcendentals: ``cost_analysis()["transcendentals"]``.
      matmul: XLA flops of all dots and convolutions as executed (each times its ``executions``).
      matmul_once: the same with every op counted once, as ``total`` counts them.
      ops: the individual :class:`MatmulOp`.
      unknown_trip_count: some loop had no ``known_trip_count`` (its body is counted once).
    """

    total: float
    transcendentals: float
    matmul: float
    matmul_once: float
    ops: tuple[MatmulOp, ...]
    unknown_trip_count: bool = False

    @property
    def other(self) -> float:
        """XLA's flops that are not dots or convolutions (elementwise, reductions, sorts, gathers)."""
        return self.total - self.matmul_once


def _dims(shape: str) -> tuple[int, ...]:
    match = _DIMS.search(shape)
    if match is None or not match.group(1):
        return ()
    return tuple(int(d) for d in match.group(1).split(","))


def _shape_of(definition: str) -> str:
    """The shape string of an HLO instruction definition (``%p = f32[8,64]{1,0} parameter(0)``)."""
    match = _DEF.match(_METADATA.sub("", definition))
    if match is None:
        raise ValueError(f"cannot parse HLO instruction: {definition[:200]}")
    return match["shape"]


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _single_op_flops(text: str, operand_shapes: list[str]) -> float:
    """XLA cost analysis of one instruction, as a module whose parameters are its operands."""
    from jax._src.lib import xla_client
    from jaxlib import _hlo

    match = _DEF.match(_METADATA.sub("", text))
    if match is None:
        raise ValueError(f"cannot parse HLO instruction: {text}")
    params = [f"  p{i} = {shape} parameter({i})" for i, shape in enumerate(operand_shapes)]
    args = ", ".join(f"p{i}" for i in range(len(operand_shapes)))
    body = "\n".join(params + [f"  ROOT op = {match['shape']} {match['op']}({args}){match['attrs']}"])
    module = _hlo.hlo_module_from_text(f"HloModule single_op\n\nENTRY main {{\n{body}\n}}\n")
    client = jax.devices("cpu")[0].client
    return float(xla_client._xla.hlo_module_cost_analysis(client, module)["flops"])


def _contraction(opcode: str, attrs: str, operands: list[tuple[int, ...]]) -> int:
    if opcode == "dot":
        match = _CONTRACT.search(attrs)
        dims = [int(d) for d in match.group(1).split(",")] if match and match.group(1) else []
        return _prod(operands[0][d] for d in dims)
    labels = re.search(r"dim_labels=\w+_(\w+)->", attrs)
    kernel = operands[1]
    out_feature = labels.group(1).index("o") if labels else len(kernel) - 1
    return _prod(kernel) // kernel[out_feature]


def _executions(module: Any) -> tuple[dict[str, int], bool]:
    """How many times each computation of a module runs per call (from the entry, through loops)."""
    edges: dict[str, list[tuple[str, int]]] = {}
    called: set[str] = set()
    unknown = False
    for computation in module.computations():
        out = edges.setdefault(computation.name, [])
        for instruction in computation.instructions():
            text = _METADATA.sub("", instruction.to_string())
            trip = _TRIP.search(text)
            is_while = " while(" in text
            if is_while and trip is None:
                unknown = True
            for kind, names in _CALLEES.findall(text):
                factor = int(trip.group(1)) if (is_while and kind == "body" and trip) else 1
                for name in names.split(","):
                    callee = name.strip().lstrip("%")
                    out.append((callee, factor))
                    called.add(callee)
    counts: dict[str, int] = {}

    def visit(name: str, times: int) -> None:
        counts[name] = counts.get(name, 0) + times
        for callee, factor in edges.get(name, ()):
            visit(callee, times * factor)

    for root in (name for name in edges if name not in called):
        visit(root, 1)
    return counts, unknown


def xla_flops(compiled: Any) -> XlaFlops:
    """XLA's flop counts of a ``jax.stages.Compiled``, with the dots/convolutions itemised.

    Raises:
      RuntimeError: the module calls a matmul/convolution library routine (a ``custom-call``) that
        the per-instruction walk cannot see, so the split would be wrong.
    """
    from jaxlib import _hlo

    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    module = compiled.runtime_executable().hlo_modules()[0]
    executions, unknown = _executions(module)
    ops = []
    for computation in module.computations():
        for instruction in computation.instructions():
            opcode = instruction.opcode
            if opcode == _hlo.HloOpcode.kCustomCall:
                text = instruction.to_string()
                if re.search(r"matmul|conv|gemm|dot", text, re.IGNORECASE):
                    raise RuntimeError(f"matmul hidden in a custom call: {text[:200]}")
            if opcode not in (_hlo.HloOpcode.kDot, _hlo.HloOpcode.kConvolution):
                continue
            text = instruction.to_string()
            operand_shapes = [_shape_of(o.to_string()) for o in instruction.operands()]
            match = _DEF.match(_METADATA.sub("", text))
            name = "dot" if opcode == _hlo.HloOpcode.kDot else "convolution"
            operands = [_dims(s) for s in operand_shapes]
            ops.append(
                MatmulOp(
                    opcode=name,
                    out_shape=_dims(match["shape"]),
                    operand_shapes=tuple(operands),
                    flops=_single_op_flops(text, operand_shapes),
                    batched="lhs_batch_dims" in match["attrs"],
                    highest_precision="operand_precision={highest" in match["attrs"],
                    contraction=_contraction(name, match["attrs"], operands),
                    executions=executions.get(computation.name, 1),
                    text=text,
                )
            )
    return XlaFlops(
        total=float(costs.get("flops", 0.0)),
        transcendentals=float(costs.get("transcendentals", 0.0)),
        matmul=float(sum(op.flops * op.executions for op in ops)),
        matmul_once=float(sum(op.flops for op in ops)),
        ops=tuple(ops),
        unknown_trip_count=unknown,
    )
