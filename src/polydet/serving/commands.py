"""CLI subcommands of the serving package: ``polydet client|manage|serve|stop``.

Each is a ``make_*_parser()`` plus a ``*_main(argv) -> int`` that calls into client.py / server.py.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import glob
import json
import sys
from pathlib import Path

from ..errors import PolydetError

IMAGE_GLOBS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp")


def _tokens(token_file: str | None):
    from .server import Tokens

    if token_file is None or token_file == "none":
        return None
    if not Path(token_file).exists():
        if token_file == "key_file.json":  # the default: no file -> no token (auth may be off)
            return None
        raise PolydetError(f"token file not found: {token_file}")
    return Tokens.read(token_file, timeout=0)


# -- polydet client ---------------------------------------------------------------------------------
def make_client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet client", description="Send images to a running polydet TorchServe "
                                "and print one output-contract JSON object per image.")
    sub = p.add_subparsers(dest="transport", required=True)
    for name in ("rest", "grpc"):
        q = sub.add_parser(name, help=f"over {name.upper()}")
        q.add_argument("images", nargs="+", help="image files")
        if name == "rest":
            q.add_argument("--url", default="http://127.0.0.1:8080", help="inference API (default %(default)s)")
            q.add_argument("--mode", choices=["raw", "multipart", "json"], help="request form (default: raw, "
                           "json when thresholds or --dewarp are given or --per-request > 1)")
        else:
            q.add_argument("--target", default="127.0.0.1:7070", help="gRPC inference (default %(default)s)")
            q.add_argument("--keys", action="store_true", help="with --per-request > 1: one input per image "
                           "(image0, image1, ...) instead of the JSON form")
        q.add_argument("--per-request", type=int, default=1, metavar="N", help="images per request (default 1); "
                       "the server answers each image in its place (its limit: handler.max_images_per_request)")
        q.add_argument("--token-file", default="key_file.json",
                       help="TorchServe's key_file.json (default: ./key_file.json; 'none' sends no token)")
        q.add_argument("--model", default="polydet", help="model name (default %(default)s)")
        q.add_argument("--version", help="model version (default: the default version)")
        q.add_argument("--conf", type=float, help="per-request confidence threshold")
        q.add_argument("--iou", type=float, help="per-request NMS IoU threshold")
        q.add_argument("--max-det", type=int, help="per-request max detections")
        q.add_argument("--dewarp", metavar="OUTDIR", help="ask for the rectified crop of the best detection "
                       "and write it to OUTDIR/<image stem>_dewarp.jpg")
    return p


def _client_call(args, options: dict):
    """call(list of image bytes) -> one result per image (a dict, or a ClientError for that image)."""
    from .client import ClientError, GrpcClient, RestClient

    tokens = _tokens(args.token_file)
    dewarp = bool(args.dewarp)
    if args.transport == "rest":
        client = RestClient(args.url, tokens=tokens)
        one = lambda b: client.predict(b, args.model, args.version, mode=args.mode, options=options,  # noqa: E731
                                       dewarp=dewarp)
        many = lambda bs: client.predict_many(bs, args.model, args.version, mode=args.mode or "json",  # noqa: E731
                                              options=options, dewarp=dewarp)
    else:
        client = GrpcClient(args.target, tokens=tokens)
        one = lambda b: client.predict(b, args.model, args.version, options=options, dewarp=dewarp)  # noqa: E731
        many = lambda bs: client.predict_many(bs, args.model, args.version,  # noqa: E731
                                              mode="keys" if args.keys else "json", options=options, dewarp=dewarp)

    def call(chunk: list[bytes]) -> list:
        try:
            if args.per_request == 1:
                return [one(chunk[0])]
            return [r if "error" not in r else ClientError(r.get("code"), r["error"], r) for r in many(chunk)]
        except ClientError as e:  # the request was refused whole: every image of it failed so
            return [e] * len(chunk)

    return call


def client_main(argv: list[str] | None = None) -> int:
    parser = make_client_parser()
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("conf", args.conf), ("iou", args.iou), ("max_det", args.max_det)) if v is not None}
    if getattr(args, "mode", None) in ("raw", "multipart") and (options or args.dewarp):
        parser.error("thresholds and --dewarp travel in the JSON request form: drop --mode or use --mode json")
    if args.per_request < 1:
        parser.error("--per-request must be at least 1")
    if args.per_request > 1 and getattr(args, "mode", None) == "raw":
        parser.error("a raw body carries one image: use --mode json or multipart with --per-request > 1")
    if getattr(args, "keys", False) and (options or args.dewarp):
        parser.error("thresholds and --dewarp travel in the JSON request form: drop --keys")
    try:
        call = _client_call(args, options)
    except PolydetError as e:
        print(f"polydet client: error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for start in range(0, len(args.images), args.per_request):
        paths = args.images[start:start + args.per_request]
        try:
            data = [Path(p).read_bytes() for p in paths]
        except OSError as e:
            print(f"{', '.join(paths)}: {e}", file=sys.stderr)
            failed += len(paths)
            continue
        for path, result in zip(paths, call(data)):
            if isinstance(result, PolydetError):
                print(f"{path}: {result}", file=sys.stderr)
                failed += 1
            else:
                print(json.dumps({"image": path, **_saved_dewarp(result, path, args.dewarp)}))
    return 1 if failed else 0


def _saved_dewarp(result: dict, path: str, outdir: str | None) -> dict:
    """The dewarped crop written to OUTDIR/<stem>_dewarp.jpg; its base64 replaced by the file's name."""
    if outdir and result.get("dewarp"):
        out = Path(outdir) / f"{Path(path).stem}_dewarp.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(result["dewarp"].pop("jpeg_base64")))
        result["dewarp"]["file"] = str(out)
    return result


