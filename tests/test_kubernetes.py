"""The Kubernetes manifests of every variant, checked without a cluster.

Each variant's Kustomize base and production overlay are built with `kubectl kustomize`,
every object is validated against the Kubernetes API schemas (kubernetes-validate, with
unknown fields refused), and the result is checked for what the deploy guide promises:
pods that run as non-root on a read-only filesystem without capabilities, with resources,
probes on /health and /health/ready and time to drain; the init container that migrates;
a Service, a PodDisruptionBudget and an autoscaler that select those pods; the CronJob that
prunes sessions; configuration from a ConfigMap and a Secret that is never in the output.
Both checkers are also fed a broken manifest, so a checker that stopped working fails here.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

from tests.support import VARIANTS, Variant, render

KUSTOMIZATIONS = ["base", "overlays/production"]
# The oldest Kubernetes release the manifests are meant for.
KUBERNETES_VERSION = "1.30.0"
PRESTOP_PAUSE = re.compile(r"^sleep (\d+)$")


class Rendered(dict[str, Path]):
    """Each variant rendered on first use, once per module."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, name: str) -> Path:
        [variant] = [v for v in VARIANTS if v.name == name]
        destination = self.factory.mktemp(f"k8s-{name}") / "demo"
        render(destination, **variant.all_answers)
        self[name] = destination
        return destination


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return Rendered(tmp_path_factory)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("`kubectl` is not installed (it brings Kustomize: `kubectl kustomize`)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def schema_errors(document: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{document.get('kind')} {document['metadata'].get('name')}: {error.message}"]
    return []


def by_kind(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        kinds.setdefault(document["kind"], []).append(document)
    return kinds


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def container_problems(where: str, container: dict[str, Any]) -> list[str]:
    problems = []
    security = container.get("securityContext", {})
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: the root filesystem is writable")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: privilege escalation is allowed")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{where}: capabilities are not all dropped")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if set(resources.get(kind, {})) != {"cpu", "memory"}:
            problems.append(f"{where}: no cpu and memory {kind}")
    return problems


def pod_problems(where: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True or security.get("runAsUser", 0) == 0:
        problems.append(f"{where}: the pod may run as root")
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        problems += container_problems(f"{where} {container['name']}", container)
    return problems


def environment_problems(
    where: str, container: dict[str, Any], config_maps: set[str], slug: str
) -> list[str]:
    sources = container.get("envFrom", [])
    maps = {s["configMapRef"]["name"] for s in sources if "configMapRef" in s}
    secrets = {s["secretRef"]["name"] for s in sources if "secretRef" in s}
    problems = []
    if not maps or not maps <= config_maps:
        problems.append(f"{where}: settings do not come from a ConfigMap of the manifests")
    if secrets != {f"{slug}-secrets"}:
        problems.append(f"{where}: secrets do not come from the Secret {slug}-secrets")
    return problems


def deployment_problems(deployment: dict[str, Any], port: int, sqlite: bool) -> list[str]:
    pod = deployment["spec"]["template"]["spec"]
    problems = pod_problems("Deployment", pod)
    [api] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in api.get("ports", [])}
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/health/ready")):
        check = api.get(probe, {}).get("httpGet", {})
        if check.get("path") != path or ports.get(check.get("port"), check.get("port")) != port:
            problems.append(f"{probe} does not request {path} on port {port}")
    command = " ".join(api.get("command", []))
    if f"--port={port}" not in command:
        problems.append(f"the API does not listen on port {port}: {command}")
    graceful = re.search(r"--timeout-graceful-shutdown[= ](\d+)", command)
    prestop = " ".join(
        api.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    )
    pause = PRESTOP_PAUSE.match(prestop)
    if graceful is None or pause is None:
        problems.append("no drain: a preStop pause and uvicorn's --timeout-graceful-shutdown")
    elif pod.get("terminationGracePeriodSeconds", 30) <= int(pause[1]) + int(graceful[1]):
        problems.append("terminationGracePeriodSeconds leaves no time to drain")
    init = [
        c for c in pod.get("initContainers", []) if c.get("command") == ["/app/scripts/prestart"]
    ]
    if not init:
        problems.append("no init container runs scripts/prestart (migrations under the lock)")
    if sqlite:
        if deployment["spec"].get("replicas") != 1 or deployment["spec"]["strategy"] != {
            "type": "Recreate"
        }:
            problems.append("a SQLite service must run exactly one pod, replaced not rolled")
        mounts = {m["mountPath"] for m in api.get("volumeMounts", [])}
        if "/app/data" not in mounts:
            problems.append("the SQLite file's folder is not on a volume")
    elif "replicas" in deployment["spec"]:
        problems.append("the Deployment sets replicas, which the autoscaler owns")
    return problems


