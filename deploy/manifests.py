"""Kubernetes manifests from the same configs the local stack uses (``python -m deploy k8s render``).

Three files, each multi-document YAML (``kubectl apply -f DIR``):

- ``triton.yaml``: ``--kind kserve``: a KServe ``InferenceService`` (Triton runtime, protocol v2,
  ``storageUri`` at the repository; KServe's storage initializer copies it to ``/mnt/models``) and the
  ServiceAccount that hands it the S3 Secret; ``--kind deployment``: a Triton Deployment that reads the
  ``s3://`` repository itself (Triton's S3 file system) and its Service.
- ``router.yaml``: the experiment file as a ConfigMap (its ``upstream`` pointed at the in-cluster
  Triton), the router Deployment (probes on ``/v2/health/live`` and ``/v2/health/ready``, resource
  requests, the admin token and the experiment store's URL from Secrets), its Service and a CPU
  HorizontalPodAutoscaler; with ``--store-url`` the store Secret, with ``--store-postgres`` a trial
  PostgreSQL StatefulSet too (``deploy/store.py``).
- ``locust.yaml``: the Locust master (web UI) and its workers as Deployments, aimed at the router.

Names come from the experiment (``NAME-triton``, ``NAME-router``, ...), ports from ``tunestack.names``
(the defaults of ``python -m serving triton`` and ``RouterConfig``), Locust's options from
``LoadTestConfig``; nothing is typed twice. ``render`` validates every manifest (``deploy.manifest_checks``)
before anything is written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from deploy.config import DNS_LABEL, K8sConfig, K8sError
from deploy.loop import loop_manifests
from deploy.manifest_checks import LIVE, READY, validate_manifest
from deploy.rollout import rollout_manifests
from deploy.store import store_env, store_manifests
from experiments.errors import ExperimentError
from experiments.spec import experiment_from_dict, load_experiment
from export.s3 import S3Location
from tunestack import names
from tunestack.configfile import load_config_file

KSERVE_PREDICTOR_PORT = 80
"""KServe puts an InferenceService's predictor behind ``http://NAME-predictor.NAMESPACE.svc`` on port 80."""
LOCUST_WEB_PORT, LOCUST_MASTER_PORT = 8089, 5557
"""Locust's own defaults: the web UI and the port workers connect to."""
EXPERIMENT_MOUNT = "/etc/tunestack"
FILES = ("triton.yaml", "router.yaml", "locust.yaml")
TRITON_PORTS = {"http": names.TRITON_HTTP_PORT, "grpc": names.TRITON_GRPC_PORT, "metrics": names.TRITON_METRICS_PORT}
"""The ports ``python -m serving triton`` listens on by default, by name."""


def _meta(name: str, cfg: K8sConfig, component: str, **extra: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
              "app.kubernetes.io/part-of": "tunestack"}
    return {"name": name, "namespace": cfg.namespace, "labels": labels, **extra}


def _resources(cpu: str, memory: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def _probe(path: str, port: int | str, period: int = 10, failures: int = 3) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures}


def _deployment(name: str, cfg: K8sConfig, component: str, replicas: int, container: dict[str, Any],
                annotations: dict[str, str] | None = None, volumes: list | None = None) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": name}
    pod_meta: dict[str, Any] = {"labels": _meta(name, cfg, component)["labels"]}
    if annotations:
        pod_meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, cfg, component),
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                     "template": {"metadata": pod_meta, "spec": spec}}}


