#!/usr/bin/env bash
# Quantization-aware training on the GPU machine (issue 12 item 5), for when the CPU run (2 shared cores, a few
# dozen steps in 15 minutes) is too short to tell QAT from PTQ. Not run yet: written for a later device run.
#
#   bash scripts/gpu_qat.sh fetch                 # HERE (has pip's registry): wheels the GPU machine lacks -> .whl/qat
#   bash scripts/gpu_qat.sh run [STEPS] [BATCH]   # THERE (device tool, carry .whl/qat): QAT + PTQ on one val set
#
# `run` fine-tunes the bundled weights with fake quantization on CUDA (`polydet qat --device cuda --graph ort`: the
# fine-tuned weights exported through PTQ's quantizer, so QAT and PTQ run the same graph at the same speed; the
# export and its ONNX Runtime check run on the CPU there; GRAPH=qat exports the trained Q/DQ pairs instead),
# quantizes the same weights with PTQ (`polydet quantize`, its defaults), and evaluates fp32, PTQ and QAT on the
# same 300 validation scenes (seed 999). reduce_range is
# forced on (`--reduce-range on`) so that the QAT artifact is the one a CPU without VNNI (this project's CPU
# machine) runs without u8s8 saturation; the GPU host's CPU may have VNNI. Speed is measured on the CPU machine
# afterwards (benchmarks/quant_bench.py --qat $OUT/qat.onnx), where the BENCHMARKS numbers come from.
# Results land in $OUT (default runs/qat): qat.onnx, qat_report.json, ptq_report.json, qat.log.
set -euo pipefail
export PYTHONPATH="$PWD/src:/tmp/site_qat${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-runs/qat}
PY=${PY:-python3}  # the GPU machine's python3 holds torch
VAL=${VAL:-/tmp/val999_300}
WORKERS=${WORKERS:-15}  # scenes are rendered on the CPU: every core but the training process's
polydet() { "$PY" -c 'import sys; from polydet.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

case "${1:-}" in
  fetch)
    # the versions pinned in pyproject.toml's onnx/optimize extras (the CPU machine's), for CPython 3.11 x86_64
    "${PY}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
      -d .whl/qat onnx==1.23.2 onnxruntime==1.32.0 onnxslim==0.1.98
    ls -la .whl/qat
    ;;
  run)
    steps=${2:-2000} batch=${3:-64}
    mkdir -p "$OUT"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_qat .whl/qat/*.whl
    "$PY" -c 'import torch, onnx, onnxruntime; print("torch", torch.__version__, torch.cuda.get_device_name(0),
      "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
    [ -f "$VAL/dataset.json" ] || polydet data synth "$VAL" --n 300 --seed 999 --workers 16 --no-progress
    polydet qat --weights weights/polydet_main_area.pt --device cuda --graph "${GRAPH:-ort}" --steps "$steps" --batch "$batch" \
      --workers "$WORKERS" --reduce-range on --out "$OUT/qat.onnx" --data "$VAL" --report "$OUT/qat_report.json" \
      2>&1 | tee "$OUT/qat.log"
    polydet quantize --weights weights/polydet_main_area.pt --reduce-range on --out "$OUT/ptq_int8.onnx" \
      --data "$VAL" --no-speed --report "$OUT/ptq_report.json" 2>&1 | tee "$OUT/ptq.log"
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
