"""``python -m deploy k8s render`` with a ``rollout:`` section: the controller's Deployment beside the routers."""

from __future__ import annotations

from pathlib import Path

import yaml

from deploy.cli import main
from experiments.store import STORE_ENV

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "specs" / "sentiment-ab.yaml"


def render(tmp_path: Path, experiment: Path) -> dict[tuple[str, str], dict]:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "--experiment", str(experiment), "--repository", "s3://models/tunestack",
                 "--out", str(out), "--namespace", "ml", "--kind", "deployment"]) == 0  # validates every manifest
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(out.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d}


def test_the_rollout_controller_is_one_deployment_on_the_routers_store_and_experiment(tmp_path):
    assert ("Deployment", "sentiment-ab-rollout") not in render(tmp_path / "plain", EXPERIMENT)
    spec = yaml.safe_load(EXPERIMENT.read_text())
    path = tmp_path / "with-rollout.yaml"
    path.write_text(yaml.safe_dump({**spec, "rollout": {"steps": [5, 50, 100]}}))
    docs = render(tmp_path, path)
    rollout, router = docs[("Deployment", "sentiment-ab-rollout")], docs[("Deployment", "sentiment-ab-router")]
    assert rollout["spec"]["replicas"] == 1 and rollout["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = rollout["spec"]["template"]["spec"]["containers"]
    (r,) = router["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "serving", "rollout"] and "--stay" in c["args"]
    assert c["args"][c["args"].index("--experiment") + 1] == r["args"][r["args"].index("--experiment") + 1]
    store = [e for e in c["env"] if e["name"] == STORE_ENV]
    assert store == [e for e in r["env"] if e["name"] == STORE_ENV], "the controller writes the routers' store"
    configmaps = {v["configMap"]["name"] for v in rollout["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert configmaps == {"sentiment-ab-experiment"}
    assert "rollout:" in docs[("ConfigMap", "sentiment-ab-experiment")]["data"]["experiment.yaml"]
