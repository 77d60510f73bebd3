"""REST and gRPC clients for a polydet TorchServe: predict, ping and the management calls.

Both clients have the same methods and return plain dicts: ``predict`` returns the output contract
(``{"width", "height", "detections": [...]}``), management calls return TorchServe's JSON answer.
Any refusal (HTTP >= 400, a gRPC error, or a handler error body) raises :class:`ClientError` with the
status and TorchServe's message. ``predict_many`` sends several images in one request and returns one
entry per image, in order: the output contract, or that image's ``{"error", "code"}``; it raises only
when the request is refused whole (over the server's limits, a bad option, TorchServe's own refusals).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ..errors import PolydetError
from .server import Tokens

DEFAULT_MODEL = "polydet"


class ClientError(PolydetError):
    """The server refused a request. ``status``: HTTP code (REST, handler errors) or gRPC code name."""

    def __init__(self, status, message: str, body=None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body


def _image_bytes(image: bytes | str | Path) -> bytes:
    return bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


def _json_request(image: bytes, options: dict | None, dewarp: bool) -> dict:
    body = {"image": base64.b64encode(image).decode("ascii"), **(options or {})}
    if dewarp:
        body["dewarp"] = True
    return body


def _json_many(images: list[bytes], options: dict | None, dewarp: bool) -> dict:
    body = {"images": [base64.b64encode(b).decode("ascii") for b in images], **(options or {})}
    if dewarp:
        body["dewarp"] = True
    return body


def input_names(n: int) -> list[str]:
    """Input names of a several-inputs request: the server answers them in their names' natural order."""
    return [f"image{i}" for i in range(n)]


def _check_results(body, status, bare: bool = False) -> list:
    """A multi-image answer -> its per-image results (also when every image failed: the results are the
    answer); a request refused whole raises ClientError. ``bare``: one image sent as one form field or gRPC
    input, which the server answers as a single-image request (the contract or the error, not a list)."""
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        return body["results"]
    if bare and isinstance(body, dict) and ("detections" in body or "error" in body):
        return [body]
    if isinstance(body, dict) and "error" in body:
        raise ClientError(body.get("code", status), body["error"], body)
    raise ClientError(status, f"unexpected answer to a multi-image request: {str(body)[:200]}", body)


def _check_prediction(result, status):
    """Handler errors come back as {"error", "code"} (over gRPC with status OK): raise them."""
    if isinstance(result, dict) and "error" in result and "detections" not in result:
        raise ClientError(result.get("code", status), result["error"], result)
    return result


