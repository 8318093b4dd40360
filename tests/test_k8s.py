"""``python -m deploy k8s render``: manifests that validate offline and carry the configs' names, ports, weights."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.cli import main
from deploy.config import K8sError
from deploy.manifest_checks import KSERVE_SCHEMA, LIVE, READY, kserve_validator, validate_manifest
from experiments.spec import experiment_from_dict, load_experiment
from serving.admin_token import TOKEN_ENV
from serving.router.config import RouterConfig
from serving.triton_cli import TritonArgs

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "specs" / "sentiment-ab.yaml"
REPOSITORY = "s3://models/tunestack"
K8S_VERSION = "1.31"


def render(tmp_path: Path, *extra: str) -> dict[tuple[str, str], dict]:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "--experiment", str(EXPERIMENT), "--repository", REPOSITORY,
                 "--out", str(out), "--namespace", "ml", *extra]) == 0
    docs = [d for p in sorted(out.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(by_key) == len(docs), "two objects share a kind and name"
    return by_key


def container(doc: dict) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.fixture(params=["kserve", "deployment"])
def rendered(request, tmp_path):
    return request.param, render(tmp_path, "--kind", request.param)


def test_every_manifest_validates_offline(rendered):
    kind, docs = rendered
    kinds = sorted(k for k, _ in docs)
    if kind == "kserve":
        assert kinds.count("InferenceService") == 1 and "ServiceAccount" in kinds
    else:
        assert kinds.count("Deployment") == 4  # triton, router, locust master + worker
    validator = kserve_validator(K8S_VERSION)
    for (k, name), doc in docs.items():
        if k == "InferenceService":
            errors = [e.message for e in validator.iter_errors(doc)]
            assert errors == [], (name, errors)
        else:
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_names_ports_and_weights_come_from_the_configs(rendered):
    kind, docs = rendered
    experiment = load_experiment(EXPERIMENT)
    base = experiment.name
    http_port = TritonArgs.http_port
    router_port = RouterConfig(experiment=str(EXPERIMENT)).port

    # the router's experiment: the file's arms and weights, upstream at the in-cluster Triton
    configmap = docs[("ConfigMap", f"{base}-experiment")]
    in_cluster = experiment_from_dict(yaml.safe_load(configmap["data"]["experiment.yaml"]))
    assert [(a.name, a.model, a.version, a.weight) for a in in_cluster.arms] == \
        [(a.name, a.model, a.version, a.weight) for a in experiment.arms]
    assert (in_cluster.name, in_cluster.sticky, in_cluster.fallback) == (experiment.name, experiment.sticky, experiment.fallback)
    if kind == "kserve":
        isvc = docs[("InferenceService", f"{base}-triton")]
        model = isvc["spec"]["predictor"]["model"]
        assert model["storageUri"] == REPOSITORY and model["protocolVersion"] == "v2"
        assert isvc["spec"]["predictor"]["serviceAccountName"] in {n for k, n in docs if k == "ServiceAccount"}
        assert in_cluster.upstream == f"http://{base}-triton-predictor.ml.svc.cluster.local:80"
    else:
        triton = docs[("Deployment", f"{base}-triton")]
        service = docs[("Service", f"{base}-triton")]
        ports = {p["name"]: p["containerPort"] for p in container(triton)["ports"]}
        assert ports == {n: getattr(TritonArgs, f"{n}_port") for n in ("http", "grpc", "metrics")}
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
        assert f"--model-repository={REPOSITORY}" in container(triton)["args"]
        assert service["spec"]["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
        assert in_cluster.upstream == f"http://{base}-triton.ml.svc.cluster.local:{http_port}"
        assert container(triton)["readinessProbe"]["httpGet"]["path"] == READY

    # the router: its port, probes on its health routes, the admin token from a Secret, an HPA on it
    router = docs[("Deployment", f"{base}-router")]
    c = container(router)
    assert c["ports"] == [{"name": "http", "containerPort": router_port}]
    assert arg_after(c["args"], "--port") == str(router_port)
    assert (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == (READY, LIVE)
    assert c["resources"]["requests"].keys() == {"cpu", "memory"}
    assert c["env"] == [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "tunestack-router-admin", "key": "token"}}},
                        {"name": "TUNESTACK_ROUTER_STORE", "valueFrom": {"secretKeyRef": {"name": "tunestack-router-store",
                                                                                          "key": "url"}}}]
    assert docs[("Service", f"{base}-router")]["spec"]["ports"][0]["port"] == router_port
    hpa = docs[("HorizontalPodAutoscaler", f"{base}-router")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{base}-router"}
    assert hpa["spec"]["minReplicas"] == router["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]

    # Locust: the master aims at the router's Service and experiment; the workers find the master
    master, worker = docs[("Deployment", f"{base}-locust-master")], docs[("Deployment", f"{base}-locust-worker")]
    assert arg_after(container(master)["args"], "--host") == f"http://{base}-router.ml.svc.cluster.local:{router_port}"
    assert arg_after(container(master)["args"], "--experiment") == experiment.name
    assert arg_after(container(worker)["args"], "--master-host") == f"{base}-locust-master"
    master_port = arg_after(container(master)["args"], "--master-bind-port")
    assert arg_after(container(worker)["args"], "--master-port") == master_port
    assert {p["name"]: p["port"] for p in docs[("Service", f"{base}-locust-master")]["spec"]["ports"]}["master"] == int(master_port)
    assert "--run-time" not in container(master)["args"] + container(worker)["args"]


def test_probe_paths_are_routes_of_the_router_app():
    from serving.router.app import create_app

    app = create_app(RouterConfig(experiment=str(EXPERIMENT)), load_experiment(EXPERIMENT))
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {LIVE, READY} <= paths


@pytest.mark.parametrize("path, value, fragment", [
    (("spec", "predictor", "model", "storageURI"), "s3://x/y", "Additional properties"),
    (("spec", "predictor", "scaleMetric"), "gpu", "is not one of"),
    (("spec", "predictor", "model", "resources", "requests"), {"cpu": {"cores": 2}}, "predictor.model.resources"),
    (("metadata", "name"), "Sentiment_AB", "does not match"),
])
def test_invalid_inference_service_is_refused(tmp_path, path, value, fragment):
    docs = render(tmp_path, "--kind", "kserve")
    isvc = copy.deepcopy(next(d for (k, _), d in docs.items() if k == "InferenceService"))
    node = isvc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(K8sError, match=fragment):
        validate_manifest(isvc, K8S_VERSION)


def test_invalid_builtin_is_refused(tmp_path):
    docs = render(tmp_path, "--kind", "deployment")
    router = copy.deepcopy(docs[("Deployment", "sentiment-ab-router")])
    container(router)["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(K8sError, match="Deployment/sentiment-ab-router is invalid"):
        validate_manifest(router, K8S_VERSION)
    hpa = copy.deepcopy(docs[("HorizontalPodAutoscaler", "sentiment-ab-router")])
    hpa["spec"]["minReplica"] = 2
    with pytest.raises(K8sError, match="minReplica"):
        validate_manifest(hpa, K8S_VERSION)


def test_vendored_schema_names_its_source():
    text = KSERVE_SCHEMA.read_text()
    assert "github.com/kserve/kserve" in text and "serving.kserve.io/v1beta1" in text


def test_bad_inputs_are_reported_with_the_value(tmp_path, capsys):
    assert main(["k8s", "render", "--experiment", str(EXPERIMENT), "--repository", "model_repository",
                 "--out", str(tmp_path), "--namespace", "Bad_NS"]) == 2
    err = capsys.readouterr().err
    assert "'model_repository' is not an S3 URI" in err and "namespace 'Bad_NS'" in err
    assert not any(tmp_path.iterdir())

    own_upstream = tmp_path / "own-upstream.yaml"
    data = yaml.safe_load(EXPERIMENT.read_text())
    data["arms"][1]["upstream"] = "http://127.0.0.1:9000"
    own_upstream.write_text(yaml.safe_dump(data))
    assert main(["k8s", "render", "--experiment", str(own_upstream), "--repository", REPOSITORY,
                 "--out", str(tmp_path / "out")]) == 2
    assert "['treatment'] set their own upstream" in capsys.readouterr().err


def test_validate_command_checks_a_rendered_folder(tmp_path, capsys):
    render(tmp_path)
    assert main(["k8s", "validate", str(tmp_path / "k8s")]) == 0
    assert "manifests in" in capsys.readouterr().out
    broken = tmp_path / "k8s" / "router.yaml"
    broken.write_text(broken.read_text().replace("minReplicas:", "minReplicaz:", 1))
    assert main(["k8s", "validate", str(tmp_path / "k8s")]) == 2
