#!/usr/bin/env bash
# One call on a lent GPU machine (about 8.5 minutes, TOTAL_S=500 by default; the lease is 15 minutes in all, start included):
# library versions; an XLA-flags probe (GEMM rates and UMT-B latency per flag set, PyTorch's GEMM rates
# beside them) that picks the flags; golden parity on the GPU under them; bfloat16 rows (UMT-B r = 0 and
# MSRVTT: tldr_jax.apply(dtype=bfloat16) against the PyTorch reference under autocast, BF16_S=90 s of
# budget); then the GPU benchmark of the headline schedules under them (float32).
#
# Usage, from the repository root: OUT=<results dir> TLDR_GOLDEN_DIR=<folder with golden_model.npz,
# golden_model_f64.npz and umt_tiny.pth> bash benchmarks/device_check.sh
# Smoke test of the script on a CPU (tiny models, a minute or two): DEV=cpu QUICK=1 bash benchmarks/device_check.sh
#
# Learned on an H200 (2026-11-26): with --xla_gpu_autotune_level=0 tldr_jax was 3.3-4x slower than
# PyTorch (XLA then uses untuned Triton GEMM tiles and never tries cuBLAS), and with autotuning on, the ten merging
# UMT-B programs did not compile within 330 s. benchmarks/xla_probe.py measures the alternatives.
set -u
OUT=${OUT:-/tmp/tldr_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEV=${DEV:-gpu}
if [ -n "${QUICK:-}" ]; then Q="--quick --repeats 3"; SCHED=""; BF="umt_tiny r0,msrvtt-scaled"
else Q=""; SCHED="--schedules r0,msrvtt,solve-40%"; BF="umt_b16 r0,msrvtt"; fi
[ "$DEV" = gpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import jax, flax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"
timeout 300 $PY -m benchmarks.xla_probe --device "$DEV" $Q --sets cublas,notune,default --timeout 110 \
  --out "$OUT" > "$OUT/xla_probe.log" 2>&1
grep -v -i warn "$OUT/xla_probe.log" | grep -E "^\||^==|compiled|XLA_FLAGS=|Error|error" | tail -30
BEST=$(grep "^XLA_FLAGS=" "$OUT/xla_probe.log" | tail -1 | cut -d= -f2-)
BEST=${BEST:---xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false}
echo "== benchmarking with XLA_FLAGS='$BEST'"
export XLA_FLAGS="$BEST"
timeout 90 $PY -m benchmarks.golden_check 2>&1 | grep -v Warning | tee "$OUT/golden_gpu.txt"
BF16_S=${BF16_S:-90}
echo "== bfloat16 rows: budget $BF16_S s"
timeout $(( BF16_S + 40 )) $PY -m benchmarks.run --device "$DEV" --no-profile --out "$OUT" --precision bf16 \
  $Q --models "${BF% *}" --schedules "${BF#* }" --backends jax,torch_ref --tag bench_bf16 \
  --budget-min "$(( BF16_S * 10 / 60 ))e-1" > "$OUT/bench_bf16.log" 2>&1
grep -v Warning "$OUT/bench_bf16.log" | grep -v "warn(" | tail -12
# the benchmark gets what is left of TOTAL_S (default 500 s) for the whole script, at least 150 s
LEFT=$(( ${TOTAL_S:-500} - SECONDS )); [ "$LEFT" -lt 150 ] && LEFT=150
echo "== headline benchmark: budget $LEFT s"
timeout $(( LEFT + 40 )) $PY -m benchmarks.run --device "$DEV" --no-profile --out "$OUT" --precision fp32 \
  $Q $SCHED --backends jax,torch_ref,hf --budget-min "$(( LEFT * 10 / 60 ))e-1" > "$OUT/bench_gpu.log" 2>&1
grep -v Warning "$OUT/bench_gpu.log" | grep -v "warn(" | tail -40
