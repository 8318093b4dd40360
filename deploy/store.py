"""The experiment store in the cluster: every router replica reads its URL from one Secret.

- ``--store-url postgresql://...``: render that Secret (key ``url``) with the URL you name; without it,
  create the Secret yourself (``kubectl create secret generic NAME --from-literal=url=postgresql://...``).
- ``--store-postgres``: for trying the fleet out, also render a single-replica PostgreSQL StatefulSet
  (a PersistentVolumeClaim, a Service, a random password in its own Secret) and point the Secret at it.
  One pod, no backups, no failover: use a managed or operator-run PostgreSQL in production.
"""

from __future__ import annotations

import secrets
from typing import Any

from deploy.config import K8sConfig

POSTGRES_PORT = 5432
POSTGRES_DB = "tunestack"
POSTGRES_USER = "tunestack"


def store_env(cfg: K8sConfig) -> dict[str, Any]:
    """The router container's environment entry: ``TUNESTACK_ROUTER_STORE`` from the store Secret."""
    from experiments.store import STORE_ENV

    return {"name": STORE_ENV, "valueFrom": {"secretKeyRef": {"name": cfg.store_secret, "key": "url"}}}


def _secret(name: str, cfg: K8sConfig, data: dict[str, str], meta) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta(name, cfg, "store"), "type": "Opaque",
            "stringData": data}


def store_manifests(cfg: K8sConfig, base: str, meta, resources) -> list[dict[str, Any]]:
    """The store Secret (when the URL is named or PostgreSQL is rendered) and the trial PostgreSQL."""
    if not cfg.store_postgres:
        return [_secret(cfg.store_secret, cfg, {"url": cfg.store_url}, meta)] if cfg.store_url else []
    name = f"{base}-postgres"
    password = secrets.token_hex(16)  # a new one per render: the trial database is rendered with it
    url = f"postgresql://{POSTGRES_USER}:{password}@{name}.{cfg.namespace}.svc.cluster.local:{POSTGRES_PORT}/{POSTGRES_DB}"
    selector = {"app.kubernetes.io/name": name}
    container = {
        "name": "postgres", "image": cfg.postgres_image,
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
        "env": [{"name": "POSTGRES_DB", "value": POSTGRES_DB}, {"name": "POSTGRES_USER", "value": POSTGRES_USER},
                {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
        "resources": resources("500m", "512Mi"),
        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", POSTGRES_USER, "-d", POSTGRES_DB]},
                           "periodSeconds": 5},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(name, cfg, "store"),
        "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": meta(name, cfg, "store")["labels"]},
                              "spec": {"containers": [container]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                     "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cfg.postgres_storage}}}}]},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, cfg, "store"),
               "spec": {"selector": selector, "ports": [{"name": "postgres", "port": POSTGRES_PORT,
                                                         "targetPort": "postgres", "protocol": "TCP"}]}}
    return [_secret(name, cfg, {"password": password}, meta), _secret(cfg.store_secret, cfg, {"url": url}, meta),
            statefulset, service]
