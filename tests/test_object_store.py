"""The model repository in an S3-compatible bucket, against a real S3 server (moto in server mode).

A ``moto_server`` process listens on a free 127.0.0.1 port for the module; every test gets its own
bucket. The export published is the real tiny run from conftest (``tiny_onnx_dir``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from export import triton_config
from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.errors import ConfigError, InputError
from export.object_store import (
    CLAIM_MARKER,
    COMPLETE_MARKER,
    S3Location,
    S3Repository,
    download_repository,
    list_versions,
    publish_s3,
)
from tunestack.layout import RunLayout
from tunestack.procs import free_port

MODEL = CONTRACT.default_model_name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- no server needed ------------------------------------------------------------------------------
def test_location_parse_keys_and_triton_uri():
    loc = S3Location.parse("s3://models/prod/repo/")
    assert (loc.bucket, loc.prefix, loc.uri) == ("models", "prod/repo", "s3://models/prod/repo")
    assert loc.key("sentiment", 3, "model.onnx") == "prod/repo/sentiment/3/model.onnx"
    assert S3Location.parse("s3://models").key("sentiment", "config.pbtxt") == "sentiment/config.pbtxt"
    assert loc.triton_uri() == "s3://models/prod/repo"
    assert loc.triton_uri("http://127.0.0.1:9000") == "s3://http://127.0.0.1:9000/models/prod/repo"
    assert loc.triton_uri("https://minio.internal") == "s3://https://minio.internal:443/models/prod/repo"


@pytest.mark.parametrize("uri, fragment", [
    ("models/repo", "not an S3 URI"),
    ("s3://Models/repo", "bucket 'Models'"),
    ("s3://models/a b", "prefix parts ['a b']"),
])
def test_location_parse_rejects(uri, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        S3Location.parse(uri)


# -- a real S3 server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """``moto_server`` on a free 127.0.0.1 port; stopped at the end of the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def repo(s3_endpoint, monkeypatch) -> S3Repository:
    """A fresh bucket on the moto server, reached the way production code reaches one: from the env."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint, "NO_PROXY": "127.0.0.1,localhost"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    repository = S3Repository.from_env(f"s3://tunestack-{uuid.uuid4().hex[:12]}/repo")
    assert repository.endpoint_url == s3_endpoint
    repository.client.create_bucket(Bucket=repository.location.bucket)
    return repository


def snapshot(repo: S3Repository) -> dict[str, str]:
    """Every object in the bucket -> sha256 of its body."""
    keys = repo._keys("")
    return {k: sha256_bytes(repo.client.get_object(Bucket=repo.location.bucket, Key=k)["Body"].read()) for k in keys}


def bucket_config(repo: S3Repository, model: str = MODEL):
    return triton_config.parse_pbtxt(repo.read_text(repo.location.key(model, "config.pbtxt")))


def cfg(**overrides) -> ExportConfig:
    return ExportConfig(**({"model_name": MODEL, "served_versions": 2} | overrides))


@pytest.mark.e2e
def test_versions_go_up_and_config_names_complete_versions(repo, tiny_onnx_dir):
    uri1 = publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    uri2 = publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo)
    assert (uri1, uri2) == (f"{repo.location.uri}/{MODEL}/1", f"{repo.location.uri}/{MODEL}/2")
    assert list_versions(repo.location, MODEL) == [1, 2]  # a fresh client from the env sees the same
    assert list(bucket_config(repo).version_policy.specific.versions) == [1, 2]  # served_versions=2

    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    assert repo.list_versions(MODEL) == [1, 2, 3]
    assert list(bucket_config(repo).version_policy.specific.versions) == [2, 3]

    keys = repo._keys(repo.location.key(MODEL, 2) + "/")
    assert not any(k.endswith(CLAIM_MARKER) for k in keys)  # claims are removed once published
    manifest = repo.manifest(MODEL, 2)
    onnx = (tiny_onnx_dir / VARIANT_FILES["int8"]).read_bytes()
    assert manifest["files"][CONTRACT.onnx_file] == {"size": len(onnx), "sha256": sha256_bytes(onnx)}
    provenance = json.loads(repo.read_text(repo.location.key(MODEL, 2, "provenance.json")))
    assert (provenance["version"], provenance["variant"]) == (2, "int8")
    assert provenance["export_config"]["repository"] == repo.location.uri
    assert repo.find_published(MODEL, sha256_bytes(onnx), "int8") == uri2
    assert repo.find_published(MODEL, sha256_bytes(onnx), "fp32") is None


class Boom(RuntimeError):
    pass


def fail_at(predicate):
    def on_uploaded(key: str, size: int) -> None:
        if predicate(key):
            raise Boom(f"injected failure after uploading {key}")
    return on_uploaded


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["midway through the files", "after the config was replaced"])
def test_failed_publish_leaves_the_bucket_as_it_was(repo, tiny_onnx_dir, where):
    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    before = snapshot(repo)
    uploads: list[str] = []

    def predicate(key: str) -> bool:
        uploads.append(key)
        return len(uploads) == 3 if where.startswith("midway") else key.endswith("config.pbtxt")

    with pytest.raises(Boom):
        publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo, on_uploaded=fail_at(predicate))
    assert len(uploads) >= 3
    assert snapshot(repo) == before  # the same objects with the same bytes: config.pbtxt put back
    assert repo.list_versions(MODEL) == [1]
    assert publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo).endswith(f"/{MODEL}/2")


@pytest.mark.e2e
def test_failed_first_publish_leaves_an_empty_bucket(repo, tiny_onnx_dir):
    with pytest.raises(Boom):
        publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo,
                   on_uploaded=fail_at(lambda key: key.endswith("config.pbtxt")))
    assert snapshot(repo) == {}


def abandon_version(repo: S3Repository, version: int) -> None:
    """What a publisher killed midway leaves behind: some files of a version, no marker, no config change."""
    for name, body in [("model.py", b"raise RuntimeError('half-uploaded version loaded')\n"), (CONTRACT.label_map_file, b"{}")]:
        repo.client.put_object(Bucket=repo.location.bucket, Key=repo.location.key(MODEL, version, name), Body=body)


@pytest.mark.e2e
def test_abandoned_version_is_invisible_and_its_number_never_reused(repo, tiny_onnx_dir):
    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    abandon_version(repo, 2)
    assert repo.versions(MODEL)[:2] == ([1, 2], [1])
    assert repo.list_versions(MODEL) == [1]
    assert publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo).endswith(f"/{MODEL}/3")
    assert repo.list_versions(MODEL) == [1, 3]
    assert list(bucket_config(repo).version_policy.specific.versions) == [1, 3]


@pytest.mark.e2e
def test_download_round_trip(repo, tiny_onnx_dir, tmp_path):
    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo)
    abandon_version(repo, 3)
    dest = download_repository(repo.location, tmp_path / "local")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert f"{MODEL}/config.pbtxt" in files
    assert {f.split("/")[1] for f in files if f.count("/") == 2} == {"1", "2"}  # no abandoned version 3
    assert not any(f.endswith((COMPLETE_MARKER, CLAIM_MARKER)) for f in files)
    for version, variant in [(1, "fp32"), (2, "int8")]:
        local = (dest / MODEL / str(version) / CONTRACT.onnx_file).read_bytes()
        assert local == (tiny_onnx_dir / VARIANT_FILES[variant]).read_bytes()
        assert set(repo.manifest(MODEL, version)["files"]) == {
            p.relative_to(dest / MODEL / str(version)).as_posix()
            for p in (dest / MODEL / str(version)).rglob("*") if p.is_file()}
    assert (dest / MODEL / "config.pbtxt").read_text() == repo.read_text(repo.location.key(MODEL, "config.pbtxt"))

    with pytest.raises(InputError, match="not empty"):
        download_repository(repo.location, dest)
    repo.client.put_object(Bucket=repo.location.bucket, Key=repo.location.key(MODEL, 1, CONTRACT.onnx_file), Body=b"x")
    with pytest.raises(InputError, match="does not match its manifest"):
        download_repository(repo.location, tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.e2e
def test_ensemble_layout_publishes_every_step_with_one_version(repo, tiny_onnx_dir):
    publish_s3(tiny_onnx_dir, "fp32", cfg(layout="onnxruntime"), repo.location, repository=repo)
    publish_s3(tiny_onnx_dir, "int8", cfg(layout="onnxruntime"), repo.location, repository=repo)
    models = [MODEL, *triton_config.step_names(MODEL).values()]
    assert repo.models() == sorted(models)
    for model in models:
        assert repo.list_versions(model) == [1, 2]
        assert list(bucket_config(repo, model).version_policy.specific.versions)[-1] == 2


@pytest.mark.e2e
def test_bundled_triton_serves_the_bucket_and_never_sees_an_unfinished_version(repo, tiny_onnx_dir, tmp_path):
    """The bundled Triton 2.51 reads s3:// repositories; the pinned config hides the abandoned version."""
    import tritonclient.http as httpclient

    from serving.triton import TritonServer

    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    publish_s3(tiny_onnx_dir, "int8", cfg(), repo.location, repository=repo)
    abandon_version(repo, 3)  # newest folder: a latest-2 policy would load it (and fail)
    empty = tmp_path / "empty-local-repository"
    empty.mkdir()
    server = TritonServer(empty, models=[MODEL], extra_args=[f"--model-repository={repo.triton_uri}"],
                          startup_timeout=120)
    with server:
        client = httpclient.InferenceServerClient(server.http_address)
        try:
            index = {(m["name"], m.get("version")): m.get("state") for m in client.get_model_repository_index()}
            assert index.get((MODEL, "1")) == "READY" and index.get((MODEL, "2")) == "READY", index
            assert (MODEL, "3") not in index, index
            text = httpclient.InferInput(CONTRACT.input_text, [2, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"a wonderful film"], [b"dull and far too long"]], dtype=object))
            result = client.infer(MODEL, [text], model_version="2")
            labels = json.loads((tiny_onnx_dir / CONTRACT.label_map_file).read_text())["labels"]
            assert {x.decode() for x in result.as_numpy(CONTRACT.output_label).ravel()} <= set(labels)
            assert np.allclose(result.as_numpy(CONTRACT.output_probabilities).sum(axis=1), 1.0, atol=1e-4)
        finally:
            client.close()