# -- polydet manage ---------------------------------------------------------------------------------
def make_manage_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet manage", description="TorchServe management API (REST or gRPC).")
    p.add_argument("--grpc", action="store_true", help="use the gRPC management API instead of REST")
    p.add_argument("--url", default="http://127.0.0.1:8081", help="REST management API (default %(default)s)")
    p.add_argument("--target", default="127.0.0.1:7071", help="gRPC management (default %(default)s)")
    p.add_argument("--token-file", default="key_file.json", help="key_file.json ('none': no token)")
    sub = p.add_subparsers(dest="action", required=True)
    q = sub.add_parser("register", help="register an archive of the model store (bare NAME.mar)")
    q.add_argument("archive", metavar="URL", help="archive name in the model store, e.g. polydet_onnx.mar")
    q.add_argument("--name", help="model name (default: the archive's)")
    q.add_argument("--workers", type=int, help="workers (default: the archive's minWorkers/maxWorkers; TorchServe "
                   "0.12.0 lets those override its initial_workers parameter, so polydet scales to this number "
                   "once the model is registered)")
    q.add_argument("--batch-size", type=int, help="override the archive's batchSize")
    q.add_argument("--max-batch-delay", type=int, help="override the archive's maxBatchDelay (ms)")
    q.add_argument("--no-wait", action="store_true", help="return before the workers are up")
    q = sub.add_parser("unregister", help="unregister a model (version)")
    q.add_argument("name")
    q.add_argument("version", nargs="?")
    q = sub.add_parser("scale", help="set a model's worker range")
    q.add_argument("name")
    q.add_argument("version", nargs="?")
    q.add_argument("--min", type=int, dest="min_worker", help="min workers")
    q.add_argument("--max", type=int, dest="max_worker", help="max workers")
    q.add_argument("--no-wait", action="store_true", help="return before the workers are up")
    sub.add_parser("list", help="list registered models").add_argument("--limit", type=int, default=100)
    q = sub.add_parser("describe", help="describe a model (workers, batch settings)")
    q.add_argument("name")
    q.add_argument("version", nargs="?")
    q = sub.add_parser("set-default", help="make VERSION the default version of NAME")
    q.add_argument("name")
    q.add_argument("version")
    return p


def _register(client, args) -> dict:
    """Register, then make ``--workers`` hold: TorchServe 0.12.0 takes the archive's minWorkers over the
    register call's initial_workers, so the asked-for count is set with a scale call (min = max)."""
    out = client.register(args.archive, model_name=args.name, initial_workers=args.workers or 1,
                          synchronous=not args.no_wait, batch_size=args.batch_size,
                          max_batch_delay=args.max_batch_delay)
    if args.workers:
        name = args.name or Path(args.archive).name.removesuffix(".mar")
        client.scale(name, min_worker=args.workers, max_worker=args.workers, synchronous=not args.no_wait)
    return out


