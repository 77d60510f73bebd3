"""``polydet kserve-layout OUTDIR``: polydet for KServe's TorchServe runtime, as the folder its storageUri
points at. Facts for the InferenceService (read from TorchServe 0.12.0's source, kubernetes/kserve/):

- Layout (KServe's storage initializer puts the storageUri's content at ``/mnt/models``):
  ``OUTDIR/config/config.properties`` (TorchServe's config; the runtime starts ``torchserve --start
  --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties``),
  ``OUTDIR/config/metrics.yaml`` and ``log4j2.xml`` (polydet's metric declarations and log config, named
  by the config), ``OUTDIR/model-store/NAME.mar`` (built by polydet.serving.archive as ``polydet serve``
  builds them; ``--formats``). Paths inside the config are under ``--mount`` (default /mnt/models).
- Ports (in the pod): TorchServe's REST inference *and* management on 127.0.0.1:8085 (KServe's wrapper,
  kserve_wrapper/__main__.py, reads both addresses from this config, defaults 8085, and itself listens on
  8080 HTTP and 8081 gRPC: the container port of the InferenceService is 8080); TorchServe's gRPC
  127.0.0.1:7070/7071; Prometheus metrics 0.0.0.0:8082 (no auth in TorchServe: keep it in-cluster).
- ``service_envelope=kservev2``: requests are KServe v2 JSON (``POST /v2/models/NAME/infer``, through the
  wrapper's 8080 or TorchServe's own 8085): ``{"id", "inputs": [{"name": "images", "shape": [1],
  "datatype": "BYTES", "data": ["<base64 of the image file>"]}, {"name": "options", "shape": [1],
  "datatype": "BYTES", "data": ["{\\"conf\\": 0.4}"]}]}`` (options optional). TorchServe's envelope keeps
  one request per batch and the first element of a BYTES tensor, so batchSize is 1 and a request is one
  image; the answer's one output is named after the first input, BYTES [1], holding the REST API's JSON
  for the image (the output contract, or ``{"error", "code"}`` with that HTTP status).
  The envelope is set in the file, not through the runtime's ``TS_SERVICE_ENVELOPE`` (TorchServe reads
  ``TS_*`` variables only with ``enable_envvars_config=true``, which stays off so the environment cannot
  override this config, token authorization included).
- Token authorization is OFF here (``disable_token_authorization=true``): KServe's wrapper calls
  TorchServe's inference and management APIs without a token (pytorch/serve#3301), so with tokens every
  request and its readiness check would be refused. What stands instead: every TorchServe listener but
  metrics is on 127.0.0.1 (only the wrapper in the same pod reaches it; KServe's ingress and a
  NetworkPolicy decide who reaches the wrapper), the model API is off (no register/unregister),
  ``allowed_urls=^$`` and an impossible ``workflow_store`` refuse URLs and workflows. polydet's store
  guard (a Java agent inside polydet's package) is not used: with the model API off nothing registers.
- Environment: the wrapper needs ``PROTOCOL_VERSION=v2`` (KServe sets it from the InferenceService's
  ``protocolVersion: v2``) and reads ``CONFIG_PATH`` (default /mnt/models/config/config.properties).
  Leave ``MODEL_LOAD_CUSTOMIZED`` unset: its describe call goes through the envelope, which fails on it.
  The model names the wrapper serves come from ``model_snapshot`` in the config (one per archive).
- The runtime image must import polydet (the handler's library): build one FROM
  pytorch/torchserve-kfs:0.12.0 with the polydet wheel installed (per-model pip installs stay off).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .archive import SERVED, ArchiveJob, Batching, build_archives
from .properties import LOG4J2_XML, METRICS_YAML

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's content
INFERENCE_PORT = 8085  # KServe's wrapper: TorchServe behind it on 8085, itself on 8080 / 8081
# The kservev2 envelope answers one request per batch (ts/torch_handler/request_envelope/kservev2.py):
# a larger batch fails every request in it ("number of batch response mismatched").
BATCHING = Batching(batch_size=1, max_batch_delay=1)


def snapshot(archives: list[Path], version: str, batching: Batching = BATCHING) -> dict:
    """TorchServe's model_snapshot for the archives: what it loads at start and the wrapper's model names."""
    b = batching.to_yaml_keys()
    models = {a.stem: {version: {"defaultVersion": True, "marName": a.name, **b}} for a in archives}
    return {"name": "startup.cfg", "modelCount": len(models), "models": models}


def properties(archives: list[Path], version: str, mount: str = MOUNT, batching: Batching = BATCHING
               ) -> dict[str, str]:
    """The config.properties of the layout (see the module docstring for each choice)."""
    inference = f"http://127.0.0.1:{INFERENCE_PORT}"
    return {
        "inference_address": inference, "management_address": inference,
        "metrics_address": "http://0.0.0.0:8082", "metrics_mode": "prometheus", "enable_metrics_api": "true",
        "grpc_inference_address": "127.0.0.1", "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": "7070", "grpc_management_port": "7071",
        "model_store": f"{mount}/model-store",
        "model_snapshot": json.dumps(snapshot(archives, version, batching), separators=(",", ":")),
        "service_envelope": "kservev2",
        "disable_token_authorization": "true", "enable_model_api": "false", "allowed_urls": "^$",
        "workflow_store": "/dev/null/polydet-serves-no-workflows",
        "max_request_size": "16777216", "max_response_size": "16777216", "decode_input_request": "false",
        "metrics_config": f"{mount}/config/metrics.yaml",
        "vmargs": f"-Xmx1g -Xmn64m -XX:+ExitOnOutOfMemoryError -Dlog4j.configurationFile={mount}/config/log4j2.xml",
    }


def write_layout(out: Path, job: ArchiveJob, mount: str = MOUNT) -> list[Path]:
    """Build the archives into ``out/model-store`` and write ``out/config``; returns the archives."""
    archives = build_archives(job)
    config = out / "config"
    config.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(METRICS_YAML, config / "metrics.yaml")
    shutil.copyfile(LOG4J2_XML, config / "log4j2.xml")
    head = ("# Written by `polydet kserve-layout` for KServe's TorchServe runtime (polydet.serving.kserve_layout\n"
            "# says why each setting). Token authorization is off: KServe's wrapper sends no token.\n")
    body = "".join(f"{k}={v}\n" for k, v in properties(archives, job.version, mount, job.batching).items())
    (config / "config.properties").write_text(head + body)
    return archives


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet kserve-layout", description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path, help="the folder to upload as the InferenceService's storageUri")
    p.add_argument("--weights", help="checkpoint (default: the bundled model), or `random` for a demo")
    p.add_argument("--formats", default="torchscript onnx", help="formats to archive (default \"%(default)s\")")
    p.add_argument("--name", default="polydet")
    p.add_argument("--version", default="1.0")
    p.add_argument("--imgsz", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--workers", type=int, default=BATCHING.min_workers, help="workers per model (default %(default)s)")
    p.add_argument("--mount", default=MOUNT, help="where the pod sees OUTDIR (default %(default)s)")
    p.add_argument("--build", type=Path, default=Path("build/kserve-archive"), help="work folder")
    p.add_argument("--force", action="store_true", help="rebuild the archives even when up to date")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import PolydetError

    args = make_parser().parse_args(argv)
    out = args.outdir.resolve()
    batching = Batching(**{**BATCHING.__dict__, "min_workers": args.workers, "max_workers": args.workers})
    job = ArchiveJob(out / "model-store", args.build.resolve(), name=args.name, version=args.version,
                     weights=args.weights, formats=tuple(filter(None, args.formats.replace(",", " ").split())),
                     imgsz=args.imgsz, batching=batching, service=SERVED, force=args.force)
    try:
        archives = write_layout(out, job, args.mount)
    except PolydetError as e:
        print(f"polydet kserve-layout: {e}", file=sys.stderr)
        return 1
    print(f"polydet kserve-layout: {out}/config/config.properties, models {[a.stem for a in archives]} "
          f"(kservev2 envelope, inference on {INFERENCE_PORT}, token authorization off)")
    return 0
