#!/usr/bin/env bash
# Build the polydet image with buildah (no Docker daemon needed; run as root).
#
#   scripts/build_image.sh                 public defaults: debian:bookworm-slim, PyPI, PyTorch CPU index
#   scripts/build_image.sh --local         this machine's resources (what the tests use):
#       - base image: debootstrapped Debian bookworm from docker/make_base_image.sh (cached)
#       - pip: the CA bundle and the find-links folder of this host's pip configuration are mounted
#         into the build (PIP_CERT, PIP_FIND_LINKS), torch comes from that folder (TORCH_INDEX="")
#   scripts/build_image.sh --gpu           torch from the PyTorch CUDA index (TORCH_INDEX, see Dockerfile)
#
# Options: --tag NAME [polydet:cpu | polydet:gpu]  --base IMAGE  --layers (reuse cached layers)
# Anything after `--` goes to `buildah bud` (e.g. -- --build-arg BIND_ADDRESS=0.0.0.0).
# The image is written in docker format: the OCI format has no HEALTHCHECK.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG=""
BASE=""
LOCAL=0
GPU=0
LAYERS=false
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift ;;
    --base) BASE="$2"; shift ;;
    --local) LOCAL=1 ;;
    --gpu) GPU=1 ;;
    --layers) LAYERS=true ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build_image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v buildah >/dev/null || { echo "build_image.sh: buildah not found (apt-get install buildah)" >&2; exit 1; }
[ -n "$TAG" ] || { [ "$GPU" = 1 ] && TAG=polydet:gpu || TAG=polydet:cpu; }

ARGS=(--isolation chroot --format docker --layers="$LAYERS" -f "$ROOT/Dockerfile" -t "$TAG")
if [ "$GPU" = 1 ]; then
  ARGS+=(--build-arg TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}")
fi

if [ "$LOCAL" = 1 ]; then
  [ -n "$BASE" ] || { BASE=localhost/polydet-base:bookworm; "$ROOT/docker/make_base_image.sh" "$BASE"; }
  PIP=(python3 -m pip)
  [ -x "$ROOT/.venv/bin/pip" ] && PIP=("$ROOT/.venv/bin/pip")
  # `pip config list` shows the environment (":env:.cert=...") before the config files, the order in
  # which pip itself lets them win.
  pip_conf() { "${PIP[@]}" config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | head -1; }
  CERT="$(pip_conf cert)"
  LINKS="$(pip_conf find-links)"
  if [ -n "$CERT" ] && [ -f "$CERT" ]; then
    ARGS+=(-v "$CERT:/run/polydet-build/ca.crt:ro" --build-arg PIP_CERT=/run/polydet-build/ca.crt)
  fi
  MOUNTED=()
  i=0
  for dir in $LINKS; do  # space-separated, as pip writes it; only local folders can be mounted
    dir="${dir#file://}"
    [ -d "$dir" ] || continue
    ARGS+=(-v "$dir:/run/polydet-build/wheels$i:ro")
    MOUNTED+=("/run/polydet-build/wheels$i")
    i=$((i + 1))
  done
  if [ ${#MOUNTED[@]} -gt 0 ]; then
    ARGS+=(--build-arg PIP_FIND_LINKS="${MOUNTED[*]}")
    [ "$GPU" = 1 ] || ARGS+=(--build-arg TORCH_INDEX=)
  fi
  echo "build_image.sh: local build: base $BASE, CA bundle ${CERT:-none}, find-links ${LINKS:-none}"
fi
[ -z "$BASE" ] || ARGS+=(--build-arg BASE_IMAGE="$BASE")

START=$(date +%s)
buildah bud "${ARGS[@]}" "${EXTRA[@]}" "$ROOT"
echo "build_image.sh: built $TAG in $(( $(date +%s) - START )) s"