@pytest.mark.e2e
def test_a_version_claimed_by_another_publisher_is_refused_and_left_alone(repo, tiny_onnx_dir):
    """Two publishers pick the same number: the second's conditional write of the claim fails."""
    from export.errors import PublishError

    class RacingRepository(S3Repository):
        def _mirror(self, mirror, models):
            version = super()._mirror(mirror, models)  # chosen; now another publisher claims it first
            self.client.put_object(Bucket=self.location.bucket, Body=b"{}",
                                   Key=self.location.key(MODEL, version, CLAIM_MARKER))
            return version

    publish_s3(tiny_onnx_dir, "fp32", cfg(), repo.location, repository=repo)
    racing = RacingRepository(repo.location, repo.client, repo.endpoint_url)
    before = snapshot(repo)
    with pytest.raises(PublishError, match="version 2 of sentiment .* is being published by another process"):
        racing.publish(tiny_onnx_dir, "int8", cfg())
    after = snapshot(repo)
    assert repo.location.key(MODEL, 2, CLAIM_MARKER) in after  # the other publisher's claim is untouched
    assert {k: v for k, v in after.items() if not k.endswith(CLAIM_MARKER)} == before
    assert repo.list_versions(MODEL) == [1]


@pytest.mark.e2e
def test_missing_bucket_is_reported(repo, tiny_onnx_dir):
    missing = S3Repository(S3Location.parse("s3://no-such-bucket-here/repo"), repo.client, repo.endpoint_url)
    with pytest.raises(InputError, match="bucket 'no-such-bucket-here' does not exist"):
        missing.publish(tiny_onnx_dir, "fp32", cfg())