def _service(name: str, cfg: K8sConfig, component: str, ports: dict[str, int]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, cfg, component),
            "spec": {"selector": {"app.kubernetes.io/name": name},
                     "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports.items()]}}


# -- Triton ----------------------------------------------------------------------------------------
def triton_manifests(cfg: K8sConfig, base: str) -> tuple[list[dict[str, Any]], str]:
    """The Triton objects and the HTTP base URL the router reaches Triton at."""
    location = S3Location.parse(cfg.repository)
    name = f"{base}-triton"
    ports = TRITON_PORTS
    if cfg.kind == "kserve":
        account = f"{base}-s3"
        isvc = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta(name, cfg, "triton"),
            "spec": {"predictor": {
                "serviceAccountName": account, "minReplicas": cfg.triton_replicas,
                "maxReplicas": cfg.triton_max_replicas,
                "model": {
                    "modelFormat": {"name": "triton"}, "runtime": "kserve-tritonserver", "protocolVersion": "v2",
                    "storageUri": location.uri, "image": cfg.image_triton,
                    "resources": _resources(cfg.triton_cpu, cfg.triton_memory),
                },
            }},
        }
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(account, cfg, "triton"),
              "secrets": [{"name": cfg.s3_secret}]}
        url = f"http://{name}-predictor.{cfg.namespace}.svc.cluster.local:{KSERVE_PREDICTOR_PORT}"
        return [sa, isvc], url
    container = {
        "name": "triton", "image": cfg.image_triton, "command": ["tritonserver"],
        "args": [f"--model-repository={location.triton_uri(cfg.s3_endpoint)}", "--disable-auto-complete-config",
                 *(f"--{n}-port={p}" for n, p in ports.items())],
        "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
        "envFrom": [{"secretRef": {"name": cfg.s3_secret}}],
        "resources": _resources(cfg.triton_cpu, cfg.triton_memory),
        "startupProbe": _probe(READY, "http", period=5, failures=120),  # copies the models from S3 first
        "readinessProbe": _probe(READY, "http"),
        "livenessProbe": _probe(LIVE, "http"),
    }
    deployment = _deployment(name, cfg, "triton", cfg.triton_replicas, container)
    return [deployment, _service(name, cfg, "triton", ports)], f"http://{name}.{cfg.namespace}.svc.cluster.local:{ports['http']}"


# -- router ----------------------------------------------------------------------------------------
def experiment_data(path: Path, upstream: str) -> dict[str, Any]:
    """The experiment file's own keys, validated, with ``upstream`` pointed at the in-cluster Triton."""
    experiment = load_experiment(path)  # every problem of the file, reported at once
    own = [a.name for a in experiment.arms if a.upstream]
    if experiment.shadow and experiment.shadow.upstream:
        own.append(experiment.shadow.name)
    if own:
        raise K8sError(f"{path}: {own} set their own upstream; in the cluster every arm goes to the one "
                       "Triton service, so remove their 'upstream' keys")
    data = load_config_file(path)
    data["upstream"] = upstream
    experiment_from_dict(data, str(path))
    return data


def router_manifests(cfg: K8sConfig, base: str, data: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    from serving.admin_token import TOKEN_ENV

    name, config_name, port = f"{base}-router", f"{base}-experiment", names.ROUTER_PORT
    experiment_file = "experiment.yaml"
    body = yaml.safe_dump(data, sort_keys=False)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config_name, cfg, "router"),
                 "data": {experiment_file: body}}
    container = {
        "name": "router", "image": cfg.image_app,
        "command": ["python", "-m", "serving", "router"],
        "args": ["--experiment", f"{EXPERIMENT_MOUNT}/{experiment_file}", "--host", "0.0.0.0", "--port", str(port)],
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": cfg.admin_token_secret, "key": "token"}}},
                store_env(cfg)],
        "resources": _resources(cfg.router_cpu, cfg.router_memory),
        "readinessProbe": _probe(READY, "http", period=5),
        "livenessProbe": _probe(LIVE, "http"),
        "volumeMounts": [{"name": "experiment", "mountPath": EXPERIMENT_MOUNT, "readOnly": True}],
    }
    checksum = hashlib.sha256(body.encode()).hexdigest()[:16]  # a new experiment file rolls the pods
    deployment = _deployment(name, cfg, "router", cfg.router_min_replicas, container,
                             annotations={"tunestack/experiment-sha256": checksum},
                             volumes=[{"name": "experiment", "configMap": {"name": config_name}}])
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name, cfg, "router"),
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": cfg.router_min_replicas, "maxReplicas": cfg.router_max_replicas,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                        "type": "Utilization", "averageUtilization": cfg.router_cpu_target}}}]}}
    service = _service(name, cfg, "router", {"http": port})
    store = store_manifests(cfg, base, _meta, _resources)
    volume = {"name": "experiment", "configMap": {"name": config_name}}
    rollout = rollout_manifests(cfg, base, f"{EXPERIMENT_MOUNT}/{experiment_file}", volume, _deployment, _resources) \
        if data.get("rollout") is not None else []
    loop = loop_manifests(cfg, base, f"{EXPERIMENT_MOUNT}/{experiment_file}", volume, _deployment, _resources) \
        if data.get("loop") is not None else []
    return [configmap, deployment, service, hpa, *store, *rollout, *loop], f"http://{name}.{cfg.namespace}.svc.cluster.local:{port}"


