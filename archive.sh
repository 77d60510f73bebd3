#!/usr/bin/env bash
# Build TorchServe archives for polydet: a thin wrapper over `polydet archive` (src/polydet/serving/archive.py,
# which also says what each archive holds). Defaults: model_store/polydet.mar (TorchScript) and
# model_store/polydet_onnx.mar (ONNX) from the bundled weights; up-to-date archives are kept unless --force.
# --formats int8: model_store/polydet_int8.mar, ONNX Runtime INT8 (--int8 PATH: `polydet quantize`'s output).
# --gpu: for CUDA workers: exported on this machine's GPU, with the GPU batching (src/polydet/serving/archive.py
#        GPU_FORMATS, GPU_BATCHING; BENCHMARKS.md "GPU serving"); --formats aoti_fp16: the AOTInductor fp16 package.
#
# Usage: ./archive.sh [--force] [--weights PATH|random] [--artifact PATH] [--store DIR] [--formats "torchscript onnx"]
#                     [--int8 PATH]
#                     [--name polydet] [--version 1.0] [--imgsz 224] [--build DIR (build/archive)]
#        ./archive.sh --help   (every option, with its default)
# model-config.yaml values may also come from the environment (each is the option of the same name):
#   BATCH_SIZE MAX_BATCH_DELAY MIN_WORKERS MAX_WORKERS RESPONSE_TIMEOUT TORCH_THREADS
#   CONF IOU MAX_DET MULTI_LABEL AGNOSTIC MAX_PIXELS PIN_CPU
# PYTHON: the interpreter to run (default: .venv/bin/python beside this script, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS=()
for VAR in BATCH_SIZE MAX_BATCH_DELAY MIN_WORKERS MAX_WORKERS RESPONSE_TIMEOUT TORCH_THREADS CONF IOU MAX_DET \
           MULTI_LABEL AGNOSTIC MAX_PIXELS PIN_CPU; do
  if [ -n "${!VAR:-}" ]; then
    FLAG="--$(echo "$VAR" | tr 'A-Z_' 'a-z-')"
    ARGS+=("$FLAG" "${!VAR}")
  fi
done
exec "$PY" -m polydet.cli archive "${ARGS[@]}" "$@"
