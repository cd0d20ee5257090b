#!/usr/bin/env bash
# One call on a lent GPU machine (about 9 minutes; the lease is 15 minutes in all, start included):
# library versions, golden parity on the GPU per matrix-product precision, an XLA-flags probe of the
# unmerged UMT-B (is the float32 GEMM the gap?), then the GPU benchmark of the headline schedules.
#
# Usage, from the repository root: OUT=<results dir> TLDR_GOLDEN_DIR=<folder with golden_model.npz
# and umt_tiny.pth> bash benchmarks/device_check.sh
#
# Learned on an H200 (2026-11-26): compiling a merging schedule takes 15-37 s there even with
# autotuning off, so the full 10-schedule UMT-B group alone outran a 330 s limit with autotuning on;
# hence --schedules and the autotune level below.
set -u
OUT=${OUT:-/tmp/tldr_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
BENCH="$PY -m benchmarks.run --device gpu --no-profile --out $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import jax, flax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"
timeout 90 $PY -m benchmarks.golden_check 2>&1 | grep -v Warning | tee "$OUT/golden_gpu.txt"
probe() {  # probe NAME PRECISION FLAGS: UMT-B r0, batch 1, tldr_jax only
  echo "== probe $1: precision $2, XLA_FLAGS='$3'"
  XLA_FLAGS="$3" timeout 60 $BENCH --precision "$2" --models umt_b16 --batch 1 --backends jax \
    --schedules r0 --budget-min 0.8 --tag "probe_$1" 2>&1 | grep -E " r0:|compiled"
}
probe notune_fp32 fp32 "--xla_gpu_autotune_level=0"
probe notune_tf32 tf32 "--xla_gpu_autotune_level=0"
probe cublas_fp32 fp32 "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"
probe default_fp32 fp32 ""
XLA_FLAGS=${XLA_FLAGS:---xla_gpu_autotune_level=0} timeout 200 $BENCH --precision fp32 \
  --schedules r0,msrvtt,solve-40% --backends jax,torch_ref,hf --budget-min 3.0 > "$OUT/bench_gpu.log" 2>&1
grep -v Warning "$OUT/bench_gpu.log" | grep -v "warn(" | tail -40
rm -f "$OUT"/probe*  # at most 8 files come back
