"""``python -m deploy k8s render`` with a ``loop:`` section: the watcher's Deployment on the routers' store."""

from __future__ import annotations

import yaml

from experiments.store import STORE_ENV
from tests.test_rollout_k8s import EXPERIMENT, render


def test_the_loop_watcher_is_one_deployment_on_the_routers_store_and_experiment(tmp_path):
    assert ("Deployment", "sentiment-ab-loop") not in render(tmp_path / "plain", EXPERIMENT)
    spec = yaml.safe_load(EXPERIMENT.read_text())
    path = tmp_path / "with-loop.yaml"
    path.write_text(yaml.safe_dump({**spec, "rollout": {"steps": [5, 50, 100]},
                                    "loop": {"triggers": {"new_labels": 500}}}))
    docs = render(tmp_path / "loop", path)
    watcher, router = docs[("Deployment", "sentiment-ab-loop")], docs[("Deployment", "sentiment-ab-router")]
    assert watcher["spec"]["replicas"] == 1 and watcher["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = watcher["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "workflows", "retrain"] and "--watch" in c["args"]
    (rc,) = router["spec"]["template"]["spec"]["containers"]
    store = [e for e in c["env"] if e["name"] == STORE_ENV]
    assert store and store == [e for e in rc["env"] if e["name"] == STORE_ENV]  # the same Secret as the routers
    volumes = watcher["spec"]["template"]["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} == {"sentiment-ab-experiment"}
    assert ("PersistentVolumeClaim", "sentiment-ab-loop") in docs
