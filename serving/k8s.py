"""``python -m serving k8s render ...``: Kubernetes manifests from the same configs the local stack uses.

    python -m serving k8s render --experiment serving/experiments/sentiment-ab.yaml \\
        --repository s3://models/tunestack --out deploy/k8s [--kind kserve|deployment]
    python -m serving k8s validate deploy/k8s

Writes three files into ``--out`` (multi-document YAML, ``kubectl apply -f DIR``):

- ``triton.yaml``: ``--kind kserve``: a KServe ``InferenceService`` (Triton runtime, protocol v2,
  ``storageUri`` at the repository; KServe's storage initializer copies it to ``/mnt/models``) and the
  ServiceAccount that hands it the S3 Secret; ``--kind deployment``: a Triton Deployment that reads the
  ``s3://`` repository itself (Triton's S3 file system) and its Service.
- ``router.yaml``: the experiment file as a ConfigMap (its ``upstream`` pointed at the in-cluster
  Triton), the router Deployment (probes on ``/v2/health/live`` and ``/v2/health/ready``, resource
  requests, the admin token from a Secret), its Service and a CPU HorizontalPodAutoscaler.
- ``locust.yaml``: the Locust master (web UI) and its workers as Deployments, aimed at the router.

Names come from the experiment (``NAME-triton``, ``NAME-router``, ...), ports from the Triton CLI's
and ``RouterConfig``'s defaults, Locust's options from ``LoadTestConfig``; nothing is typed twice.
Every manifest is validated offline before it is written: built-in kinds with ``kubernetes-validate``
(strict), the InferenceService with the schema in ``serving/k8s_templates/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from export.errors import ConfigError
from export.object_store import S3Location
from serving.router.config import RouterConfig, experiment_from_dict, load_experiment
from serving.router.errors import ExperimentError

TEMPLATES = Path(__file__).parent / "k8s_templates"
KSERVE_SCHEMA = TEMPLATES / "inferenceservice-v1beta1.schema.json"
KINDS = ("kserve", "deployment")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LIVE, READY = "/v2/health/live", "/v2/health/ready"
"""KServe v2 health endpoints: the same paths on Triton and on the router."""
KSERVE_PREDICTOR_PORT = 80
"""KServe puts an InferenceService's predictor behind ``http://NAME-predictor.NAMESPACE.svc`` on port 80."""
LOCUST_WEB_PORT, LOCUST_MASTER_PORT = 8089, 5557
"""Locust's own defaults: the web UI and the port workers connect to."""
EXPERIMENT_MOUNT = "/etc/tunestack"
FILES = ("triton.yaml", "router.yaml", "locust.yaml")


class K8sError(Exception):
    """The render inputs are invalid, or a rendered manifest failed validation."""