def manifest_problems(
    documents: list[dict[str, Any]], slug: str, port: int, sqlite: bool
) -> list[str]:
    """What keeps these objects from being the deployment the guide describes."""
    kinds = by_kind(documents)
    expected = {"Deployment", "Service", "ConfigMap", "CronJob"} | (
        {"PersistentVolumeClaim"} if sqlite else {"PodDisruptionBudget", "HorizontalPodAutoscaler"}
    )
    missing = expected - set(kinds)
    if missing:
        return [f"missing {sorted(missing)}"]
    problems = []
    if "Secret" in kinds:
        problems.append("the manifests contain a Secret; it belongs in the cluster only")
    [deployment] = kinds["Deployment"]
    problems += deployment_problems(deployment, port, sqlite)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not matches(deployment["spec"]["selector"]["matchLabels"], labels):
        problems.append("the Deployment's selector does not match its pods")
    config_maps = {c["metadata"]["name"] for c in kinds["ConfigMap"]}
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        problems += environment_problems(container["name"], container, config_maps, slug)

    [service] = kinds["Service"]
    if not matches(service["spec"]["selector"], labels):
        problems.append("the Service does not select the API pods")
    if {p["targetPort"] for p in service["spec"]["ports"]} - {"http", port}:
        problems.append("the Service does not send traffic to the API's port")
    if not sqlite:
        [budget] = kinds["PodDisruptionBudget"]
        if not matches(budget["spec"]["selector"]["matchLabels"], labels):
            problems.append("the PodDisruptionBudget does not select the API pods")
        [autoscaler] = kinds["HorizontalPodAutoscaler"]
        target = autoscaler["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
            problems.append("the autoscaler does not scale the Deployment")

    [cron] = kinds["CronJob"]
    job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    problems += pod_problems("CronJob", job_pod)
    [pruner] = job_pod["containers"]
    if pruner.get("command") != ["python", "-m", "app.cli", "prune-sessions"]:
        problems.append("the CronJob does not run `python -m app.cli prune-sessions`")
    if cron["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append("two prune-sessions jobs may run at once")
    problems += environment_problems("CronJob", pruner, config_maps, slug)
    return problems


def project_of(variant: Variant) -> tuple[str, int, bool]:
    slug = re.sub(r"[^a-z0-9]+", "-", variant.all_answers["project_name"].lower()).strip("-")
    return slug, int(variant.answers.get("port", 8003)), variant.database == "sqlite"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_manifests_build_and_match_the_kubernetes_schemas(
    rendered: Rendered, variant: Variant, kustomization: str
) -> None:
    documents = kustomize(rendered[variant.name] / "deploy" / "kubernetes" / kustomization)
    assert documents
    assert [error for document in documents for error in schema_errors(document)] == []


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_production_overlay_deploys_the_service_as_the_guide_says(
    rendered: Rendered, variant: Variant
) -> None:
    slug, port, sqlite = project_of(variant)
    documents = kustomize(rendered[variant.name] / "deploy/kubernetes/overlays/production")
    assert manifest_problems(documents, slug, port, sqlite) == []
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {slug}
    if not sqlite:
        [autoscaler] = by_kind(documents)["HorizontalPodAutoscaler"]
        assert autoscaler["spec"]["minReplicas"] >= 2, "production keeps several pods"


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=[v.name for v in VARIANTS[:3]])
def test_the_pods_run_the_command_of_the_image(rendered: Rendered, variant: Variant) -> None:
    """The Deployment runs the image's uvicorn command, with the same options."""
    project = rendered[variant.name]
    commands = dockerfile.parse_string((project / "Dockerfile").read_text())
    [cmd] = [c for c in commands if c.cmd.upper() == "CMD"]
    image = cmd.value[-1].split("exec ", 1)[1].split()
    [deployment] = by_kind(kustomize(project / "deploy/kubernetes/base"))["Deployment"]
    [api] = deployment["spec"]["template"]["spec"]["containers"]
    pods = [part for option in api["command"] for part in option.split("=", 1)]
    assert pods == image


BROKEN_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: other}
    spec:
      containers:
        - name: api
          image: demo
          comand: ["uvicorn"]
          livenessProbe:
            httpGet: {path: /, port: 8000}
"""


def test_the_checks_reject_a_careless_deployment() -> None:
    document = yaml.safe_load(BROKEN_DEPLOYMENT)
    assert any("comand" in error for error in schema_errors(document))
    problems = "\n".join(deployment_problems(document, 8003, sqlite=False))
    for expected in (
        "the pod may run as root",
        "the root filesystem is writable",
        "capabilities are not all dropped",
        "no cpu and memory limits",
        "livenessProbe does not request /health on port 8003",
        "readinessProbe does not request /health/ready",
        "no drain",
        "no init container runs scripts/prestart",
        "the Deployment sets replicas",
    ):
        assert expected in problems


def test_the_checks_reject_postgresql_manifests_that_ship_a_secret_or_lose_their_pods(
    rendered: Rendered,
) -> None:
    documents = kustomize(rendered["postgresql"] / "deploy/kubernetes/overlays/production")
    kinds = by_kind(documents)
    kinds["Service"][0]["spec"]["selector"] = {"app": "other"}
    kinds["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"] = {"app": "other"}
    kinds["CronJob"][0]["spec"]["concurrencyPolicy"] = "Allow"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-secrets"}}
    problems = "\n".join(manifest_problems([*documents, secret], "variant-postgresql", 8003, False))
    for expected in (
        "the manifests contain a Secret",
        "the Service does not select the API pods",
        "the PodDisruptionBudget does not select the API pods",
        "two prune-sessions jobs may run at once",
    ):
        assert expected in problems
