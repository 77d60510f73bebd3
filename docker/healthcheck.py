#!/usr/bin/env python3
"""HEALTHCHECK of the polydet image, with TorchServe's token authorization on. Exit 0 healthy, 1 not.

Healthy means: GET /ping on the inference port, with the inference key, answers 200 "Healthy", and
every registered model has a READY worker (GET /models, /models/NAME on the management port with the
management key). /ping alone is not enough: it says Healthy before a model has loaded.

Addresses come from the effective config.properties docker/entrypoint.py writes into $POLYDET_HOME,
keys from the key_file.json TorchServe writes there (readable only by the container's user, which
HEALTHCHECK runs as). Keys expire (token_expiration_min) and TorchServe renews them only when asked
with the API key; a check that only read the file would turn unhealthy for good after an hour. So a key
whose expiration time has passed is renewed (GET /token?type=...) before use: it is dead for every
client already, the new one goes only into key_file.json (mode 600), and a key that still works is
never touched. Standard library and polydet's config reader only (no curl in the image, no torch).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from polydet.serving.properties import read_properties

TIMEOUT = 5.0  # s per request; the HEALTHCHECK's own timeout is 10 s


class Unhealthy(Exception):
    pass


def local_url(address: str) -> str:
    """A listener's address as a URL to reach it from inside the container (any-address -> loopback)."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}"


def call(url: str, key: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:  # noqa: S310 - a local http URL
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        raise Unhealthy(f"{url}: {e}") from e


def expired(entry: dict) -> bool:
    stamp = entry.get("expiration time")
    if not stamp:
        return False
    # TorchServe writes nanoseconds ("2026-01-01T10:00:00.123456789Z"); datetime takes microseconds.
    main, _, frac = stamp.rstrip("Z").partition(".")
    when = datetime.fromisoformat(main + ("." + frac[:6] if frac else "")).replace(tzinfo=timezone.utc)
    return when <= datetime.now(timezone.utc)


def read_keys(key_file: Path) -> dict:
    try:
        return json.loads(key_file.read_text())
    except (OSError, ValueError) as e:
        raise Unhealthy(f"cannot read {key_file} (TorchServe not started yet?): {e}") from e


def fresh_key(kind: str, key_file: Path, management: str) -> str:
    keys = read_keys(key_file)
    if expired(keys[kind]):
        status, body = call(f"{management}/token?type={kind}", keys["API"]["key"])
        if status != 200:
            raise Unhealthy(f"renewing the expired {kind} key: HTTP {status} {body[:200]}")
        keys = read_keys(key_file)
    return keys[kind]["key"]


def check(home: Path) -> str:
    props = read_properties(home / "config.properties")
    inference = local_url(props.get("inference_address", "http://127.0.0.1:8080"))
    management = local_url(props.get("management_address", "http://127.0.0.1:8081"))
    key_file = home / "key_file.json"
    if props.get("disable_token_authorization", "false").lower() == "true":
        inference_key = management_key = None
    else:
        management_key = fresh_key("management", key_file, management)
        inference_key = fresh_key("inference", key_file, management)

    status, body = call(f"{inference}/ping", inference_key)
    if status != 200:
        raise Unhealthy(f"/ping: HTTP {status} {body[:200]}")
    status, body = call(f"{management}/models?limit=1000", management_key)
    if status != 200:
        raise Unhealthy(f"/models: HTTP {status} {body[:200]}")
    names = [m["modelName"] for m in json.loads(body).get("models", [])]
    if not names:
        raise Unhealthy("no model registered")
    for name in names:
        status, body = call(f"{management}/models/{name}", management_key)
        if status != 200:
            raise Unhealthy(f"/models/{name}: HTTP {status} {body[:200]}")
        workers = [w for d in json.loads(body) for w in d.get("workers", [])]
        if not any(w.get("status") == "READY" for w in workers):
            raise Unhealthy(f"model {name}: no READY worker ({[w.get('status') for w in workers]})")
    return f"healthy: {', '.join(names)} READY"


def main() -> int:
    home = Path(os.environ.get("POLYDET_HOME", "/var/lib/polydet"))
    try:
        print(check(home))
        return 0
    except (Unhealthy, OSError, ValueError, KeyError, TypeError) as e:
        print(f"unhealthy: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
