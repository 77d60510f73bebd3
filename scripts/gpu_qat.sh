#!/usr/bin/env bash
# Issue 12 on the GPU machine, in ONE device call (<= 570 s wall): does INT8 beat fp32 on that host's CPU, and does
# QAT beat PTQ? This project's CPU (AMD EPYC, AVX2, no VNNI) runs every INT8 flavour at 0.76-0.96x fp32, so the
# speed target (INT8 >= 1.2x fp32) can only be checked on a CPU with VNNI/AMX, if the GPU host has one.
#
#   bash scripts/gpu_qat.sh fetch    # HERE (has pip's registry): the pinned wheels for the GPU machine -> .whl/qat (36 MB)
#   bash scripts/gpu_qat.sh run      # THERE (device tool, carry .whl/qat): the parts below, cheap and decisive first
#
# Parts, each under its own `timeout` (T_* seconds, also cut to what is left of TOTAL), logged (progress bars
# dropped) to $OUT/log.txt, exit status and seconds in $OUT/parts.tsv; a part that fails or times out does not stop
# the next ones. $OUT gets 8 files at most (the device tool's limit): parts.tsv, log.txt, cpu.txt, cpu.json,
# speed.json, qat_report.json, eval.json (each as soon as its part ends) and, last, artifacts.tar (the three ONNX
# files, the .md tables); the rest stays in WORK:
#   install  the wheels into /tmp/site_qat (PYTHONPATH: they win over the image's onnx 1.23.1 / onnxruntime 1.30.0)
#   cpu      lscpu, /proc/cpuinfo's INT8 flags (avx512_vnni, avx_vnni, amx_*) and polydet's VNNI test -> cpu.txt, cpu.json
#   val      N_VAL validation scenes (seed 999, the model card's) in /tmp, rendered on every core
#   build    fp32 ONNX and PTQ INT8 (`polydet quantize`: its defaults, N_CALIB synthetic calibration images) -> WORK/art
#   speed    fp32 vs PTQ INT8 in one process pinned to cores PIN, 1 ONNX Runtime thread per session, batch 1 latency
#            and batch 8 throughput interleaved over ROUNDS rounds (benchmarks/quant_bench.py --no-eval) -> speed.json/.md
#   qat      fake-quant fine-tune on DEVICE for QAT_BUDGET s of training (`polydet qat --graph GRAPH --time-budget`),
#            exported through PTQ's quantizer (graph ort: PTQ's op graph, so PTQ's speed) -> art/qat_int8.onnx, qat_report.json
#   eval     fp32, PTQ and QAT: mAP50 / mAP50-95 on the N_VAL scenes, export checks, and the pinned speed again with
#            the QAT row (quant_bench.py --row) -> eval.json/.md
# reduce_range is RR (auto: on unless the CPU has VNNI, as users get it) for both PTQ and QAT.
# Local check of the whole thing on the CPU (no install, tiny sizes):
#   SKIP_INSTALL=1 PY=.venv/bin/python DEVICE=cpu STEPS=2 BATCH=2 WORKERS=1 QAT_BUDGET=20 N_VAL=16 N_CALIB=4 \
#     ROUNDS=2 OUT=/tmp/qat_local bash scripts/gpu_qat.sh run
set -uo pipefail
export PYTHONPATH="$PWD/src:/tmp/site_qat${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-runs/qat}
PY=${PY:-python3}          # the GPU machine's python3 (3.12) holds torch
WEIGHTS=${WEIGHTS:-weights/polydet_main_area.pt}
DEVICE=${DEVICE:-cuda}     # where QAT fine-tunes (export and checks run on the CPU)
STEPS=${STEPS:-20000}      # a cap: QAT_BUDGET ends training first (GRAPH=qat freezes ranges at 70 % of STEPS: size it)
BATCH=${BATCH:-64}         # images per QAT step
WORKERS=${WORKERS:-14}     # scene-rendering processes for QAT: every core but the trainer's
QAT_BUDGET=${QAT_BUDGET:-180}  # seconds of QAT training (then its export and checks; CPU here: 20 s)
GRAPH=${GRAPH:-ort}        # ort: PTQ's graph with QAT's weights; qat: the trained Q/DQ pairs (slower graph)
RR=${RR:-auto}             # reduce_range for PTQ and QAT: auto | on | off
N_VAL=${N_VAL:-300}        # validation scenes (seed 999)
N_CALIB=${N_CALIB:-64}     # PTQ calibration images (synthetic, their own seed)
ROUNDS=${ROUNDS:-15}       # interleaved speed rounds (each: ITERS batch-1 runs, ITERS/4 batch-8 runs per artifact)
ITERS=${ITERS:-20}
PIN=${PIN:-0,1}            # cores of the speed measurements
TOTAL=${TOTAL:-560}        # wall seconds for all parts (the device call allows 600)
T_INSTALL=${T_INSTALL:-40} T_CPU=${T_CPU:-15} T_VAL=${T_VAL:-45} T_BUILD=${T_BUILD:-90} T_SPEED=${T_SPEED:-60}
T_QAT=${T_QAT:-$((QAT_BUDGET + 70))} T_EVAL=${T_EVAL:-120}
WORK=${WORK:-/tmp/gpu_qat}  # logs, tables and artifacts before they are picked into $OUT
VAL=/tmp/val999_$N_VAL ART=$WORK/art
export PY OUT WORK ART WEIGHTS N_CALIB RR PIN
polydet() { "$PY" -c 'import sys; from polydet.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

part() {  # part NAME SECONDS CMD...: run CMD under a timeout cut to what is left of TOTAL; log; record
  local name=$1 want=$2 left t0 rc
  shift 2
  left=$((TOTAL - SECONDS - 5))
  ((want > left)) && want=$left
  if ((want < 5)); then
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/parts.tsv"; echo "== $name: skipped (no time left)"; return 1
  fi
  echo "== $name (timeout ${want}s, at ${SECONDS}s)"
  t0=$SECONDS
  timeout -k 5 "$want" bash -c '"$@"' _ "$@" >"$WORK/$name.log" 2>&1  # bash: CMD may be a function below
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/parts.tsv"
  { echo "=== $name: exit $rc after $((SECONDS - t0)) s"; tr '\r' '\n' <"$WORK/$name.log" |
    grep -v -e '^calibrating' -e 'Please consider' -e '^[[:space:]]*$'; } >>"$OUT/log.txt"
  tr '\r' '\n' <"$WORK/$name.log" | grep -v -e '^calibrating' -e 'Please consider' -e '^[[:space:]]*$' | tail -n "${TAIL:-6}"
  echo "== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
  return "$rc"
}

cpu_facts() {
  { lscpu 2>&1 || true; echo "--- /proc/cpuinfo flags (first cpu) ---"; grep -m1 '^flags' /proc/cpuinfo; } >"$OUT/cpu.txt"
  "$PY" - "$OUT/cpu.json" <<'EOF'
import json, os, sys
from pathlib import Path
from polydet.optimize.report import cpu_facts
info = Path("/proc/cpuinfo").read_text()
flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
want = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]
import onnxruntime
out = {**cpu_facts(), "cores": os.cpu_count(), "int8_flags": {f: f in flags for f in want},
       "onnxruntime": onnxruntime.__version__, "onnxruntime_file": onnxruntime.__file__}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
print(json.dumps(out))
EOF
}

