# The two commands README opens with: `make serve` and `make test`. Both build the environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The isolated venvs of conflicting toolchains (KServe, PyTriton, RKNN; polydet.envs), built once per checkout.
export POLYDET_ENVS ?= $(CURDIR)/.venvs
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-pins.txt | sha1sum | cut -c1-12)

.PHONY: install serve stop test test-unit archives bench image sysdeps clean data-sources heldout-report train-smoke

$(STAMP): pyproject.toml requirements-pins.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build (see requirements-pins.txt)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-pins.txt
	$(BIN)/pip install -q --disable-pip-version-check -c requirements-pins.txt -e '.[all]'
	# TensorRT's type stubs, for the mypy check of the TensorRT modules (tests/unit/test_tensorrt_types.py):
	# --no-deps because they require tensorrt itself, whose PyPI package downloads from NVIDIA's index
	$(BIN)/pip install -q --disable-pip-version-check --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

install: $(STAMP)

archives: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH ./archive.sh

# polydet serve builds the archives itself when they are missing or out of date (polydet archive).
serve: $(STAMP)
	$(BIN)/polydet serve

stop:
	$(BIN)/polydet stop

# System packages the integration tests use (a real Prometheus). Best effort: tests skip with the
# reason when one is missing.
sysdeps:
	@command -v prometheus >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || echo "prometheus could not be installed; its test will skip"; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) || echo "nginx could not be installed; tests/reliability/test_proxy.py will skip"; }
	@command -v pdftoppm >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils >/dev/null) || echo "poppler-utils could not be installed; polydet data sources cannot render PDF manuals"; }

# The runtimes that bring their own native libraries (OpenVINO, NCNN, MNN) run in a second pytest process:
# with numba's cache empty (a fresh machine), the first numba compilation in a process that had loaded
# OpenVINO crashed it (SIGSEGV, seen twice on the full suite, never with either alone). OpenVINO goes last.
RUNTIME_TESTS := tests/unit/test_ncnn.py tests/unit/test_mnn.py tests/integration/test_cpu_runtimes_served.py \
	tests/unit/test_openvino.py tests/integration/test_openvino_served.py

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -ra tests $(addprefix --ignore=,$(RUNTIME_TESTS))
	$(BIN)/python -m pytest -q -ra $(RUNTIME_TESTS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests/unit

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_nms.py

# Issue 16: the generator's extra sources (Debian wallpapers, PDF manuals, a CJK font; ~22 MB, ignored),
# the held-out set built from the held-out packages only and its report on the bundled weights, and a
# CPU smoke run of scripts/gpu_train.sh's v2 command (a few steps; the GPU runs the real one).
data-sources: $(STAMP) sysdeps
	$(BIN)/python -m polydet.cli data sources

heldout-report: $(STAMP)
	test -f data_sources/manifest.json || $(MAKE) data-sources
	test -f runs/heldout990/dataset.json || $(BIN)/python -m polydet.cli data heldout runs/heldout990 --workers 2 --no-progress
	$(BIN)/python -m polydet.cli data report --model weights/polydet_main_area.pt --data runs/heldout990 \
		--out benchmarks/results/heldout/current_224

train-smoke: $(STAMP)
	test -f data_sources/manifest.json || $(MAKE) data-sources
	rm -rf runs/smoke
	DEVICE=cpu PY=$(CURDIR)/$(BIN)/python WORKERS=2 OUT=runs/smoke/out VAL=runs/smoke/val VAL_N=8 \
		V2VAL=runs/smoke/v2val V2VAL_N=8 HELDOUT=runs/smoke/heldout HELDOUT_N=8 \
		scripts/gpu_train.sh v2 weights/polydet_main_area.pt 3 --epochs 1 --epoch-size 16 --batch 8 \
		--reuse 2 --replay-batches 2 --device cpu --seed 4000

# The container image, built with buildah (no Docker daemon needed; as root). `docker build .` works too.
image:
	scripts/build_image.sh --local

clean:
	rm -rf $(VENV) model_store/*.mar build dist