def manage_main(argv: list[str] | None = None) -> int:
    from .client import GrpcClient, RestClient

    args = make_manage_parser().parse_args(argv)
    try:
        tokens = _tokens(args.token_file)
        client = GrpcClient(management_target=args.target, tokens=tokens) if args.grpc else \
            RestClient(management_url=args.url, tokens=tokens)
        if args.action == "register":
            out = _register(client, args)
        elif args.action == "unregister":
            out = client.unregister(args.name, args.version)
        elif args.action == "scale":
            out = client.scale(args.name, args.version, args.min_worker, args.max_worker,
                               synchronous=not args.no_wait)
        elif args.action == "list":
            out = client.list(args.limit)
        elif args.action == "describe":
            out = client.describe(args.name, args.version)
        else:
            out = client.set_default(args.name, args.version)
    except PolydetError as e:
        print(f"polydet manage {args.action}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


# -- polydet serve / stop ---------------------------------------------------------------------------
def make_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet serve", description="Build the archives if needed, start TorchServe "
                                "in the background, wait until the model's worker is READY, send a sample "
                                "image through REST and print the detections. Works in any folder.")
    p.add_argument("--root", default=".", help="start folder: logs/, key_file.json, model_store/, build/; "
                   "weights/ and examples/ are used when present (default: the current folder)")
    p.add_argument("--config", help="TorchServe config (default: ROOT/config.properties if present, else "
                   "polydet's own)")
    p.add_argument("--weights", help="checkpoint to archive when the store lacks the archives "
                   "(default: ROOT/weights/polydet_main_area.pt if present, else the bundled model)")
    p.add_argument("--model", default="polydet", help="model to wait for and query (default %(default)s)")
    p.add_argument("--image", help="sample image (default: the first image in ROOT/examples/, else polydet's)")
    p.add_argument("--no-build", action="store_true", help="do not build archives")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for READY (default %(default)s)")
    p.add_argument("--proxy", type=int, metavar="PORT", help="also start nginx on 127.0.0.1:PORT in front of the "
                   "REST inference API (body cap, client timeouts, retry of a scaled-down worker's requests: "
                   "SECURITY.md); `polydet stop` stops it too")
    p.add_argument("--gpus", metavar="all|N|I,J", help="CUDA workers on every visible GPU (all), the first N or "
                   "the listed indices (one: 1,); CUDA_VISIBLE_DEVICES respected. Builds `polydet archive --gpu "
                   "--gpus` archives (workers = the one-GPU count x GPUs) and sets number_of_gpu")
    return p


def _start_proxy(ts, root: Path, port: int, state: Path) -> str:
    """nginx in front of ``ts``'s inference API; its PID goes into the state file for `polydet stop`."""
    from .proxy import MAX_BODY, Proxy

    proxy = Proxy(root / "logs" / "nginx", ts.inference_url.removeprefix("http://"), port,
                  max_body=int(ts.properties.get("max_request_size", MAX_BODY))).start()
    s = json.loads(state.read_text())
    s["proxy"] = proxy.state()
    state.write_text(json.dumps(s))
    return proxy.url


def _build(root: Path, weights: str | None, placement=None) -> None:
    """The CPU archives, or with a GPU placement (--gpus) `polydet archive --gpu --gpus`'s."""
    from .. import assets
    from .archive import GPU_FORMATS, ArchiveJob, build_archives, gpu_batching

    local = root / "weights" / assets.WEIGHTS
    job = ArchiveJob(root / "model_store", root / "build" / "archive",
                     weights=weights or (str(local) if local.is_file() else None))
    if placement is not None:
        job = dataclasses.replace(job, formats=GPU_FORMATS, batching=gpu_batching(placement), device="cuda")
    build_archives(job)


def _serve_config(root: Path, given: str | None) -> Path:
    """--config, else ROOT/config.properties if there is one, else the config polydet ships."""
    from .properties import default_config

    if given:
        return Path(given).resolve()
    local = root / "config.properties"
    return local if local.is_file() else default_config()


