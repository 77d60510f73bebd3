"""deploy/: the Kubernetes manifests rendered (kustomize subset here, cross-checked with `kubectl kustomize` where
installed) and validated against the Kubernetes API schemas (kubernetes-validate, strict) of a pinned version;
the KServe InferenceServices against KServe's vendored CRD schema (jsonschema, strict); the pod's config and
proxy in step with the rest of the repository; each validator shown failing on a broken manifest."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# The Kubernetes version the manifests are validated for: autoscaling/v2, policy/v1 and the PDB's
# unhealthyPodEvictionPolicy (GA in 1.31) all exist there; kubectl 1.32 is what renders them here.
K8S_VERSION = "1.32.0"
CRD = DEPLOY / "kserve" / "crd" / "serving.kserve.io_inferenceservices.yaml"
CRD_SHA256 = "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff"  # crd/SOURCE.md
# Keys of the pod's config.properties (configmap.yaml) that may differ from the repository's; the reason
# for each is in configmap.yaml. Written out here, not imported from make_configmap.py, so that the test is
# an independent statement of what may differ.
POD_OVERRIDES = {"model_store": "/opt/polydet/model_store", "token_expiration_min": "525600"}


# ---- a renderer of the kustomize subset deploy/k8s uses: resources, JSON6902 patches, images ----------------

def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(doc, path: str):
    """(parent, key) of a JSON pointer; a missing parent is an error, as in kustomize."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    return node, (int(last) if isinstance(node, list) and last != "-" else last)


def apply_json6902(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else key, op["value"])
            else:
                parent[key] = op["value"]
        elif op["op"] == "replace":
            if isinstance(parent, dict) and key not in parent:
                raise KeyError(f"replace: {op['path']} does not exist")
            parent[key] = op["value"]
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


def render(directory: Path) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - {"apiVersion", "kind", "resources", "patches", "images"}
    assert not unknown, f"{directory}: kustomization uses {unknown}, which this renderer does not implement"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        p = (directory / res).resolve()
        docs += render(p) if p.is_dir() else _load_docs(p)
    for patch in kust.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        t = patch["target"]
        hits = [i for i, d in enumerate(docs) if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        assert hits, f"patch {patch['path']}: no {t['kind']}/{t['name']}"
        for i in hits:
            docs[i] = apply_json6902(docs[i], ops)
    for img in kust.get("images", []):
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "one object per kind expected"
    return out


def canonical(docs: list[dict]) -> list[str]:
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def test_the_overlays_render_as_kustomize_renders_them(overlay):
    name, docs = overlay
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                                               "PodDisruptionBudget", "Service"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its built-in kustomize) is not installed: only this file's renderer ran")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / name)], capture_output=True, text=True,
                         check=True).stdout
    assert canonical([d for d in yaml.safe_load_all(out) if d]) == canonical(docs)


# ---- the Kubernetes API schemas ------------------------------------------------------------------------------

def k8s_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    _, docs = overlay
    assert {d["kind"]: k8s_errors(d) for d in docs} == {d["kind"]: [] for d in docs}


@pytest.mark.parametrize("breakage, field", [
    (lambda d: d["spec"].__setitem__("replicas", "two"), "spec.replicas"),  # wrong type
    (lambda d: d["spec"]["template"]["spec"]["containers"][1]["ports"][0].__setitem__("containerPort", "8000"),
     "spec.template.spec.containers.1.ports.0.containerPort"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][1].__setitem__("livenesProbe", {}), None),  # typo
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), None),  # required
])
def test_a_broken_deployment_fails_validation(breakage, field):
    deployment = copy.deepcopy(by_kind(render(K8S / "overlays" / "cpu"))["Deployment"])
    breakage(deployment)
    errors = k8s_errors(deployment)
    assert errors, "the broken Deployment validated"
    if field:
        assert errors[0].startswith(field)


def test_a_patch_of_a_missing_path_fails_to_render():
    deployment = by_kind(render(K8S / "base"))["Deployment"]
    with pytest.raises((KeyError, IndexError)):
        apply_json6902(deployment, [{"op": "replace", "path": "/spec/template/spec/containers/2/resources", "value": {}}])


# ---- what the objects must agree on ------------------------------------------------------------------------