@pytest.mark.e2e
def test_export_cli_publishes_to_the_bucket_once(repo, tiny_onnx_dir, capsys):
    """``python -m export --repository s3://...``: versions 1 and 2, then 'already published' on a re-run."""
    from export.__main__ import main as export_main

    runs = tiny_onnx_dir.parent.parent
    argv = ["--adapter", str(RunLayout.of(runs, "tiny").adapter), "--runs-dir", str(runs), "--repository", repo.location.uri,
            "--model-name", MODEL, "--int8-max-accuracy-drop", "100", "--variants", "fp32,int8"]
    assert export_main(argv) == 0
    first = capsys.readouterr().out
    assert "published:    fp32 -> " in first and repo.triton_uri in first
    assert repo.list_versions(MODEL) == [1, 2]
    before = snapshot(repo)
    assert export_main(argv) == 0
    assert first.count("already published") == 0 and capsys.readouterr().out.count("already published") == 2
    assert snapshot(repo) == before


@pytest.mark.e2e
def test_the_retrain_loop_publishes_its_candidate_to_the_bucket_once(repo, tiny_onnx_dir, tmp_path):
    import asyncio

    from experiments.rollout.config import RolloutConfig
    from experiments.store import open_store
    from workflows.loop.config import LoopConfig
    from workflows.loop.cycle import Cycle, LoopContext

    uri = repo.location.uri
    loop = LoopConfig.from_dict({"production_run": str(tiny_onnx_dir.parent), "runs_dir": str(tmp_path),
                                 "repository": uri})
    assert loop.repository == uri  # an S3 URI stays a string
    spec = {"name": "loop", "arms": [{"name": "production", "model": MODEL, "version": "1", "weight": 100},
                                     {"name": "candidate", "model": MODEL, "version": "1", "weight": 0}]}

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            await store.add_revision("loop", spec, "file", "test", "start")
            cycle = Cycle(store, LoopContext("loop", loop, RolloutConfig()), 1, "manual")
            done = {"export": {"onnx_dir": str(tiny_onnx_dir)}}
            return await cycle._publish(done), await cycle._publish(done)

    first, second = asyncio.run(go())
    assert first == {"model": MODEL, "version": "1", "folder": f"{uri}/{MODEL}/1", "already_published": False}
    assert second == {**first, "already_published": True}  # the same ONNX file: the version that serves it
    assert repo.list_versions(MODEL) == [1]
