# polydet served by TorchServe 0.12.0: Debian bookworm (python3 3.11, Java 17), torch in a venv, the
# archives built at build time, a non-root user, TorchServe in the foreground behind a small PID-1
# entrypoint, a HEALTHCHECK that works with token authorization on.
#
# CPU (public defaults: debian:bookworm-slim, PyPI, torch from the PyTorch CPU index):
#   docker build -t polydet:cpu .
# GPU (torch's CUDA wheels bundle CUDA; the host needs the NVIDIA driver and container toolkit):
#   docker build -t polydet:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all ...
# Users who publish ports (a container network of its own) must bind 0.0.0.0, see BIND_ADDRESS below:
#   docker build -t polydet:cpu --build-arg BIND_ADDRESS=0.0.0.0 .   (or -e POLYDET_BIND_ADDRESS=0.0.0.0)
#   docker run -p 127.0.0.1:8080:8080 polydet:cpu
# Hosts without a registry or Docker daemon: scripts/build_image.sh --local (buildah, a debootstrapped
# base, this machine's pip CA bundle and wheel folder). HEALTHCHECK needs the docker image format
# (`buildah bud --format docker`); the OCI format has no field for it.
#
# Clients need the tokens TorchServe writes at each start (mode 600, owned by the container user):
#   docker exec CONTAINER cat /var/lib/polydet/key_file.json

# Base image and package sources are build arguments so hosts without Docker Hub or PyPI can point
# them elsewhere. PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and PIP_CERT are read by pip as
# they are; they have no default (an unset ARG is absent from RUN's environment) and, being ARGs,
# never reach the final image. PIP_CERT names a CA bundle mounted into the build (`buildah bud -v`)
# for registries behind a TLS-inspecting proxy.
ARG BASE_IMAGE=debian:bookworm-slim

# ---- os: the apt layer both stages share (one apt-get run per build) ----------------------------
FROM ${BASE_IMAGE} AS os
# --no-install-recommends keeps the JRE headless and small. python3-venv brings ensurepip (pip for
# the venv). ca-certificates: pip's and Java's TLS roots. nginx: the front that SECURITY.md asks for in
# front of TorchServe's REST API; the image only carries it (never started as a service): Kubernetes runs it
# as the pod's "proxy" container (`python -m polydet.serving.podproxy run`, deploy/k8s), `docker run` users
# as a second container of this image (README, "Scale out").
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv openjdk-17-jre-headless ca-certificates nginx \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# ---- build: the polydet wheel and the files the runtime stage needs -----------------------------
FROM os AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
COPY . /src
# pip fetches the build backend (setuptools>=68, newer than Debian's) into an isolated build env.
RUN python3 -m venv /tmp/wheel-venv \
 && /tmp/wheel-venv/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps -w /dist /src
# /app: what the runtime needs beside the wheel (which holds the handler, the config template, the log and
# metrics configs, the store guard and the bundled weights): the container's scripts, archive.sh, the
# config template as a file to read or replace, and weights/ for extra ARCHIVE_ARGS such as --weights.
RUN mkdir -p /app/weights \
 && cp -r /src/archive.sh /src/config.properties /src/docker /app/ \
 && if [ -d /src/weights ]; then cp -rL /src/weights/. /app/weights/; fi \
 && grep -v '^torch==' /src/requirements-pins.txt > /dist/constraints.txt

# ---- runtime ------------------------------------------------------------------------------------
FROM os AS runtime
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# torch is installed first and on its own: PyPI's default Linux torch is a multi-GB CUDA build.
# CPU (default): the PyTorch CPU index. GPU: a CUDA index (…/whl/cu128) or TORCH_INDEX="" for PyPI's
# CUDA build. TORCH_INDEX="" also lets PIP_FIND_LINKS supply a local wheel (torch==2.13.0 matches
# 2.13.0+cpu, which pip prefers as the higher local version).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
# Extra archive.sh arguments, e.g. "--formats torchscript" or "--weights weights/other.pt".
ARG ARCHIVE_ARGS=""
# Address every TorchServe listener binds inside the container (POLYDET_BIND_ADDRESS at run time).
# 127.0.0.1, the default, is right with the host's network (`--network host`, or buildah run with
# chroot isolation as the tests do): the ports are then the host's loopback ports, unreachable from
# other machines, as in config.properties. With a network of its own (Docker's default bridge) the
# container's loopback is unreachable from outside, so published ports (-p) need 0.0.0.0. The trade-
# off: every interface of the container then answers, including the management API (tokens still
# required) and the metrics port (no authentication in TorchServe); publish only what you need and to
# the host's loopback (-p 127.0.0.1:8080:8080), never 8081/7071/8082 to a public interface.
ARG BIND_ADDRESS=127.0.0.1
# A fixed numeric UID: Kubernetes' runAsNonRoot can only verify a numeric USER.
ARG APP_UID=10001