def test_probes_resources_and_ports_hang_together(overlay):
    name, docs = overlay
    k = by_kind(docs)
    pod = k["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert k["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for obj in (k["Service"]["spec"]["selector"], k["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                k["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]):
        assert obj.items() <= labels.items()
    ts, proxy = pod["spec"]["containers"]
    assert (ts["name"], proxy["name"]) == ("torchserve", "proxy")
    assert ts["image"] == proxy["image"] == f"registry.example.com/polydet:{name}"
    for c in (ts, proxy):
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        assert c["readinessProbe"] and c["livenessProbe"], c["name"]
    health = ["/opt/polydet/venv/bin/python", "/opt/polydet/docker/healthcheck.py"]
    assert ts["readinessProbe"]["exec"]["command"] == ts["livenessProbe"]["exec"]["command"] == health
    assert (REPO / "docker" / "healthcheck.py").is_file()
    assert proxy["readinessProbe"]["exec"]["command"][-3:] == ["-m", "polydet.serving.podproxy", "check"]
    # nginx's defaults (podproxy's parser) are the ports the pod declares, the Service targets and the policy admits
    from polydet.serving.podproxy import make_parser

    a = make_parser().parse_args(["run"])
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": int(a.listen.rsplit(":", 1)[1]), "metrics": int(a.metrics_listen.rsplit(":", 1)[1])}
    assert {p["targetPort"] for p in k["Service"]["spec"]["ports"]} == set(ports)
    admitted = [p["port"] for rule in k["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(admitted) == sorted(ports.values())
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    env = {e["name"]: e["value"] for e in proxy["env"]}
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert env["POLYDET_PROXY_KEYS"].startswith(mounts["api-keys"] + "/")
    assert env["POLYDET_HOME"] == mounts["home"] == {m["name"]: m["mountPath"] for m in ts["volumeMounts"]}["home"]
    if name == "gpu":
        assert ts["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_hpa_scales_the_deployment_on_the_adapters_metric(overlay):
    _, docs = overlay
    k = by_kind(docs)
    hpa = k["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "polydet"}
    assert hpa["minReplicas"] >= 2 > k["PodDisruptionBudget"]["spec"]["minAvailable"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "adapter-rules.yaml").read_text())["rules"]
    served = {r["name"]["as"] for r in rules}
    assert hpa["metrics"][0]["pods"]["metric"]["name"] in served


def test_the_pods_torchserve_config_is_the_repositorys_but_for_the_declared_keys():
    from polydet.serving.properties import read_properties

    cm = by_kind(render(K8S / "base"))["ConfigMap"]
    pod_props = {}
    for line in cm["data"]["config.properties"].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pod_props[key] = value
    assert pod_props == {**read_properties(REPO / "config.properties"), **POD_OVERRIDES}, \
        "configmap.yaml is stale: python deploy/k8s/make_configmap.py"


# ---- KServe --------------------------------------------------------------------------------------------------

def strict(schema):
    """An object schema with ``properties`` admits no other key, unless it preserves unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def isvc_validator():
    import jsonschema

    raw = CRD.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == CRD_SHA256, "the vendored CRD changed: update crd/SOURCE.md"
    crd = yaml.safe_load(raw)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def isvc_errors(validator, doc) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc))


@pytest.mark.parametrize("name", ["inferenceservice-polydet.yaml", "inferenceservice-torchserve.yaml"])
def test_the_inference_services_validate_against_kserves_crd(isvc_validator, name):
    (doc,) = _load_docs(DEPLOY / "kserve" / name)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc_errors(isvc_validator, doc) == []


def test_a_broken_inference_service_fails_validation(isvc_validator):
    (doc,) = _load_docs(DEPLOY / "kserve" / "inferenceservice-torchserve.yaml")
    model = doc["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")  # a typo
    doc["spec"]["predictor"]["minReplicas"] = "two"
    errors = isvc_errors(isvc_validator, doc)
    assert any(e.startswith("spec.predictor.minReplicas: 'two' is not of type 'integer'") for e in errors), errors
    assert any("'storageURI' was unexpected" in e for e in errors), errors


def test_the_torchserve_layout_service_matches_the_runtime():
    (doc,) = _load_docs(DEPLOY / "kserve" / "inferenceservice-torchserve.yaml")
    model = doc["spec"]["predictor"]["model"]
    assert (model["modelFormat"]["name"], model["runtime"], model["protocolVersion"]) == \
        ("pytorch", "kserve-torchserve", "v2")


# ---- the pod's nginx config ------------------------------------------------------------------------------------

def test_the_pod_proxy_config_is_accepted_by_nginx(tmp_path):
    from polydet.errors import ConfigError
    from polydet.serving.podproxy import render_config
    from polydet.serving.proxy import nginx_binary

    addr = {"listen": "127.0.0.1:18000", "metrics_listen": "127.0.0.1:19082", "upstream": "127.0.0.1:18080",
            "metrics_upstream": "127.0.0.1:18082"}
    text = render_config(tmp_path, ["k" * 16, "new-key-0123456789"], "TsKey_-1", **addr)
    assert '"Bearer kkkkkkkkkkkkkkkk" 1;' in text and '"Bearer new-key-0123456789" 1;' in text
    assert 'proxy_set_header Authorization "Bearer TsKey_-1";' in text and "@" not in text.replace("@[", "")
    with pytest.raises(ConfigError):
        render_config(tmp_path, ['x" 1; } server {'], "TsKey", **addr)
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (make sysdeps installs it): the config was not checked by nginx")
    (tmp_path / "nginx.conf").write_text(text)
    r = subprocess.run([binary, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e",
                        str(tmp_path / "error.log")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (tmp_path / "nginx.conf").write_text(text.replace("map $http_authorization", "map $http_authorization {"))
    r = subprocess.run([binary, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e",
                        str(tmp_path / "error.log")], capture_output=True, text=True)
    assert r.returncode != 0  # the same check refuses a broken config


def test_client_keys_are_read_and_weak_ones_refused(tmp_path):
    from polydet.errors import ConfigError
    from polydet.serving.podproxy import read_client_keys

    f = tmp_path / "keys"
    f.write_text("# current\nold-key-0123456789abcdef\n\nnew-key-0123456789abcdef\n")
    assert read_client_keys(f) == ["old-key-0123456789abcdef", "new-key-0123456789abcdef"]
    for bad in ("short\n", "# nothing\n", "has space in it 0123456789\n", 'quote"0123456789abcdef\n'):
        f.write_text(bad)
        with pytest.raises(ConfigError):
            read_client_keys(f)


# ---- Prometheus rules and the Grafana dashboard -----------------------------------------------------------------

PROM = DEPLOY / "prometheus"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make sysdeps` installs it)")
    return exe


def test_promtool_checks_and_unit_tests_the_alert_rules(tmp_path):
    exe = _promtool()
    r = subprocess.run([exe, "check", "rules", str(PROM / "alerts.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([exe, "test", "rules", str(PROM / "alerts_test.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # the same checks fail on a broken rule and on a test whose expectation is wrong
    broken = tmp_path / "alerts.yaml"
    broken.write_text((PROM / "alerts.yaml").read_text().replace("> 0.01", "> > 0.01"))
    assert subprocess.run([exe, "check", "rules", str(broken)], capture_output=True).returncode != 0
    (tmp_path / "alerts.yaml").write_text((PROM / "alerts.yaml").read_text().replace("> 0.01", "> 0.05"))
    (tmp_path / "alerts_test.yaml").write_text((PROM / "alerts_test.yaml").read_text())
    r = subprocess.run([exe, "test", "rules", str(tmp_path / "alerts_test.yaml")], capture_output=True, text=True)
    assert r.returncode != 0 and "PolydetHighErrorRate" in r.stdout + r.stderr


def test_promtool_checks_the_scrape_config(tmp_path):
    exe = _promtool()
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    job.pop("kubernetes_sd_configs")  # Debian's promtool is built without Kubernetes discovery
    job["static_configs"] = [{"targets": ["127.0.0.1:9082"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    shutil.copy(PROM / "alerts.yaml", tmp_path / "alerts.yaml")
    r = subprocess.run([exe, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    targets = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    assert {"namespace", "pod"} <= targets  # what the adapter's rules select on


def test_the_committed_dashboard_is_the_generators_output(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("polydet_dashboard", DEPLOY / "grafana" / "dashboard.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (DEPLOY / "grafana" / "polydet-dashboard.json").read_text() == gen.render()
    assert gen.main(["--check"]) == 0
    stale = tmp_path / "d.json"
    stale.write_text(gen.render().replace('"Latency"', '"Latency (old)"'))
    assert gen.main(["--check", "--out", str(stale)]) == 1
    panels = json.loads(gen.render())["panels"]
    assert [p["title"] for p in panels] == list(gen.UNITS)
    assert all(t["expr"] for p in panels for t in p["targets"])


def test_the_kserve_front_container_parses_with_the_fronts_own_parser():
    from polydet.fronts.common import make_parser

    (doc,) = _load_docs(DEPLOY / "kserve" / "inferenceservice-polydet.yaml")
    (c,) = doc["spec"]["predictor"]["containers"]
    assert c["command"][-2:] == ["-m", "polydet.fronts.kserve"]
    a = make_parser("kserve", 8080, 8081).parse_args(c["args"])
    assert (a.host, a.http_port) == ("0.0.0.0", c["ports"][0]["containerPort"])
    assert c["readinessProbe"]["httpGet"] == {"path": f"/v2/models/{a.name}/ready", "port": a.http_port}