class RestClient:
    """TorchServe's REST APIs. Tokens: from ``Tokens`` or ``RestClient.from_key_file``; None sends none."""

    def __init__(self, url: str = "http://127.0.0.1:8080", management_url: str = "http://127.0.0.1:8081",
                 tokens: Tokens | None = None, timeout: float = 120.0):
        import requests

        self.url = url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.session = requests.Session()

    @classmethod
    def from_key_file(cls, key_file: str | Path = "key_file.json", **kw) -> "RestClient":
        return cls(tokens=Tokens.read(key_file, timeout=0), **kw)

    def _headers(self, kind: str) -> dict:
        token = getattr(self.tokens, kind, None) if self.tokens else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, url: str, kind: str, **kw):
        r = self.session.request(method, url, headers={**self._headers(kind), **kw.pop("headers", {})},
                                 timeout=self.timeout, **kw)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            msg = body.get("message") or body.get("error") if isinstance(body, dict) else str(body)
            raise ClientError(r.status_code, str(msg)[:500], body)
        return body

    # -- inference ---------------------------------------------------------------------------------
    def predict(self, image: bytes | str | Path, model: str = DEFAULT_MODEL, version: str | None = None,
                mode: str | None = None, options: dict | None = None, dewarp: bool = False) -> dict:
        """mode: "raw" (octet-stream body), "multipart" or "json" (base64; default when options/dewarp)."""
        data = _image_bytes(image)
        mode = mode or ("json" if options or dewarp else "raw")
        url = f"{self.url}/predictions/{model}" + (f"/{version}" if version else "")
        if mode != "json" and (options or dewarp):
            raise ValueError("per-request options and dewarp need mode='json'")
        if mode == "raw":
            kw = {"data": data, "headers": {"Content-Type": "application/octet-stream"}}
        elif mode == "multipart":
            kw = {"files": {"data": ("image", data, "application/octet-stream")}}
        elif mode == "json":
            kw = {"json": _json_request(data, options, dewarp)}
        else:
            raise ValueError(f"mode must be raw, multipart or json, got {mode!r}")
        return _check_prediction(self._call("POST", url, "inference", **kw), 200)

    def predict_many(self, images: list, model: str = DEFAULT_MODEL, version: str | None = None,
                     mode: str = "json", options: dict | None = None, dewarp: bool = False) -> list[dict]:
        """Several images in one request. mode: "json" ({"images": [base64...], options}) or "multipart"
        (one file per image, fields image0, image1, ...; no options)."""
        data = [_image_bytes(i) for i in images]
        url = f"{self.url}/predictions/{model}" + (f"/{version}" if version else "")
        if mode == "json":
            kw = {"json": _json_many(data, options, dewarp)}
        elif mode == "multipart":
            if options or dewarp:
                raise ValueError("per-request options and dewarp need mode='json'")
            kw = {"files": [(n, (n, b, "application/octet-stream")) for n, b in zip(input_names(len(data)), data)]}
        else:
            raise ValueError(f"mode must be json or multipart for several images, got {mode!r}")
        bare = mode == "multipart" and len(data) == 1
        try:
            body = self._call("POST", url, "inference", **kw)
        except ClientError as e:  # every image failed: the status is the first one's, the results are there
            if isinstance(e.body, dict) and (isinstance(e.body.get("results"), list) or (bare and "error" in e.body)):
                return _check_results(e.body, e.status, bare)
            raise
        return _check_results(body, 200, bare)

    def ping(self) -> dict:
        return self._call("GET", f"{self.url}/ping", "inference")

    # -- management --------------------------------------------------------------------------------
    def register(self, url: str, model_name: str | None = None, initial_workers: int = 1,
                 synchronous: bool = True, batch_size: int | None = None, max_batch_delay: int | None = None,
                 response_timeout: int | None = None) -> dict:
        params = {"url": url, "initial_workers": initial_workers, "synchronous": str(synchronous).lower(),
                  "model_name": model_name, "batch_size": batch_size, "max_batch_delay": max_batch_delay,
                  "response_timeout": response_timeout}
        params = {k: v for k, v in params.items() if v is not None}
        return self._call("POST", f"{self.management_url}/models", "management", params=params)

    def unregister(self, model: str, version: str | None = None) -> dict:
        return self._call("DELETE", self._model_url(model, version), "management")

    def scale(self, model: str, version: str | None = None, min_worker: int | None = None,
              max_worker: int | None = None, synchronous: bool = True) -> dict:
        params = {"min_worker": min_worker, "max_worker": max_worker, "synchronous": str(synchronous).lower()}
        params = {k: v for k, v in params.items() if v is not None}
        return self._call("PUT", self._model_url(model, version), "management", params=params)

    def set_default(self, model: str, version: str) -> dict:
        return self._call("PUT", f"{self._model_url(model, version)}/set-default", "management")

    def list(self, limit: int = 100) -> dict:
        return self._call("GET", f"{self.management_url}/models", "management", params={"limit": limit})

    def describe(self, model: str, version: str | None = None) -> list:
        return self._call("GET", self._model_url(model, version), "management")

    def _model_url(self, model: str, version: str | None) -> str:
        return f"{self.management_url}/models/{model}" + (f"/{version}" if version else "")