def serve_main(argv: list[str] | None = None) -> int:
    from .archive import placement_of
    from ..errors import ConfigError
    from .properties import LISTENER_KEYS, with_environment
    from .server import STATE_FILE, ServerError, TorchServe, read_properties

    args = make_serve_parser().parse_args(argv)
    root = Path(args.root).resolve()
    config = _serve_config(root, args.config)
    if not config.is_file():
        print(f"polydet serve: {config} not found", file=sys.stderr)
        return 2
    state = root / "logs" / STATE_FILE
    if _running(state):
        print(f"polydet serve: a TorchServe started from {root} is already running; stop it with `polydet stop`",
              file=sys.stderr)
        return 1
    try:
        # --gpus against the GPUs visible here; a bad one fails before anything is built
        placement = None if args.gpus is None else placement_of(args.gpus)
        if not args.no_build:
            _build(root, args.weights, placement)
    except PolydetError as e:
        print(f"polydet serve: {e}", file=sys.stderr)
        return 1
    try:  # POLYDET_BIND_ADDRESS / POLYDET_*_PORT move the listeners, as in the container
        listeners = with_environment(read_properties(config))
    except ConfigError as e:
        print(f"polydet serve: {e}", file=sys.stderr)
        return 2
    ts = TorchServe(run_dir=root, config=config, model_store=root / "model_store", tmp_dir=root / "logs" / "tmp",
                    properties={**{k: listeners[k] for k in LISTENER_KEYS}, **(placement.properties() if placement
                                                                                 else {})})  # number_of_gpu
    (ts.tmp_dir / ".model_server.pid").unlink(missing_ok=True)  # stale: _running() said no server
    try:
        ts.start()
        ts.save_state(state)
        ready = ts.wait_ready(args.model, timeout=args.timeout)
        front = _start_proxy(ts, root, args.proxy, state) if args.proxy else ts.inference_url
    except (ServerError, ConfigError, KeyboardInterrupt) as e:
        ts.stop()
        state.unlink(missing_ok=True)
        print(f"polydet serve: {e}", file=sys.stderr)
        return 1
    _announce(ts, args, root, front, ready, placement)
    return 0


def _announce(ts, args, root: Path, front: str, ready: float, placement) -> None:
    """Where the started server listens, and one sample request through it."""
    from .client import RestClient
    from .server import read_properties

    image = Path(args.image) if args.image else _sample_image(root)
    props = read_properties(ts.config_path)
    on = f", workers on {' '.join(placement.devices())}" if placement else ""
    print(f"TorchServe pid {ts.pid}: model {args.model!r} READY {ready:.1f} s after start "
          f"(store {props.get('model_store')}{on})")
    print(f"  inference  {front}   management {ts.management_url}   metrics {ts.metrics_url}/metrics")
    print(f"  gRPC       {ts.grpc_inference_target} (inference)   {ts.grpc_management_target} (management)")
    print(f"  tokens     {ts.key_file} (inference / management keys, expire after "
          f"{props.get('token_expiration_min', '60')} min)")
    try:
        result = RestClient(front, ts.management_url, tokens=ts.tokens).predict(image, args.model)
        print(f"sample {image}:")
        print(json.dumps(result))
    except PolydetError as e:
        print(f"sample request failed: {e}", file=sys.stderr)
    key = ts.tokens.inference
    print(f"try:  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/octet-stream' "
          f"--data-binary @{image} {front}/predictions/{args.model}")
    print(f"stop: polydet stop{'' if root == Path.cwd() else f' --root {root}'}   (logs in {ts.log_dir})")


def _running(state: Path) -> bool:
    import psutil

    try:
        s = json.loads(state.read_text())
        p = psutil.Process(s["pid"])
        return abs(p.create_time() - s["create_time"]) < 1.0
    except (OSError, ValueError, KeyError, psutil.Error):
        return False


def _sample_image(root: Path) -> Path:
    """The first image in ROOT/examples/, else the sample polydet ships."""
    from .. import assets

    for pattern in IMAGE_GLOBS:
        found = sorted(glob.glob(str(root / "examples" / pattern)))
        if found:
            return Path(found[0])
    return assets.path(assets.SAMPLE)


def make_stop_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet stop", description="Stop the TorchServe that `polydet serve` started.")
    p.add_argument("--root", default=".", help="folder `polydet serve` ran in (default: the current folder)")
    return p


def stop_main(argv: list[str] | None = None) -> int:
    from .server import STATE_FILE, stop_pid

    args = make_stop_parser().parse_args(argv)
    root = Path(args.root).resolve()
    state = root / "logs" / STATE_FILE
    try:
        s = json.loads(state.read_text())
    except (OSError, ValueError):
        print(f"polydet stop: no TorchServe started by `polydet serve` in {root} ({state} not found)")
        return 0
    stopped = stop_pid(s["pid"], create_time=s.get("create_time"))
    if "proxy" in s:
        from .proxy import stop_pid as stop_proxy

        px = s["proxy"]
        done = stop_proxy(px["pid"], create_time=px.get("create_time"), conf=px.get("conf"))
        print(f"nginx pid {px['pid']} " + ("stopped" if done else "was not running"))
    for f in (state, Path(s.get("tmp_dir", root / "logs" / "tmp")) / ".model_server.pid", root / "key_file.json"):
        Path(f).unlink(missing_ok=True)
    print(f"TorchServe pid {s['pid']} " + ("stopped" if stopped else "was not running"))
    return 0

