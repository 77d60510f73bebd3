"""Write deploy/k8s/base/configmap.yaml from the repository's config.properties with the pod's overrides.

    python deploy/k8s/make_configmap.py

tests/unit/test_deploy_manifests.py fails when the two drift apart (its POD_OVERRIDES are these).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "deploy" / "k8s" / "base" / "configmap.yaml"
POD_OVERRIDES = {"model_store": "/opt/polydet/model_store", "token_expiration_min": "525600"}
HEADER = """\
# TorchServe's config in the pod (POLYDET_CONFIG): the repository's config.properties, written by
# deploy/k8s/make_configmap.py with only these keys changed (tests/unit/test_deploy_manifests.py checks it):
# - model_store: absolute, the image's store (relative paths would resolve against /etc/polydet).
# - token_expiration_min: one year. TorchServe's keys never leave the pod (nginx swaps the client's Secret key
#   for the inference key, polydet.serving.podproxy); renewing one every hour would fail the requests that
#   reach TorchServe between the renewal and nginx's reload. Client keys rotate through the Secret instead.
# Every listener stays on the pod's loopback (the image's POLYDET_BIND_ADDRESS): only nginx listens on the
# pod's address (8000 inference, 9082 /metrics).
apiVersion: v1
kind: ConfigMap
metadata:
  name: polydet-config
  labels:
    app.kubernetes.io/name: polydet
data:
  config.properties: |
"""


def render() -> str:
    lines = []
    for line in (REPO / "config.properties").read_text().splitlines():
        m = re.match(r"^([A-Za-z_]+)=", line)
        if m and m.group(1) in POD_OVERRIDES:
            line = f"{m.group(1)}={POD_OVERRIDES[m.group(1)]}"
        lines.append(f"    {line}" if line else "")
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
