"""Where KServe 0.21.0's server falls short of the protocol for polydet, and the fix for each (``apply``).
Runs in the kserve venv before ``kserve.ModelServer`` is built. Each was seen against tritonclient 2.73.0:

1. It binds 0.0.0.0 (REST, uvicorn) and [::] (gRPC), hard-coded: ``--host`` is bound instead (and gRPC
   takes messages up to the handler's request limit).
2. tritonclient's JSON mode sends its body without a Content-Type; FastAPI then leaves it as bytes and
   KServe answers 400 "received byte inputs, but the 'inference-header-content-length' header is missing".
   A v2 infer POST with neither that header nor a Content-Type is marked application/json (what it is).
3. Binary BYTES inputs (``binary_data_size``) are turned back into JSON text by decoding every element as
   UTF-8: an image file is not UTF-8, so every binary request with a JPEG got a 500. Binary inputs are
   kept as the bytes they are (``_raw_data``, which ``InferInput.as_numpy`` deserializes).
4. An error of polydet's own status (``error_type``: 413, 415 ...) is answered with it on REST.
"""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse
from grpc import aio

HEADER = b"inference-header-content-length"


def _bind(host: str, max_message: int) -> None:
    import kserve.model_server as ms
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb
    from kserve.protocol.grpc.interceptors import (
        ExceptionToStatusInterceptor,
        LoggingInterceptor,
    )
    from kserve.protocol.grpc.servicer import InferenceServicer

    class Rest(ms.RESTServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.config.host = host

    class Grpc(ms.GRPCServer):  # GRPCServer.start with only the listening address changed
        async def start(self, max_workers):
            from concurrent import futures

            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                      interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                                      options=[("grpc.max_send_message_length", max_message),
                                               ("grpc.max_receive_message_length", max_message)])
            pb.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    ms.RESTServer, ms.GRPCServer = Rest, Grpc


def _json_without_content_type(app) -> None:
    inner = app.build_middleware_stack

    def build():
        asgi = inner()

        async def middleware(scope, receive, send):
            if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/infer"):
                names = {k.lower() for k, _ in scope["headers"]}
                if HEADER not in names and b"content-type" not in names:
                    scope = dict(scope, headers=[*scope["headers"], (b"content-type", b"application/json")])
            await asgi(scope, receive, send)
        return middleware
    app.build_middleware_stack = build


def _binary_inputs_as_bytes() -> None:
    from kserve.errors import InvalidInput
    from kserve.protocol import dataplane
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    class Request(InferRequest):
        @classmethod
        def from_bytes(cls, body: bytes, json_length: int, model_name: str) -> InferRequest:
            try:
                head = orjson.loads(body[:json_length])
            except orjson.JSONDecodeError as e:
                raise InvalidInput(f"Unrecognized request format: {e}") from e
            inputs, at = [], json_length
            for spec in head.get("inputs") or []:
                params = spec.get("parameters") or None
                t = InferInput(spec["name"], spec["shape"], spec["datatype"], spec.get("data"), params)
                if spec.get("data") is None:
                    size = (params or {}).get("binary_data_size")
                    if not isinstance(size, int) or size < 0 or at + size > len(body):
                        raise InvalidInput(f"input {spec['name']!r}: no 'data' and no valid 'binary_data_size'")
                    t._raw_data, at = body[at:at + size], at + size
                inputs.append(t)
            outputs = [RequestedOutput(o["name"], o.get("parameters")) for o in head.get("outputs") or []]
            return cls(model_name, inputs, request_id=head.get("id"), parameters=head.get("parameters"),
                       request_outputs=outputs or None)

    dataplane.InferRequest = Request


def apply(host: str, error_type: type, max_request_bytes: int) -> None:
    """All four fixes; ``error_type`` has ``http_status`` and ``details`` (the reason). gRPC messages may be
    as large as the handler's request limit plus room for the tensors' framing (KServe's default, 8 MiB, is
    below polydet's 16 MiB: grpc would refuse such a request before polydet's own 413)."""
    import kserve.model_server as ms

    _bind(host, max(8 * 2**20, max_request_bytes + 2**20))
    _json_without_content_type(ms.app)
    _binary_inputs_as_bytes()
    ms.app.add_exception_handler(error_type, lambda _, e: JSONResponse({"error": e.details}, e.http_status))
