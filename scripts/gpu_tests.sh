#!/usr/bin/env bash
# Run on the GPU machine (the `device` tool runs this from the repo root; $OUT collects results):
#   CUDA tests (an artifact exported on the CPU runs on CUDA and vice versa, fp16, ops on CUDA) and the
#   model-only throughput benchmark. shapely is not there; the CUDA tests do not need it.
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -ra -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
rc=${PIPESTATUS[0]}
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 benchmarks/gpu_model_throughput.py --json "$OUT/gpu_model_throughput.json" 2>&1 | tee "$OUT/gpu_model_throughput.log"
fi
exit $rc
