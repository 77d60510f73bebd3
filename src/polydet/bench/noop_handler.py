"""A TorchServe handler that does nothing: TorchServe's own round trip, the baseline of `bench compare`.

It answers every request of a batch with the same small JSON body, reading nothing, so that a request to
it costs the frontend, the worker protocol and the transport, and no polydet code.
"""


class NoopHandler:
    def __init__(self):
        self.initialized = False

    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return ['{"width":0,"height":0,"detections":[]}'] * len(data)
