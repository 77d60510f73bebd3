"""What the KServe and Triton fronts share: their command line and building the DetectionService."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def make_parser(prog: str, http_port: int, grpc_port: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m polydet.fronts.{prog}",
                                description=f"serve polydet with {prog} over the Open Inference Protocol")
    p.add_argument("--artifact", required=True, help="TorchScript/ONNX artifact or checkpoint")
    p.add_argument("--model-config", help="a model-config.yaml whose `handler:` section configures the service "
                   "(thresholds, limits; the archive's own); default: ServiceConfig's defaults")
    p.add_argument("--name", default="polydet", help="model name (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: loopback only)")
    p.add_argument("--http-port", type=int, default=http_port, help="v2 REST port (default %(default)s)")
    p.add_argument("--grpc-port", type=int, default=grpc_port, help="v2 gRPC port (default %(default)s)")
    return p


def handler_section(model_config: str | None) -> dict | None:
    """The ``handler:`` section of a model-config.yaml (None: the defaults)."""
    if not model_config:
        return None
    import yaml

    return (yaml.safe_load(Path(model_config).read_text()) or {}).get("handler")


def load_service(args: argparse.Namespace, batch_size: int = 1):
    """The front's DetectionService, warmed up (unless the section says not) up to ``batch_size``."""
    from ..serving.service import DetectionService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = DetectionService.from_artifact(args.artifact, handler_section(args.model_config),
                                             batch_size=batch_size)
    logging.getLogger("polydet").info("polydet: %s", service.describe())
    return service