pinned() {  # the speed parts run on cores PIN only (recorded in their JSON as cpu_affinity)
  if taskset -c "$PIN" true 2>/dev/null; then taskset -c "$PIN" "$@"; else echo "taskset -c $PIN failed: unpinned"; "$@"; fi
}

build() {  # unpinned (every core calibrates); the artifacts travel back in $OUT/art
  set -e
  polydet export --weights "$WEIGHTS" --format onnx --out "$ART/fp32.onnx"
  polydet quantize --weights "$WEIGHTS" --n-calib "$N_CALIB" --reduce-range "$RR" --out "$ART/ptq_int8.onnx"
}
install_wheels() {  # the pinned wheels; if they do not import there (the image's protobuf, say), onnxslim alone
  rm -rf /tmp/site_qat
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_qat .whl/qat/*.whl
  "$PY" -c 'import onnx, onnxruntime.quantization, onnxslim' && return 0
  echo "the pinned onnx/onnxruntime do not import here: the image's own, with onnxslim from .whl/qat"
  rm -rf /tmp/site_qat
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_qat .whl/qat/onnxslim-*.whl
}
export -f polydet cpu_facts pinned build install_wheels

case "${1:-}" in
  fetch)
    # the versions pinned in pyproject.toml's onnx/optimize extras (the CPU machine's), for the GPU machine's
    # CPython 3.12 (KINDS.md); onnx and onnxruntime 1.2x ship manylinux_2_27/2_28 wheels only
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
      -d .whl/qat onnx==1.23.2 onnxruntime==1.32.0 onnxslim==0.1.98
    ls -la .whl/qat
    ;;
  run)
    rm -rf "$ART" && mkdir -p "$OUT" "$ART"
    : >"$OUT/parts.tsv"
    : >"$OUT/log.txt"
    if [ "${SKIP_INSTALL:-0}" != 1 ]; then
      part install "$T_INSTALL" install_wheels
    fi
    "$PY" -c 'import torch, onnx, onnxruntime, onnxslim; print("torch", torch.__version__, torch.cuda.is_available(),
      "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__, "onnxslim", onnxslim.__version__)' 2>&1 | tee -a "$OUT/log.txt"
    part cpu "$T_CPU" cpu_facts
    [ -f "$VAL/dataset.json" ] || part val "$T_VAL" polydet data synth "$VAL" --n "$N_VAL" --seed 999 --workers "$(nproc)" --no-progress
    part build "$T_BUILD" build
    mkdir -p /tmp/qb && ln -sfn "$VAL" /tmp/qb/val  # quant_bench's --work reuses the scenes rendered above
    TAIL=12 part speed "$T_SPEED" pinned "$PY" benchmarks/quant_bench.py --no-eval --row "fp32=$ART/fp32.onnx" \
      --row "int8 PTQ=$ART/ptq_int8.onnx" --n-val "$N_VAL" --work /tmp/qb --rounds "$ROUNDS" --iters "$ITERS" --weights "$WEIGHTS" \
      --out "$WORK/speed"
    cp "$WORK/speed.json" "$OUT/" 2>/dev/null
    part qat "$T_QAT" polydet qat --weights "$WEIGHTS" --device "$DEVICE" --graph "$GRAPH" --steps "$STEPS" \
      --time-budget "$QAT_BUDGET" --batch "$BATCH" --workers "$WORKERS" --reduce-range "$RR" --out "$ART/qat_int8.onnx" \
      --report "$OUT/qat_report.json"  # written only when the run ends
    rows=(--row "fp32=$ART/fp32.onnx" --row "int8 PTQ=$ART/ptq_int8.onnx")
    [ -s "$ART/qat_int8.onnx" ] && rows+=(--row "int8 QAT=$ART/qat_int8.onnx")
    TAIL=12 part eval "$T_EVAL" pinned "$PY" benchmarks/quant_bench.py "${rows[@]}" --n-val "$N_VAL" --work /tmp/qb \
      --rounds "$ROUNDS" --iters "$ITERS" --weights "$WEIGHTS" --out "$WORK/eval"
    cp "$WORK/eval.json" "$OUT/" 2>/dev/null
    tar -C "$WORK" -cf "$OUT/artifacts.tar" art $(cd "$WORK" && ls ./*.md 2>/dev/null)
    echo "== parts (name, exit, seconds) after ${SECONDS}s"; cat "$OUT/parts.tsv"
    ;;
  *)
    sed -n '2,25p' "$0"
    exit 2
    ;;
esac
