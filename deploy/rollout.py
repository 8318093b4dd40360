"""The rollout controller in the cluster: one Deployment running ``python -m serving rollout``.

Rendered when the experiment file has a ``rollout:`` section. It reads the same ConfigMap as the router
and the store URL from the same Secret, so its weight changes reach every router replica through the
store; one replica (``Recreate``: never two controllers at once). A restarted pod resumes from the store;
``--stay`` keeps a finished controller's pod Running instead of restarting it.
"""

from __future__ import annotations

from typing import Any

from deploy.config import K8sConfig
from deploy.store import store_env

REPORTS_MOUNT = "/reports"


def rollout_manifests(cfg: K8sConfig, base: str, experiment_path: str, volume: dict[str, Any],
                      deployment, resources) -> list[dict[str, Any]]:
    """The controller's Deployment; ``volume`` is the router's experiment ConfigMap volume, ``deployment``
    and ``resources`` the renderer's builders."""
    name = f"{base}-rollout"
    container = {
        "name": "rollout", "image": cfg.image_app,
        "command": ["python", "-m", "serving", "rollout"],
        "args": ["--experiment", experiment_path, "--out-dir", REPORTS_MOUNT, "--stay"],
        "env": [store_env(cfg)],
        "resources": resources("100m", "256Mi"),
        "volumeMounts": [{"name": volume["name"], "mountPath": experiment_path.rsplit("/", 1)[0], "readOnly": True},
                         {"name": "reports", "mountPath": REPORTS_MOUNT}],
    }
    doc = deployment(name, cfg, "rollout", 1, container, volumes=[volume, {"name": "reports", "emptyDir": {}}])
    doc["spec"]["strategy"] = {"type": "Recreate"}
    return [doc]
