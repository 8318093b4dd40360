"""The retrain loop's watcher in the cluster: one Deployment running ``python -m workflows retrain --watch``.

Rendered when the experiment file has a ``loop:`` section. It reads the same ConfigMap as the router and the
store URL from the same Secret, so it sees the routers' kept inputs, feedback and drift windows, and its canary
goes through the store's revisions like the rollout controller's. One replica, ``Recreate``; the store's lease
also keeps a second watcher (a pod that lingers, a second cluster on the same store) from starting a second
cycle, and a restarted pod resumes the unfinished cycle from the store. Its runs and the model repository it
publishes into are a PersistentVolumeClaim (``loop.runs_dir``, ``loop.repository`` relative to ``/work``).
"""

from __future__ import annotations

from typing import Any

from deploy.config import K8sConfig
from deploy.store import store_env

WORK_MOUNT = "/work"


def loop_manifests(cfg: K8sConfig, base: str, experiment_path: str, volume: dict[str, Any],
                   deployment, resources) -> list[dict[str, Any]]:
    """The watcher's Deployment and its volume claim; ``volume`` is the router's experiment ConfigMap volume,
    ``deployment`` and ``resources`` the renderer's builders."""
    name = f"{base}-loop"
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": name, "namespace": cfg.namespace, "labels": {"app.kubernetes.io/name": name}},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}}
    container = {
        "name": "loop", "image": cfg.image_app, "workingDir": WORK_MOUNT,
        "command": ["python", "-m", "workflows", "retrain"],
        "args": ["--experiment", experiment_path, "--watch", "--who", name],
        "env": [store_env(cfg)],
        "resources": resources("2", "8Gi"),
        "volumeMounts": [{"name": volume["name"], "mountPath": experiment_path.rsplit("/", 1)[0], "readOnly": True},
                         {"name": "work", "mountPath": WORK_MOUNT}],
    }
    doc = deployment(name, cfg, "loop", 1, container,
                     volumes=[volume, {"name": "work", "persistentVolumeClaim": {"claimName": name}}])
    doc["spec"]["strategy"] = {"type": "Recreate"}
    return [claim, doc]