# numba's cache of the compiled kernels (the NMS in polydet.ops._nms_numba, the JPEG scan check in
# polydet._jpeg_walk), filled at build time below, as the server's user, so that workers load them
# while they start instead of compiling them.
# numba only uses a cache folder it can write to, so the folder belongs to that user (unlike the code
# and the model store: the cache holds compiled code, but only this container's own user can change
# it, and every new container starts from the image's copy). Where it is not writable (another
# --user, a read-only root filesystem) each worker compiles the kernel, still while it starts.
# NUMBA_CPU_NAME=generic: code for any x86-64 CPU (no AVX; ~0.1 ms slower at 1000 candidates), so
# the cache built here is valid on whatever machine runs the image (numba keys its cache by CPU name
# and features: with the host's CPU, another CPU model would compile again).
ENV POLYDET_HOME=/var/lib/polydet \
    POLYDET_CONFIG=/opt/polydet/config.properties \
    POLYDET_BIND_ADDRESS=${BIND_ADDRESS} \
    NUMBA_CACHE_DIR=/var/cache/polydet/numba \
    NUMBA_CPU_NAME=generic \
    PATH=/opt/polydet/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1

COPY --from=build /dist /tmp/dist
RUN python3 -m venv /opt/polydet/venv \
 && pip install --no-cache-dir --disable-pip-version-check ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC" \
 && pip install --no-cache-dir --disable-pip-version-check -c /tmp/dist/constraints.txt \
      "$(ls /tmp/dist/polydet-*.whl)[serve,onnx]" \
 && rm -rf /tmp/dist

# Archives are built at build time: the image serves without network or write access to its store.
# The store and code stay root-owned and read-only for the server's user (a .mar runs code).
COPY --from=build /app /opt/polydet
RUN cd /opt/polydet \
 && PYTHON=/opt/polydet/venv/bin/python ./archive.sh --store /opt/polydet/model_store \
      --build /tmp/archive-build ${ARCHIVE_ARGS} \
 && rm -rf /tmp/archive-build /root/.cache \
 && chmod 0755 docker/entrypoint.py docker/healthcheck.py \
 && groupadd --gid ${APP_UID} polydet \
 && useradd --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /var/lib/polydet \
      --shell /usr/sbin/nologin polydet \
 && install -d -o polydet -g polydet -m 0700 /var/lib/polydet \
 && install -d -m 0755 /var/cache/polydet \
 && rm -rf "$NUMBA_CACHE_DIR" && install -d -o polydet -g polydet -m 0755 "$NUMBA_CACHE_DIR" \
 && setpriv --reuid=${APP_UID} --regid=${APP_UID} --clear-groups \
      python -c "from polydet.ops.nms import warmup; assert warmup() == 'numba', 'numba NMS kernel did not load'; \
from polydet.jpegcheck import warmup; assert warmup(), 'numba JPEG scan kernel did not load'" \
 && { find "$NUMBA_CACHE_DIR" -name '*.nbi' | grep -q . \
      || { echo "numba wrote no NMS kernel cache in $NUMBA_CACHE_DIR" >&2; exit 1; }; }

USER ${APP_UID}:${APP_UID}
WORKDIR /var/lib/polydet
EXPOSE 8080 8081 8082 7070 7071
# start-period: the worker is READY 3-10 s after start on a small CPU; allow slow hosts.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/opt/polydet/venv/bin/python", "/opt/polydet/docker/healthcheck.py"]
STOPSIGNAL SIGTERM
# The entrypoint stays PID 1 and runs `torchserve --foreground`; docker/entrypoint.py says why it does
# not exec it. Arguments after the image name are passed on to torchserve.
ENTRYPOINT ["/opt/polydet/venv/bin/python", "/opt/polydet/docker/entrypoint.py"]
CMD []
