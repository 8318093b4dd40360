"""A Triton model repository in an S3-compatible bucket: publish into it, list it, copy it down.

``runs/NAME/onnx/ -> s3://BUCKET/PREFIX/MODEL/config.pbtxt + s3://BUCKET/PREFIX/MODEL/N/``

The bucket holds the same layout as a local repository (``export.publish``), plus one object per
finished version, ``MODEL/N/.tunestack-complete``: the version's manifest (every file with its size
and sha256), written after the files. The guarantees are the local ones:

- versions only go up: N is 1 + the largest version under any of the layout's models, counting
  versions that were never finished, and N is claimed with a conditional write
  (``If-None-Match: *``), so two publishers never write the same version;
- a version becomes visible only when complete: the files go up first, then the completion marker,
  then ``config.pbtxt`` last. Readers here (``list_versions``, ``download_repository``) count only
  versions with a marker. Triton sees a version only once ``config.pbtxt`` names it: the
  bucket's config pins ``version_policy { specific { versions: [...] } }`` to the newest complete
  versions the export config's policy asks for (``served_versions``), so a half-uploaded version
  is never loaded, even by a server that re-reads the repository in the middle of an upload;
- a failed publish deletes what it uploaded and puts back any ``config.pbtxt`` it replaced.

The version is staged on local disk by ``export.publish`` itself, into a temporary repository that
mirrors the bucket's models (their ``config.pbtxt`` and empty version folders), so checks, file set
and provenance are exactly those of a local publish. Credentials and region come from the standard
AWS environment variables; the endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, read
once, where the client is built (``S3Repository.from_env``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from export import triton_config
from export.config import ExportConfig
from export.errors import InputError, PublishError
from export.s3 import S3Location, endpoint_from_env, is_s3_uri, make_client  # noqa: F401  (re-exported)
from tunestack.files import atomic_folder, sha256

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".tunestack-complete"
"""Written after every file of a version; its JSON body is the version's manifest."""
CLAIM_MARKER = ".tunestack-publishing"
"""Created with ``If-None-Match: *`` before the first file of a version; deleted once published."""
Uploaded = Callable[[str, int], None]
"""Called after each object is uploaded with its key and size: progress reporting."""


def pinned_policy(config, complete: list[int]) -> None:
    """Replace a ``latest``/``all`` version policy with ``specific`` naming the versions it would serve.

    In the bucket, ``config.pbtxt`` is what makes a version visible to Triton: a version folder that
    is still uploading (or was abandoned) is never named, whatever Triton lists.
    """
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        return
    versions = triton_config.policy_versions(policy, complete)
    policy.specific.SetInParent()  # a oneof: this clears latest / all
    del policy.specific.versions[:]
    policy.specific.versions.extend(versions)


