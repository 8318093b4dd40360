"""The deploy stage's configuration: what ``python -m deploy k8s render`` needs beyond the experiment file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from export.errors import ConfigError
from export.s3 import S3Location
from tunestack.problems import raise_problems

KINDS = ("kserve", "deployment")
"""How Triton runs in the cluster: a KServe InferenceService, or a plain Deployment + Service."""
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


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
    """Triton image with the python backend's packages (onnxruntime, tokenizers); see docs/operations.md."""
    image_app: str = "tunestack:latest"
    """This project's image, for the router and Locust (working directory = the repository root)."""
    s3_endpoint: str | None = None
    """Endpoint of an S3-compatible server (MinIO...); None: AWS S3."""
    s3_secret: str = "tunestack-s3"
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the bucket."""
    admin_token_secret: str = "tunestack-router-admin"
    """Secret whose key ``token`` is the router's admin bearer token."""
    store_secret: str = "tunestack-router-store"
    """Secret whose key ``url`` is the experiment store every router replica shares (PostgreSQL)."""
    store_url: str | None = None
    """PostgreSQL URL the routers share, rendered into the Secret ``store_secret``; None: create that Secret
    yourself (kubectl create secret generic tunestack-router-store --from-literal=url=postgresql://...)."""
    store_postgres: bool = False
    """Also render a single-replica PostgreSQL StatefulSet and point ``store_secret`` at it: for trying the
    fleet out (one pod, no backups); not for production."""
    postgres_image: str = "postgres:17"
    """Image of the trial PostgreSQL (``store_postgres``)."""
    postgres_storage: str = "1Gi"
    """Volume size of the trial PostgreSQL (``store_postgres``)."""
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
        if self.store_url is not None and not self.store_url.startswith(("postgresql://", "postgres://")):
            problems.append(f"store_url must be a PostgreSQL URL (postgresql://USER:PASSWORD@HOST/DB) that every "
                            f"router replica shares, got {self.store_url!r}")
        if self.store_url and self.store_postgres:
            problems.append("give store_url or store_postgres, not both: store_postgres renders its own URL")
        raise_problems(problems, K8sError, "k8s render config")
