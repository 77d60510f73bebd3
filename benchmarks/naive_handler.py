"""A naive TorchServe handler, for comparison only: the seeds' way inside TorchServe.

Per request, one at a time even when TorchServe hands over a batch: PIL decode and resize, the model on
one image, shapely-loop polygon NMS on the CPU (polydet.bench.naive.NaiveDetector). Same artifact and
thresholds as polydet's handler. Built into polydet_naive.mar by scripts/gpu_serve_bench.sh.
"""

import json
import os

from polydet.backends import load_backend
from polydet.bench.naive import NaiveDetector


class NaiveHandler:
    def __init__(self):
        self.naive = None
        self.initialized = False

    def initialize(self, context):
        props = context.system_properties
        gpu = props.get("gpu_id")
        artifact = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        backend = load_backend(artifact, device="cpu" if gpu is None else f"cuda:{gpu}")
        self.naive = NaiveDetector(backend)
        self.initialized = True

    def handle(self, data, context):
        return [json.dumps(self.naive.detect_one(bytes(req.get("body") or req.get("data")))) for req in data]