class S3Repository:
    """A model repository at ``location``, through one S3 client.

    Args:
        location: the bucket and prefix.
        client: a boto3 S3 client; ``from_env`` builds one.
        endpoint_url: the endpoint the client talks to (None: AWS); used for ``triton_uri``.
    """

    def __init__(self, location: S3Location, client, endpoint_url: str | None = None):
        self.location = location
        self.client = client
        self.endpoint_url = endpoint_url

    @classmethod
    def from_env(cls, location: S3Location | str, env: Mapping[str, str] | None = None) -> S3Repository:
        location = S3Location.parse(location) if isinstance(location, str) else location
        endpoint = endpoint_from_env(env)
        return cls(location, make_client(endpoint), endpoint)

    @property
    def triton_uri(self) -> str:
        return self.location.triton_uri(self.endpoint_url)

    # -- reading ---------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404") and what.startswith("list"):
                raise InputError(f"bucket {self.location.bucket!r} does not exist at "
                                 f"{self.endpoint_url or 'AWS'} (create it first)") from e
            raise
        except BotoCoreError as e:  # no endpoint, no credentials, ...
            raise InputError(f"cannot {what} {self.location} at {self.endpoint_url or 'AWS S3'}: {e}") from e

    def _keys(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
        found: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", lambda: list(paginator.paginate(Bucket=self.location.bucket, Prefix=prefix)))
        for page in pages:
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj["Size"]
        return found

    def models(self) -> list[str]:
        """Model folders under the prefix (any that hold at least one object)."""
        base = self.location.key() + "/" if self.location.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", lambda: list(paginator.paginate(Bucket=self.location.bucket, Prefix=base, Delimiter="/")))
        return sorted(p["Prefix"][len(base):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

    def versions(self, model: str) -> tuple[list[int], list[int], bool]:
        """``(every version present, complete versions, has config.pbtxt)`` of ``model``."""
        base = self.location.key(model) + "/"
        present, complete, has_config = set(), set(), False
        for key in self._keys(base):
            rest = key[len(base):]
            head, _, tail = rest.partition("/")
            if rest == "config.pbtxt":
                has_config = True
            elif head.isdigit() and tail:
                present.add(int(head))
                if tail == COMPLETE_MARKER:
                    complete.add(int(head))
        return sorted(present), sorted(complete), has_config

    def list_versions(self, model: str) -> list[int]:
        """The complete versions of ``model``: those a reader may use."""
        return self.versions(model)[1]

    def read_text(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            body = self._call("read", self.client.get_object, Bucket=self.location.bucket, Key=key)["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return body.read().decode()

    def manifest(self, model: str, version: int) -> dict[str, Any]:
        text = self.read_text(self.location.key(model, version, COMPLETE_MARKER))
        if text is None:
            raise InputError(f"{self.location.uri}/{model}/{version} is not a complete version (no {COMPLETE_MARKER})")
        return json.loads(text)

    def find_published(self, model: str, onnx_sha256: str, variant: str) -> str | None:
        """The URI of the complete version of ``model`` that already serves this exact ONNX file as ``variant``."""
        for version in self.list_versions(model):
            text = self.read_text(self.location.key(model, version, "provenance.json"))
            data = json.loads(text) if text else {}
            if data.get("onnx_sha256") == onnx_sha256 and data.get("variant") == variant:
                return f"{self.location.uri}/{model}/{version}"
        return None

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, onnx_dir: Path, variant: str, cfg: ExportConfig, on_uploaded: Uploaded | None = None) -> str:
        """Publish ``variant`` of ``onnx_dir`` as version N+1 of ``cfg.model_name``; return its URI.

        Raises what ``export.publish.publish`` raises for the export folder and the gate, and
        PublishError when the bucket refuses it; in each case the repository is as it was.
        """
        from export.publish import publish

        models = [cfg.model_name, *(triton_config.step_names(cfg.model_name).values()
                                    if cfg.layout == "onnxruntime" else [])]
        with tempfile.TemporaryDirectory(prefix="tunestack-s3-publish-") as tmp:
            mirror = Path(tmp) / "repository"
            version = self._mirror(mirror, models)
            staged = int(publish(Path(onnx_dir), variant, dataclasses.replace(cfg, repository=mirror)).name)
            for model in models:
                self._renumber(mirror / model, staged, version)
            self._upload_version(mirror, models, version, on_uploaded)
        uri = f"{self.location.uri}/{cfg.model_name}/{version}"
        log.info("published %s of %s as %s", variant, onnx_dir, uri)
        return uri

    def _mirror(self, mirror: Path, models: list[str]) -> int:
        """Copy each model's config.pbtxt into ``mirror``; return the next version number.

        The number is 1 + the largest version present under any of ``models``, finished or not, so
        a version number abandoned by a crashed publisher is never reused.
        """
        mirror.mkdir(parents=True)
        newest = 0
        for model in models:
            present, _, has_config = self.versions(model)
            newest = max([newest, *present])
            if has_config:
                (mirror / model).mkdir()
                (mirror / model / "config.pbtxt").write_text(self.read_text(self.location.key(model, "config.pbtxt")))
        return newest + 1

    def _renumber(self, model_dir: Path, staged: int, version: int) -> None:
        """Move the staged version to its number in the bucket; its provenance names the bucket."""
        if staged != version:
            os.rename(model_dir / str(staged), model_dir / str(version))
        path = model_dir / str(version) / "provenance.json"
        if path.is_file():
            data = json.loads(path.read_text())
            data["version"] = version
            data.setdefault("export_config", {})["repository"] = self.location.uri
            path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def _upload_version(self, mirror: Path, models: list[str], version: int, on_uploaded: Uploaded | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        from tqdm.auto import tqdm

        bucket = self.location.bucket
        written: list[str] = []  # keys to delete if anything fails
        replaced: dict[str, str | None] = {}  # config key -> previous text (None: there was none)
        files = {m: sorted(p for p in (mirror / m / str(version)).rglob("*") if p.is_file()) for m in models}
        bar = tqdm(total=sum(p.stat().st_size for ps in files.values() for p in ps), unit="B", unit_scale=True,
                   desc=f"upload v{version}", mininterval=1.0, disable=None)
        try:
            for model in models:  # claim version N of every model before writing anything
                key = self.location.key(model, version, CLAIM_MARKER)
                self._claim(key, model, version)
                written.append(key)  # only once it is ours: a competitor's claim is never undone
            for model in models:
                version_dir = mirror / model / str(version)
                manifest = {"model": model, "version": version, "files": {}}
                for path in files[model]:
                    rel = path.relative_to(version_dir).as_posix()
                    key = self.location.key(model, version, rel)
                    written.append(key)
                    self.client.upload_file(str(path), bucket, key, Callback=bar.update)
                    size = path.stat().st_size
                    manifest["files"][rel] = {"size": size, "sha256": sha256(path)}
                    if on_uploaded:
                        on_uploaded(key, size)
                key = self.location.key(model, version, COMPLETE_MARKER)
                written.append(key)
                self.client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, indent=2).encode())
            # config.pbtxt last, the top model (the one callers name) after its steps
            for model in reversed(models):
                config = triton_config.parse_pbtxt((mirror / model / "config.pbtxt").read_text())
                complete = self.versions(model)[1]  # again: another publisher may have finished since
                pinned_policy(config, [*complete, version])
                key = self.location.key(model, "config.pbtxt")
                replaced[key] = self.read_text(key)
                self.client.put_object(Bucket=bucket, Key=key, Body=triton_config.to_pbtxt(config).encode())
                if on_uploaded:
                    on_uploaded(key, 0)
        except BaseException as e:
            self._undo(written, replaced)
            if isinstance(e, ClientError | BotoCoreError):
                raise PublishError(f"publishing version {version} to {self.location} failed; "
                                   f"repository unchanged: {e}") from e
            raise
        finally:
            bar.close()
        for model in models:
            try:
                self.client.delete_object(Bucket=bucket, Key=self.location.key(model, version, CLAIM_MARKER))
            except (ClientError, BotoCoreError) as e:  # harmless: readers ignore it
                log.warning("could not delete the claim marker of %s/%s/%s: %s", self.location, model, version, e)

    def _claim(self, key: str, model: str, version: int) -> None:
        """Create ``key`` only if it does not exist (``If-None-Match: *``): one publisher per version."""
        from botocore.exceptions import ClientError

        body = json.dumps({"host": os.uname().nodename, "pid": os.getpid()}).encode()
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise PublishError(f"version {version} of {model} in {self.location} is being published by "
                                   "another process; run again to publish the next version") from e
            if code != "NotImplemented":
                raise
            log.warning("%s does not support conditional writes; publishing %s/%s without a claim",
                        self.endpoint_url or "S3", model, version)
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body)

    def _undo(self, written: list[str], replaced: dict[str, str | None]) -> None:
        """Put back replaced configs, then delete the uploaded objects; log what could not be undone."""
        for key, text in replaced.items():
            try:
                if text is None:
                    self.client.delete_object(Bucket=self.location.bucket, Key=key)
                else:
                    self.client.put_object(Bucket=self.location.bucket, Key=key, Body=text.encode())
            except Exception as e:  # keep undoing the rest
                log.error("could not restore s3://%s/%s while undoing a failed publish: %s", self.location.bucket, key, e)
        for start in range(0, len(written), 1000):
            batch = [{"Key": k} for k in reversed(written[start:start + 1000])]
            try:
                self.client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as e:
                log.error("could not delete %d objects of a failed publish from %s: %s", len(batch), self.location, e)

    # -- copying down ----------------------------------------------------------------------------
    def download(self, dest: Path, models: list[str] | None = None) -> Path:
        """Copy the visible repository (config.pbtxt and complete versions) to a new local folder ``dest``.

        Each file is checked against its version's manifest. Built beside ``dest`` and renamed into
        place, so ``dest`` is either absent or whole. Models without a ``config.pbtxt`` yet are skipped.
        """
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise InputError(f"{dest} exists and is not empty; download into a new folder")
        with atomic_folder(dest) as staging:
            for model in models if models is not None else self.models():
                _, complete, has_config = self.versions(model)
                if not has_config:
                    log.info("skipping %s/%s: no config.pbtxt yet", self.location, model)
                    continue
                (staging / model).mkdir()
                self.client.download_file(self.location.bucket, self.location.key(model, "config.pbtxt"),
                                          str(staging / model / "config.pbtxt"))
                for version in complete:
                    for rel, meta in self.manifest(model, version)["files"].items():
                        target = staging / model / str(version) / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        self.client.download_file(self.location.bucket, self.location.key(model, version, rel), str(target))
                        if target.stat().st_size != meta["size"] or sha256(target) != meta["sha256"]:
                            raise InputError(f"{self.location}/{model}/{version}/{rel} does not match its manifest "
                                             f"(size {target.stat().st_size}, expected {meta['size']})")
        log.info("downloaded %s to %s", self.location, dest)
        return dest


def publish_s3(onnx_dir: Path, variant: str, cfg: ExportConfig, location: S3Location | str,
               repository: S3Repository | None = None, on_uploaded: Uploaded | None = None) -> str:
    """Publish ``variant`` of ``onnx_dir`` to the bucket repository at ``location``; return the version URI."""
    repository = repository or S3Repository.from_env(location)
    return repository.publish(onnx_dir, variant, cfg, on_uploaded)


def list_versions(location: S3Location | str, model: str, repository: S3Repository | None = None) -> list[int]:
    """The complete versions of ``model`` at ``location``."""
    return (repository or S3Repository.from_env(location)).list_versions(model)


def download_repository(location: S3Location | str, dest: Path, repository: S3Repository | None = None) -> Path:
    """Copy the repository at ``location`` (complete versions only) into the new local folder ``dest``."""
    return (repository or S3Repository.from_env(location)).download(dest)