# -- Locust ----------------------------------------------------------------------------------------
def locust_manifests(cfg: K8sConfig, base: str, experiment_name: str, router_url: str) -> list[dict[str, Any]]:
    import loadtests
    from loadtests.config import LoadTestConfig

    locustfile = (Path(loadtests.__file__).parent / "locustfile.py").relative_to(Path(loadtests.__file__).parent.parent)
    load = LoadTestConfig(target="router", experiment=experiment_name, host=router_url)
    args = load.locust_args()
    i = args.index("--run-time")  # set in the web UI: Locust refuses it without --headless, and on workers
    del args[i:i + 2]
    user_class = "OpenLoopUser" if load.open_loop else "ClosedLoopUser"
    master, worker = f"{base}-locust-master", f"{base}-locust-worker"
    resources = _resources(cfg.locust_cpu, cfg.locust_memory)
    master_container = {
        "name": "locust", "image": cfg.image_app, "command": ["locust"],
        "args": ["-f", str(locustfile), "--master", "--master-bind-port", str(LOCUST_MASTER_PORT),
                 "--web-port", str(LOCUST_WEB_PORT), *args, user_class],
        "ports": [{"name": "web", "containerPort": LOCUST_WEB_PORT}, {"name": "master", "containerPort": LOCUST_MASTER_PORT}],
        "resources": resources,
        "readinessProbe": _probe("/", "web"),
    }
    worker_container = {
        "name": "locust", "image": cfg.image_app, "command": ["locust"],
        "args": ["-f", str(locustfile), "--worker", "--master-host", master, "--master-port", str(LOCUST_MASTER_PORT),
                 *args, user_class],
        "resources": resources,
    }
    return [_deployment(master, cfg, "loadtest", 1, master_container),
            _service(master, cfg, "loadtest", {"web": LOCUST_WEB_PORT, "master": LOCUST_MASTER_PORT}),
            _deployment(worker, cfg, "loadtest", cfg.locust_workers, worker_container)]


# -- render / validate -----------------------------------------------------------------------------
def render(cfg: K8sConfig) -> dict[str, list[dict[str, Any]]]:
    """file name -> the manifests that go in it (validated, not written)."""
    try:
        experiment = load_experiment(cfg.experiment)
    except ExperimentError as e:
        raise K8sError(str(e)) from e
    base = cfg.name or experiment.name
    if not DNS_LABEL.match(base) or len(base) > 40:
        raise K8sError(f"experiment name {base!r} is not a DNS label of at most 40 characters; pass --name")
    triton, triton_url = triton_manifests(cfg, base)
    router, router_url = router_manifests(cfg, base, experiment_data(cfg.experiment, triton_url))
    rendered = dict(zip(FILES, [triton, router, locust_manifests(cfg, base, experiment.name, router_url)], strict=True))
    for docs in rendered.values():
        for doc in docs:
            validate_manifest(doc, cfg.kubernetes_version)
    return rendered


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the experiment file in its ConfigMap) as readable ``|`` blocks."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def write(rendered: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, docs in rendered.items():
        path = out / file
        path.write_text("# Rendered by `python -m deploy k8s render`; edit the configs, not this file.\n"
                        + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
        written.append(path)
    return written
