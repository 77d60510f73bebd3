#!/usr/bin/env bash
# Make a local Debian bookworm base image with debootstrap and import it into buildah's storage: a
# stand-in for `debian:bookworm-slim` on hosts that reach the Debian mirror but no image registry.
# Idempotent and cached: an image already tagged is kept; the rootfs tarball is kept in the cache
# folder, so later runs (a wiped image store, a fresh CI checkout on the same host) skip debootstrap.
# Delete the tarball to pick up newer Debian packages (the Dockerfile installs, it does not upgrade).
#
# Usage: docker/make_base_image.sh [TAG]     (default localhost/polydet-base:bookworm; needs root)
# Env:   POLYDET_DOCKER_CACHE [~/.cache/polydet/docker]   DEBIAN_MIRROR [http://deb.debian.org/debian]
set -euo pipefail

TAG="${1:-localhost/polydet-base:bookworm}"
CACHE="${POLYDET_DOCKER_CACHE:-$HOME/.cache/polydet/docker}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="$CACHE/bookworm-minbase.tar"

if buildah inspect --type image "$TAG" >/dev/null 2>&1; then
  echo "make_base_image: $TAG exists"
  exit 0
fi
mkdir -p "$CACHE"
WORK=""
CTR=""
cleanup() {
  [ -z "$WORK" ] || rm -rf "$WORK"
  [ -z "$CTR" ] || buildah rm "$CTR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ ! -s "$TARBALL" ]; then
  WORK="$(mktemp -d "$CACHE/debootstrap.XXXXXX")"
  echo "make_base_image: debootstrap --variant=minbase bookworm from $MIRROR (about a minute)"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  # The same apt sources as debian:bookworm-slim: point releases and security updates too.
  rm -f "$WORK/rootfs/etc/apt/sources.list"
  cat > "$WORK/rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  # /dev, /proc and /sys are provided by the container runtime; their contents stay out of the image.
  tar -C "$WORK/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
fi

CTR="$(buildah from scratch)"
buildah add --quiet "$CTR" "$TARBALL" /
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash \
  --label org.opencontainers.image.description="debootstrap --variant=minbase bookworm" "$CTR"
buildah commit --quiet "$CTR" "$TAG" >/dev/null
echo "make_base_image: committed $TAG from $TARBALL"
