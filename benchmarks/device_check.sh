#!/usr/bin/env bash
# One call on a lent GPU machine, at most about 7 minutes (TOTAL_S=420 by default): the verification of
# tldr_jax's GPU settings (issue 31; README "On a GPU: options").
#  1. versions (GPU, driver, jax, torch);
#  2. benchmarks.xla_probe on UMT-B/16 r = 0 and MSRVTT, each set in its own process capped at PROBE_S
#     (120 s): apply(gpu_tuning="heuristic"), apply(gpu_tuning="tuned"), XLA's defaults with the fusion
#     autotuner off; latency, compile seconds, XLA's peak memory per program, GEMM TFLOP/s beside
#     PyTorch's; then "tuned" again in a fresh process on the same compile cache (cache hits expected),
#     and the PyTorch reference eager and under torch.compile;
#  3. golden parity (float64 and float32) under the winning gpu_tuning;
#  4. optional (BENCH=1, when time is left): the headline benchmark under the winner.
#
# Usage, from the repository root: OUT=<results dir> TLDR_GOLDEN_DIR=<folder with golden_model.npz,
# golden_model_f64.npz and umt_tiny.pth> bash benchmarks/device_check.sh
# Smoke test of the script on a CPU (tiny models, a few minutes): DEV=cpu QUICK=1 bash benchmarks/device_check.sh
#
# Learned on an H200 (2026-11-26): with --xla_gpu_autotune_level=0 alone tldr_jax was 3.3-4x slower than
# PyTorch (untuned Triton GEMM tiles), and with autotuning on, the ten merging UMT-B programs did not
# compile within 330 s; gpu_tuning="heuristic" (cuBLAS, no autotuning) is the default built from that.
set -u
OUT=${OUT:-/tmp/tldr_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEV=${DEV:-gpu}
PROBE_S=${PROBE_S:-120}
TORCH=${TORCH:-eager,compile}
if [ -n "${QUICK:-}" ]; then Q="--quick --repeats 3"; SCHED=""
else Q="--repeats 20"; SCHED="--schedules r0,msrvtt"; fi
unset XLA_FLAGS  # the sets name their own; a flag left here would override them
[ "$DEV" = gpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import jax, jaxlib, flax, torch; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax',
flax.__version__, 'torch', torch.__version__, jax.devices())"
CACHE="$OUT/probe_cache"
rm -rf "$CACHE"
# 3 sets + 1 again + 2 PyTorch rows, each capped at PROBE_S and at what is left of the probe's 270 s
timeout 300 $PY -m benchmarks.xla_probe --device "$DEV" $Q --sets heuristic,tuned,fusion_off --again tuned --budget 270 \
  --torch "$TORCH" --timeout "$PROBE_S" --cache "$CACHE" --out "$OUT" > "$OUT/xla_probe.log" 2>&1
grep -v -i warn "$OUT/xla_probe.log" | grep -E "^\||^==|compiled|GPU_TUNING=|XLA_FLAGS=|Error|error" | tail -40
BEST=$(grep "^GPU_TUNING=" "$OUT/xla_probe.log" | tail -1 | cut -d= -f2-)
BEST=${BEST:-heuristic}
FLAGS=$(grep "^XLA_FLAGS=" "$OUT/xla_probe.log" | tail -1 | cut -d= -f2-)
echo "== golden parity with gpu_tuning=$BEST XLA_FLAGS='$FLAGS'"
XLA_FLAGS="$FLAGS" timeout 90 $PY -m benchmarks.golden_check --gpu-tuning "$BEST" 2>&1 | grep -v Warning \
  | tee "$OUT/golden_gpu.txt"
LEFT=$(( ${TOTAL_S:-420} - SECONDS ))
if [ -n "${BENCH:-}" ] && [ "$LEFT" -gt 90 ]; then
  echo "== headline benchmark with gpu_tuning=$BEST: budget $LEFT s"
  XLA_FLAGS="$FLAGS" timeout $(( LEFT + 20 )) $PY -m benchmarks.run --device "$DEV" --no-profile --out "$OUT" \
    --precision fp32 --gpu-tuning "$BEST" $Q $SCHED --backends jax,torch_ref \
    --budget-min "$(( LEFT * 10 / 60 ))e-1" > "$OUT/bench_gpu.log" 2>&1
  grep -v Warning "$OUT/bench_gpu.log" | grep -v "warn(" | tail -30
fi
echo "== done in $SECONDS s"
