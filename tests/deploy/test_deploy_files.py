"""Deployment files: checked by the real tools where they exist here, otherwise for consistency.

No Docker engine or Kubernetes cluster exists on these machines: Prometheus configs go through
promtool, compose files through the Compose Specification schema (Kubernetes manifests: see
test_k8s.py); beyond that, referenced files must exist, ports and names must agree across
tiers, and every metric the Grafana dashboard queries must be one the gateway or Triton exports.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import urllib.request

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_prometheus_configs_pass_promtool(config: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", ["docker-compose.yml", "deploy/docker-compose.gpu.yml", "deploy/docker-compose.debug.yml"]
)
def test_compose_files_follow_the_compose_specification(path: str) -> None:
    # compose_spec.json: the Compose Specification schema shipped in docker-compose 1.29.2 (Apache-2.0).
    schema = json.loads((ROOT / "tests" / "deploy" / "compose_spec.json").read_text())
    errors = [
        e.message for e in jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load((ROOT / path).read_text()))
    ]
    assert not errors


def test_compose_references_existing_files_and_agrees_on_ports() -> None:
    services = _compose()["services"]
    assert {"builder", "triton", "gateway", "prometheus", "grafana"} <= services.keys()
    for name, service in services.items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
    host, port = services["gateway"]["environment"]["GATEWAY_TRITON_URL"].split(":")
    assert host == "triton" and port in services["triton"]["expose"]
    assert "ports" not in services["triton"], "Triton has no authentication: its ports stay off the host"
    debug = yaml.safe_load((DEPLOY / "docker-compose.debug.yml").read_text())["services"]
    assert f"127.0.0.1:{port}:{port}" in debug["triton"]["ports"]
    gateway_port = Settings(_env_file=None).port  # type: ignore[call-arg]
    assert f"${{MM_PUBLISH_ADDRESS:-0.0.0.0}}:${{MM_GATEWAY_PORT:-{gateway_port}}}:8080" in services["gateway"]["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape}
    assert targets == {"gateway": "gateway:8080", "triton": "triton:8002"}


def test_dockerfiles_copy_what_exists() -> None:
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"


def test_dashboard_queries_only_exported_metrics(triton) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    for histogram in (metrics.preprocess, metrics.postprocess):
        histogram.labels("qa").observe(0.1)
    metrics.inference.labels("qa", "bert_qa").observe(0.1)
    metrics.requests.labels("/qa", "200").inc()
    metrics.request_latency.labels("/qa").observe(0.1)
    metrics.batch_rows.labels("bert_qa").observe(1)
    metrics.call_requests.labels("bert_qa").observe(1)
    metrics.errors.labels("/qa", "overloaded").inc()
    metrics.cancelled.labels("/qa", "deadline").inc()
    exported = generate_latest(metrics.registry).decode()
    exported += urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exported, re.MULTILINE))
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "inference-gateway.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:gateway|nv|mm|process)_[a-z_]+)\b", target["expr"])
    }
    assert queried, "dashboard has no queries"
    # Triton exports GPU metrics only on a GPU host (none here); those panels fall back to 0.
    gpu_only = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}
    assert queried - gpu_only <= names, f"not exported: {sorted(queried - gpu_only - names)}"


PROBE = ["python3", "-m", "triton_local", "probe", "--http-url"]


def _k8s_container(name: str) -> dict:  # type: ignore[type-arg]
    # The base's file (tests/deploy/test_k8s.py renders and checks the overlays).
    deployment = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "base" / f"{name}.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _dockerfile_cmd(path: pathlib.Path) -> list[str]:
    (cmd,) = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(cmd.removeprefix("CMD "))  # type: ignore[no-any-return]


def test_triton_image_ships_the_probe_and_allows_reloads() -> None:
    dockerfile = DEPLOY / "Dockerfile.triton"
    for image in (dockerfile, DEPLOY / "Dockerfile.triton-cpu"):
        lines = image.read_text().splitlines()
        assert "COPY triton_local /opt/mm/triton_local" in lines
        # In site-packages: the Python-backend stub does not see PYTHONPATH.
        assert '    && ln -s /opt/mm/engine_runtime /opt/mm/triton_local "$purelib/"' in lines
    for args in (_dockerfile_cmd(dockerfile), _k8s_container("triton")["args"]):
        assert args[0] == "tritonserver"
        assert {"--model-control-mode=explicit", "--load-model=*", "--model-repository=/models"} <= set(args)


def test_triton_liveness_is_a_probe_inference_and_startup_covers_loading() -> None:
    triton = _k8s_container("triton")
    liveness = triton["livenessProbe"]
    assert liveness["exec"]["command"][: len(PROBE)] == PROBE
    assert liveness["timeoutSeconds"] >= 60 and liveness["failureThreshold"] >= 2
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "engine loading takes minutes"
    gateway = _k8s_container("gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_compose_triton_health_is_the_probe_and_services_restart() -> None:
    services = _compose()["services"]
    health = services["triton"]["healthcheck"]
    assert health["test"][0] == "CMD" and health["test"][1 : 1 + len(PROBE)] == PROBE
    assert health["start_period"] and health["retries"] >= 2
    for name in ("triton", "gateway"):
        assert services[name]["restart"] == "unless-stopped", name


def test_deploy_probe_commands_pass_against_a_real_triton(triton) -> None:  # type: ignore[no-untyped-def]
    # The exact commands from the manifest and the compose file, with Triton's address and the
    # interpreter swapped for this machine's (the image has python3 and PYTHONPATH=/opt/mm).
    commands = [
        _k8s_container("triton")["livenessProbe"]["exec"]["command"],
        _compose()["services"]["triton"]["healthcheck"]["test"][1:],
    ]
    for command in commands:
        url = command.index("--http-url") + 1
        argv = [sys.executable, *command[1:url], triton.http_url, *command[url + 1 :]]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
        assert result.returncode == 0, result.stderr
        assert ": ok (" in result.stderr


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent dirs decides;
    ``*`` does not cross ``/``, ``**`` does, ``!`` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*|\*|\?)", pattern.strip("/"))
        wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(wild.get(p, re.escape(p)) for p in parts) + "$")

    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    ignored = False
    for line in patterns:
        negate, pattern = line.startswith("!"), line.lstrip("!")
        if any(regex(pattern).match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_venv_git_and_built_engines_out_of_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "gateway/__pycache__/app.cpython-311.pyc",
        "triton_repo/bert_qa/1/model.onnx",
        "triton_repo/bert_qa/1/manifest.json",
        "triton_repo/nanodet/1/model.onnx.tmp",
        "deploy/weights/bert.bin",
        "triton_repo/bert_qa_fp16/config.pbtxt",  # precision variants a local run generated
        "triton_repo/yolov5n_int8/1/model.py",
    ):
        assert _dockerignored(path, patterns), path
    copied = [
        source
        for dockerfile in DEPLOY.glob("Dockerfile.*")
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    kept = [
        str(p.relative_to(ROOT))
        for source in copied
        for p in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"))
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.name.endswith((".onnx", ".json", ".whl"))
        and not (p.parent.parent.name.endswith(("_fp16", "_int8")) or p.parent.name.endswith(("_fp16", "_int8")))
    ]
    assert "triton_repo/bert_qa/1/model.py" in kept and "deploy/wheelhouse/builder/.keep" in kept
    assert [p for p in kept if _dockerignored(p, patterns)] == []


def test_gpu_profile_pins_onnxruntime_gpu_and_gives_tensorrt_a_writable_cache() -> None:
    gpu = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())
    triton = gpu["services"]["triton"]
    assert triton["build"]["dockerfile"] == "deploy/Dockerfile.triton"
    dockerfile = (DEPLOY / "Dockerfile.triton").read_text()
    assert re.search(r'"onnxruntime-gpu==\d+\.\d+\.\d+"', dockerfile), "onnxruntime-gpu must be pinned exactly"
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    cache = next(v for v in triton["volumes"] if v.startswith("trt-cache:"))
    mount = cache.split(":")[1]
    assert "trt-cache" in gpu["volumes"] and not cache.endswith(":ro")
    for config in (ROOT / "triton_repo").glob("*/config.pbtxt"):
        paths = re.findall(r'key: "trt_engine_cache_path" value \{ string_value: "([^"]+)" \}', config.read_text())
        assert paths == [f"{mount}/{config.parent.name}"], config
    # The CPU profile (default) never publishes Triton either, and builds from the wheel.
    assert _compose()["services"]["triton"]["build"]["dockerfile"] == "deploy/Dockerfile.triton-cpu"
