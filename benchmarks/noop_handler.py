"""A TorchServe handler that does nothing, for measuring TorchServe's own cost per request.

It answers every request of a batch with an empty output-contract body without decoding the image, so
what a load test measures against it is the transport: the client, the Java frontend, the frontend <->
worker protocol and the Python worker's loop. Built into noop.mar by benchmarks/tune_cpu.py --transport.
"""

import json


class NoopHandler:
    def __init__(self):
        self.initialized = False

    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return [json.dumps({"width": len(req.get("body") or req.get("data") or b""), "height": 0, "detections": []})
                for req in data]