@dataclass
class K8sConfig:
    """What ``render`` needs beyond the experiment file; the CLI mirrors it one to one."""

    experiment: Path
    """The router's experiment file (YAML/TOML): names, arms, weights."""
    repository: str
    """The model repository in object storage, ``s3://BUCKET/PREFIX`` (published with ``--repository s3://...``)."""
    out: Path = Path("deploy/k8s")
    """Folder the manifests are written to."""
    kind: str = "kserve"
    """kserve: a KServe InferenceService; deployment: a plain Triton Deployment + Service."""
    namespace: str = "default"
    """Namespace of every object."""
    name: str | None = None
    """Prefix of every object's name; default: the experiment's name."""
    image_triton: str = "tunestack-triton:latest"
    """Triton image with the python backend's packages (onnxruntime, tokenizers); see serving/scale-out.md."""
    image_app: str = "tunestack:latest"
    """This project's image, for the router and Locust (working directory = the repository root)."""
    s3_endpoint: str | None = None
    """Endpoint of an S3-compatible server (MinIO...); None: AWS S3."""
    s3_secret: str = "tunestack-s3"
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the bucket."""
    admin_token_secret: str = "tunestack-router-admin"
    """Secret whose key ``token`` is the router's admin bearer token."""
    triton_replicas: int = 1
    """Triton replicas (the minimum, for KServe)."""
    triton_max_replicas: int = 3
    """KServe: the most Triton replicas its autoscaler may run."""
    triton_cpu: str = "2"
    """CPU request of a Triton pod."""
    triton_memory: str = "4Gi"
    """Memory request (and limit) of a Triton pod."""
    router_min_replicas: int = 2
    """Router replicas the HPA keeps at least."""
    router_max_replicas: int = 8
    """Router replicas the HPA runs at most."""
    router_cpu_target: int = 70
    """HPA target: average CPU use of the router pods, in percent of their request."""
    router_cpu: str = "500m"
    """CPU request of a router pod."""
    router_memory: str = "512Mi"
    """Memory request (and limit) of a router pod."""
    locust_workers: int = 2
    """Locust worker replicas."""
    locust_cpu: str = "1"
    """CPU request of a Locust pod."""
    locust_memory: str = "1Gi"
    """Memory request (and limit) of a Locust pod."""
    kubernetes_version: str = "1.31"
    """Kubernetes version the built-in kinds are validated against."""

    def __post_init__(self) -> None:
        self.experiment, self.out = Path(self.experiment), Path(self.out)
        problems = []
        if self.kind not in KINDS:
            problems.append(f"unknown kind {self.kind!r}; expected one of: {', '.join(KINDS)}")
        try:
            S3Location.parse(self.repository)
        except ConfigError as e:
            problems.append(str(e))
        if self.name is not None and not DNS_LABEL.match(self.name):
            problems.append(f"name {self.name!r} must be a DNS label: lower-case letters, digits and '-'")
        if not DNS_LABEL.match(self.namespace):
            problems.append(f"namespace {self.namespace!r} must be a DNS label")
        for f in ("triton_replicas", "triton_max_replicas", "router_min_replicas", "router_max_replicas", "locust_workers"):
            if getattr(self, f) < 1:
                problems.append(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.router_min_replicas > self.router_max_replicas or self.triton_replicas > self.triton_max_replicas:
            problems.append("min replicas must not exceed max replicas")
        if not 1 <= self.router_cpu_target <= 100:
            problems.append(f"router_cpu_target must be a percentage in 1..100, got {self.router_cpu_target}")
        if problems:
            raise K8sError("invalid k8s render config:\n  - " + "\n  - ".join(problems))


def _triton_ports() -> dict[str, int]:
    from serving.triton_cli import triton_parser

    parser = triton_parser()
    return {name: parser.get_default(f"{name}_port") for name in ("http", "grpc", "metrics")}


def _router_port() -> int:
    return next(f.default for f in fields(RouterConfig) if f.name == "port")


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
    ports = _triton_ports()
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
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    data["upstream"] = upstream
    experiment_from_dict(data, str(path))
    return data


def router_manifests(cfg: K8sConfig, base: str, data: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    from serving.router.state import TOKEN_ENV

    name, config_name, port = f"{base}-router", f"{base}-experiment", _router_port()
    experiment_file = "experiment.yaml"
    body = yaml.safe_dump(data, sort_keys=False)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config_name, cfg, "router"),
                 "data": {experiment_file: body}}
    container = {
        "name": "router", "image": cfg.image_app,
        "command": ["python", "-m", "serving", "router"],
        "args": ["--experiment", f"{EXPERIMENT_MOUNT}/{experiment_file}", "--host", "0.0.0.0", "--port", str(port)],
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": cfg.admin_token_secret, "key": "token"}}}],
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
    return [configmap, deployment, service, hpa], f"http://{name}.{cfg.namespace}.svc.cluster.local:{port}"


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
        path.write_text("# Rendered by `python -m serving k8s render`; edit the configs, not this file.\n"
                        + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
        written.append(path)
    return written


def kserve_validator(kubernetes_version: str):
    """A JSON-schema validator for InferenceService: the vendored schema, k8s types from kubernetes-validate."""
    import jsonschema
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from referencing import Registry, Resource

    version = [v for v in all_versions() if major_minor(v) <= major_minor(kubernetes_version)][-1]
    definitions = schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json", Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(json.loads(KSERVE_SCHEMA.read_text()), registry=registry)


def validate_manifest(doc: dict[str, Any], kubernetes_version: str) -> None:
    """Raise K8sError naming the object, the path and the problem if ``doc`` does not validate."""
    import jsonschema
    import kubernetes_validate

    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        if doc.get("apiVersion", "").startswith("serving.kserve.io/"):
            kserve_validator(kubernetes_version).validate(doc)
        else:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    except jsonschema.ValidationError as e:
        raise K8sError(f"{where} is invalid at {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}") from e
    except kubernetes_validate.SchemaNotFoundError as e:
        raise K8sError(f"{where}: {e.message}") from e


# -- CLI -------------------------------------------------------------------------------------------
def _help(name: str) -> str:
    import ast
    import inspect

    body = ast.parse(inspect.getsource(K8sConfig)).body[0].body
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                return str(nxt.value.value)
    return ""


def render_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving k8s render",
                                description="Write Kubernetes manifests for Triton, the router and Locust.")
    for f in fields(K8sConfig):
        required = f.default is MISSING
        kind = int if f.type in ("int",) else str
        extra = {"choices": KINDS} if f.name == "kind" else {}
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, required=required,
                       default=None if required else f.default,
                       help=_help(f.name) + ("" if required else f" (default: {f.default})"), **extra)
    return p


def main(argv: list[str]) -> int:
    """``argv``: ``["k8s", "render", ...]`` or ``["k8s", "validate", DIR]``."""
    rest = argv[1:] if argv and argv[0] == "k8s" else argv
    if not rest or rest[0] not in ("render", "validate"):
        asked = bool(rest) and rest[0] in ("-h", "--help")
        print("usage: python -m serving k8s render --experiment FILE --repository s3://BUCKET/PREFIX [--out DIR] ...\n"
              "       python -m serving k8s validate DIR [--kubernetes-version 1.31]\n"
              "Run `python -m serving k8s render --help` for every option.", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        if rest[0] == "validate":
            p = argparse.ArgumentParser(prog="python -m serving k8s validate")
            p.add_argument("dir", type=Path, help="folder of rendered manifests")
            p.add_argument("--kubernetes-version", default="1.31", help="Kubernetes version to validate against")
            args = p.parse_args(rest[1:])
            docs = [d for path in sorted(args.dir.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
            for doc in docs:
                validate_manifest(doc, args.kubernetes_version)
            print(f"{len(docs)} manifests in {args.dir} are valid (Kubernetes {args.kubernetes_version}, KServe v1beta1)")
            return 0
        cfg = K8sConfig(**vars(render_parser().parse_args(rest[1:])))
        written = write(render(cfg), cfg.out)
    except K8sError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, written)))
    location = S3Location.parse(cfg.repository)
    if cfg.kind == "kserve":
        print(f"Triton: KServe copies {location.uri} to /mnt/models (storage initializer, Secret {cfg.s3_secret}).")
    else:
        print(f"Triton reads the repository itself: --model-repository={location.triton_uri(cfg.s3_endpoint)} "
              f"(credentials from Secret {cfg.s3_secret}); the image's Triton must be built with S3 support, as "
              "NGC images and the nvidia-pytriton wheel's 2.51 are.")
    print(f"Next: kubectl apply -f {cfg.out}  (see serving/scale-out.md for the Secrets)")
    return 0
