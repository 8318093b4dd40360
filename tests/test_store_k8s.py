"""``python -m deploy k8s render`` with the experiment store: the store Secret, the trial PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import yaml

from deploy.cli import main
from experiments.store import STORE_ENV

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "specs" / "sentiment-ab.yaml"
REPOSITORY = "s3://models/tunestack"


def render(tmp_path: Path, *extra: str) -> dict[tuple[str, str], dict]:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "--experiment", str(EXPERIMENT), "--repository", REPOSITORY, "--out", str(out),
                 "--namespace", "ml", "--kind", "deployment", *extra]) == 0  # render validates every manifest
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(out.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d}


def store_env(docs: dict) -> dict:
    (c,) = docs[("Deployment", "sentiment-ab-router")]["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in c["env"] if e["name"] == STORE_ENV]
    return env["valueFrom"]["secretKeyRef"]


def test_every_replica_reads_the_store_url_from_one_secret(tmp_path):
    docs = render(tmp_path)
    assert store_env(docs) == {"name": "tunestack-router-store", "key": "url"}
    assert not [k for k in docs if k[0] in ("Secret", "StatefulSet")]  # the user creates the Secret

    url = "postgresql://router:pw@db.example:5432/tunestack"
    docs = render(tmp_path / "named", "--store-url", url, "--store-secret", "my-store")
    assert store_env(docs) == {"name": "my-store", "key": "url"}
    assert docs[("Secret", "my-store")]["stringData"] == {"url": url}


def test_trial_postgres_statefulset_and_the_secret_pointing_at_it(tmp_path):
    docs = render(tmp_path, "--store-postgres")
    sts = docs[("StatefulSet", "sentiment-ab-postgres")]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    password = docs[("Secret", "sentiment-ab-postgres")]["stringData"]["password"]
    url = docs[("Secret", "tunestack-router-store")]["stringData"]["url"]
    assert url == f"postgresql://tunestack:{password}@sentiment-ab-postgres.ml.svc.cluster.local:5432/tunestack"
    assert docs[("Service", "sentiment-ab-postgres")]["spec"]["ports"][0]["port"] == 5432


def test_bad_store_options_are_refused(tmp_path, capsys):
    out = str(tmp_path / "k8s")
    base = ["k8s", "render", "--experiment", str(EXPERIMENT), "--repository", REPOSITORY, "--out", out]
    assert main([*base, "--store-url", "sqlite:///x.sqlite"]) == 2
    assert "store_url must be a PostgreSQL URL" in capsys.readouterr().err
    assert main([*base, "--store-url", "postgresql://a@b/c", "--store-postgres"]) == 2
    assert "not both" in capsys.readouterr().err
