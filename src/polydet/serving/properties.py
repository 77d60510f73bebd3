"""TorchServe's configuration as polydet writes it: .properties files, ports, and the effective config.

The template (``config.properties``, which polydet ships in its package) owns ports and security; the
effective config adds absolute paths and the files the package provides (:func:`effective_properties`).
Standard library only: the container's entrypoint and healthcheck use these without torch.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
METRICS_YAML = PACKAGE_DIR / "metrics.yaml"
LOG4J2_XML = PACKAGE_DIR / "log4j2.xml"


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> "Ports":
        """Five distinct free loopback ports (all bound at once so none is handed out twice)."""
        socks = []
        try:
            for _ in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    def properties(self) -> dict[str, str]:
        return {
            "inference_address": f"http://127.0.0.1:{self.inference}",
            "management_address": f"http://127.0.0.1:{self.management}",
            "metrics_address": f"http://127.0.0.1:{self.metrics}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.grpc_inference),
            "grpc_management_port": str(self.grpc_management),
        }

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> "Ports":
        def port(key, default):
            value = props.get(key)
            return int(value.rsplit(":", 1)[1]) if value and ":" in value else int(value or default)

        d = cls()
        return cls(port("inference_address", d.inference), port("management_address", d.management),
                   port("metrics_address", d.metrics), port("grpc_inference_port", d.grpc_inference),
                   port("grpc_management_port", d.grpc_management))


def read_properties(path: str | Path) -> dict[str, str]:
    """Parse a Java .properties file the way TorchServe's launcher does (key=value, # comments)."""
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def write_properties(props: dict[str, str], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def resolve_paths(props: dict[str, str], base: Path) -> dict[str, str]:
    """Make the relative paths of a config (model_store, metrics_config, the log4j file) absolute."""
    out = dict(props)
    for key in ("model_store", "metrics_config", "workflow_store"):
        if out.get(key) and not os.path.isabs(out[key]):
            out[key] = str((base / out[key]).resolve())
    if out.get("vmargs"):
        out["vmargs"] = " ".join(_resolve_vmarg(a, base) for a in out["vmargs"].split())
    return out


# JVM options whose value is a file: (prefix up to the path, the rest after it)
_VMARG_PATHS = ("-Dlog4j.configurationFile=", "-javaagent:")


def _resolve_vmarg(arg: str, base: Path) -> str:
    for prefix in _VMARG_PATHS:
        if arg.startswith(prefix):
            path, sep, options = arg[len(prefix):].partition("=")  # -javaagent:JAR=OPTIONS
            if path and not os.path.isabs(path) and "://" not in path:
                return f"{prefix}{(base / path).resolve()}{sep}{options}"
    return arg


def default_config() -> Path:
    """The TorchServe config shipped with polydet (the repository's config.properties)."""
    from .. import assets

    return assets.path(assets.CONFIG)


def effective_properties(template: str | Path, store_guard: bool = True,
                         overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The config TorchServe runs with: ``template``'s settings with its relative paths made absolute
    (against its own folder) and ``overrides`` applied, plus the files polydet ships with its package:
    the metrics declarations and log config unless the config names its own, and the store guard's
    agent (SECURITY.md), added to whatever ``vmargs`` the template or the overrides give.
    ``store_guard=False`` exists only for the tests that show the hole the guard closes."""
    from .storeguard import jar_path

    template = Path(template).resolve()
    props = resolve_paths(read_properties(template), template.parent)
    props.update(overrides or {})
    props.setdefault("metrics_config", str(METRICS_YAML))
    args = props.get("vmargs", "").split()
    if not any(a.startswith("-Dlog4j.configurationFile=") for a in args):
        args.append(f"-Dlog4j.configurationFile={LOG4J2_XML}")
    if store_guard:
        args.append(f"-javaagent:{jar_path()}")
    props["vmargs"] = " ".join(args)
    return props


# (config key, env var, default port) of the three HTTP listeners; the gRPC ones have separate keys.
HTTP_LISTENERS = (("inference_address", "POLYDET_INFERENCE_PORT", 8080),
                  ("management_address", "POLYDET_MANAGEMENT_PORT", 8081),
                  ("metrics_address", "POLYDET_METRICS_PORT", 8082))
GRPC_LISTENERS = (("grpc_inference_address", "grpc_inference_port", "POLYDET_GRPC_INFERENCE_PORT", 7070),
                  ("grpc_management_address", "grpc_management_port", "POLYDET_GRPC_MANAGEMENT_PORT", 7071))


LISTENER_KEYS = (*(k for k, _, _ in HTTP_LISTENERS), *(k for g in GRPC_LISTENERS for k in g[:2]))


def _port(env: str, current: str | None, default: int) -> str:
    value = os.environ.get(env) or current or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{env}={value!r} is not a port")
    return value


def with_environment(props: dict[str, str]) -> dict[str, str]:
    """The bind address (POLYDET_BIND_ADDRESS) and ports (POLYDET_*_PORT) of the environment applied to a
    config: how the container and `polydet serve` are moved off the template's listeners."""
    bind = os.environ.get("POLYDET_BIND_ADDRESS", "127.0.0.1")
    url_host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind  # IPv6 in a URL
    for key, env, default in HTTP_LISTENERS:
        scheme, _, rest = props.get(key, f"http://127.0.0.1:{default}").partition("://")
        current = rest.rsplit(":", 1)[1] if ":" in rest else None
        props[key] = f"{scheme}://{url_host}:{_port(env, current, default)}"
    for addr_key, port_key, env, default in GRPC_LISTENERS:
        props[addr_key] = bind.strip("[]")
        props[port_key] = _port(env, props.get(port_key), default)
    return props