class GrpcClient:
    """TorchServe's gRPC APIs (stubs generated from the installed jar; see grpc_stubs)."""

    def __init__(self, target: str = "127.0.0.1:7070", management_target: str = "127.0.0.1:7071",
                 tokens: Tokens | None = None, timeout: float = 120.0, max_message_bytes: int = 16 * 2**20):
        import grpc

        from . import grpc_stubs

        self.pb = grpc_stubs.load()
        self.tokens = tokens
        self.timeout = timeout
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)]
        self._channels = [grpc.insecure_channel(target, options=opts),
                          grpc.insecure_channel(management_target, options=opts)]
        self.inference = self.pb.inference_pb2_grpc.InferenceAPIsServiceStub(self._channels[0])
        self.management = self.pb.management_pb2_grpc.ManagementAPIsServiceStub(self._channels[1])

    @classmethod
    def from_key_file(cls, key_file: str | Path = "key_file.json", **kw) -> "GrpcClient":
        return cls(tokens=Tokens.read(key_file, timeout=0), **kw)

    def close(self) -> None:
        for c in self._channels:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, kind: str):
        import grpc

        token = getattr(self.tokens, kind, None) if self.tokens else None
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            return method(request, metadata=metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "", e) from e

    # -- inference ---------------------------------------------------------------------------------
    def predict(self, image: bytes | str | Path, model: str = DEFAULT_MODEL, version: str | None = None,
                options: dict | None = None, dewarp: bool = False) -> dict:
        """The image goes in input key ``data``; options/dewarp send the JSON request form instead."""
        data = _image_bytes(image)
        if options or dewarp:
            data = json.dumps(_json_request(data, options, dewarp)).encode()
        req = self.pb.inference_pb2.PredictionsRequest(model_name=model, model_version=version or "",
                                                       input={"data": data})
        resp = self._call(self.inference.Predictions, req, "inference")
        return _check_prediction(json.loads(resp.prediction), "OK")

    def predict_many(self, images: list, model: str = DEFAULT_MODEL, version: str | None = None,
                     mode: str = "json", options: dict | None = None, dewarp: bool = False) -> list[dict]:
        """Several images in one request. mode: "json" (the JSON object in input ``data``) or "keys" (one
        input per image, image0, image1, ...; no options)."""
        data = [_image_bytes(i) for i in images]
        if mode == "json":
            inputs = {"data": json.dumps(_json_many(data, options, dewarp)).encode()}
        elif mode == "keys":
            if options or dewarp:
                raise ValueError("per-request options and dewarp need mode='json'")
            inputs = dict(zip(input_names(len(data)), data))
        else:
            raise ValueError(f"mode must be json or keys for several images, got {mode!r}")
        req = self.pb.inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input=inputs)
        resp = self._call(self.inference.Predictions, req, "inference")
        return _check_results(json.loads(resp.prediction), "OK", bare=mode == "keys" and len(data) == 1)

    def ping(self) -> dict:
        from google.protobuf import empty_pb2

        resp = self._call(self.inference.Ping, empty_pb2.Empty(), "inference")
        return _maybe_json(resp.health)

    # -- management --------------------------------------------------------------------------------
    def register(self, url: str, model_name: str | None = None, initial_workers: int = 1,
                 synchronous: bool = True, batch_size: int | None = None, max_batch_delay: int | None = None,
                 response_timeout: int | None = None) -> dict:
        kw = {"url": url, "model_name": model_name, "initial_workers": initial_workers, "synchronous": synchronous,
              "batch_size": batch_size, "max_batch_delay": max_batch_delay, "response_timeout": response_timeout}
        req = self.pb.management_pb2.RegisterModelRequest(**{k: v for k, v in kw.items() if v is not None})
        return self._mgmt(self.management.RegisterModel, req)

    def unregister(self, model: str, version: str | None = None) -> dict:
        req = self.pb.management_pb2.UnregisterModelRequest(model_name=model, model_version=version or "")
        return self._mgmt(self.management.UnregisterModel, req)

    def scale(self, model: str, version: str | None = None, min_worker: int | None = None,
              max_worker: int | None = None, synchronous: bool = True) -> dict:
        kw = {"model_name": model, "model_version": version or "", "min_worker": min_worker,
              "max_worker": max_worker, "synchronous": synchronous}
        req = self.pb.management_pb2.ScaleWorkerRequest(**{k: v for k, v in kw.items() if v is not None})
        return self._mgmt(self.management.ScaleWorker, req)

    def set_default(self, model: str, version: str) -> dict:
        req = self.pb.management_pb2.SetDefaultRequest(model_name=model, model_version=version)
        return self._mgmt(self.management.SetDefault, req)

    def list(self, limit: int = 100) -> dict:
        # limit must be set: TorchServe 0.12.0 returns an empty list for limit 0 (the proto default).
        return self._mgmt(self.management.ListModels, self.pb.management_pb2.ListModelsRequest(limit=limit))

    def describe(self, model: str, version: str | None = None) -> list:
        req = self.pb.management_pb2.DescribeModelRequest(model_name=model, model_version=version or "")
        return self._mgmt(self.management.DescribeModel, req)

    def _mgmt(self, method, request):
        return _maybe_json(self._call(method, request, "management").msg)


def _maybe_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return {"status": text}
