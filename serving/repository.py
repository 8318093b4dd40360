"""Model version management on a running Triton through its repository API (explicit model control).

``ModelRepository`` lists models and versions with their state, loads, unloads and rolls back::

    with ModelRepository(server.http_address, "model_repository") as repo:
        repo.rollback("sentiment", 1)      # serve version 1 only
        repo.load("sentiment")             # back to config.pbtxt's version_policy (the newest N)

A rollback is a load whose config override is the repository's ``config.pbtxt`` with
``version_policy: { specific { versions: [N] } }``: Triton loads version N, unloads the others, and
requests that name no version go to N. A plain ``load`` re-reads ``config.pbtxt`` and undoes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export import triton_config
from export.publish import existing_versions
from serving.errors import ModelControlError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One row of Triton's repository index."""

    name: str
    version: str
    """The version number as Triton reports it; empty for a model that has no version loaded."""
    state: str
    """READY, UNAVAILABLE, LOADING, UNLOADING or empty (never loaded)."""
    reason: str = ""


class ModelRepository:
    """Triton's repository API (``/v2/repository/...``) plus the repository folder it serves.

    Args:
        url: Triton's HTTP address, ``127.0.0.1:8000`` (no scheme).
        repository: the model repository folder; needed to roll back (the config override is read
            from its ``config.pbtxt``) and to check that a version exists before loading it.
        timeout: seconds to wait for a load / unload to finish.
    """

    def __init__(self, url: str, repository: str | Path | None = None, timeout: float = 60.0):
        self.url = url
        self.repository = Path(repository) if repository is not None else None
        self.timeout = timeout
        self.client = httpclient.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ModelRepository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list(self) -> list[ModelVersion]:
        """Every model in the repository with each known version's state, sorted by name and version."""
        try:
            index = self.client.get_model_repository_index()
        except InferenceServerException as e:
            raise ModelControlError(f"cannot read the repository index from {self.url}: {e.message()}") from e
        rows = [ModelVersion(r["name"], str(r.get("version", "")), r.get("state", ""), r.get("reason", ""))
                for r in index if not r["name"].startswith(".")]  # hidden folders are not models
        return sorted(rows, key=lambda r: (r.name, int(r.version) if r.version.isdigit() else -1))

    def ready_versions(self, model: str) -> list[int]:
        return [int(r.version) for r in self.list() if r.name == model and r.state == "READY" and r.version.isdigit()]

    def load(self, model: str, versions: Sequence[int] | None = None) -> None:
        """Load ``model`` as its config.pbtxt says, or with exactly ``versions``; wait until they are ready.

        With a repository folder the config is always sent as an override: Triton skips a plain load of
        a loaded model whose files did not change, which would leave a rollback in place.
        """
        config = expected = None
        if self.repository is not None:
            config, expected = self._override(model, versions)
        elif versions:
            raise ModelControlError("pinning versions needs the repository folder (--repository) to read config.pbtxt")
        self.load_config(model, config, expected)

    def load_config(self, model: str, config=None, versions: Sequence[int] | None = None) -> None:
        """Load ``model`` with ``config`` (a ``ModelConfig``) as the override, or as Triton reads its
        config.pbtxt (None); wait until exactly ``versions`` (None: any version) are ready."""
        try:
            self.client.load_model(model, config=None if config is None else triton_config.to_json(config))
        except InferenceServerException as e:
            raise ModelControlError(f"loading {model!r}{f' versions {list(versions)}' if versions else ''} failed: "
                                    f"{e.message()}") from e
        self._wait(model, versions)
        log.info("loaded %s (versions ready: %s)", model, self.ready_versions(model))

    def unload(self, model: str) -> None:
        """Unload every version of ``model`` (its dependents too, for an ensemble's steps)."""
        try:
            self.client.unload_model(model, unload_dependents=True)
        except InferenceServerException as e:
            raise ModelControlError(f"unloading {model!r} failed: {e.message()}") from e
        deadline = time.monotonic() + self.timeout
        while self.ready_versions(model):
            if time.monotonic() > deadline:
                raise ModelControlError(f"{model!r} still has ready versions after {self.timeout:.0f} s")
            time.sleep(0.1)
        log.info("unloaded %s", model)

    def rollback(self, model: str, version: int) -> None:
        """Serve only ``version`` of ``model`` (an earlier one); ``load(model)`` undoes it."""
        self.load(model, versions=[version])

    # -- helpers ---------------------------------------------------------------------------------
    def _override(self, model: str, versions: Sequence[int] | None):
        """config.pbtxt (with ``specific`` versions if given) and the versions it will serve."""
        model_dir = self.repository / model
        if not (model_dir / "config.pbtxt").is_file():
            raise ModelControlError(f"{model_dir / 'config.pbtxt'} does not exist; is {model!r} published "
                                    f"in {self.repository}?")
        on_disk = existing_versions(model_dir)
        config = triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())
        if versions:
            versions = sorted({int(v) for v in versions})
            missing = [v for v in versions if v not in on_disk]
            if missing:
                raise ModelControlError(f"{model!r} has no version(s) {missing} in {self.repository}; "
                                        f"published versions: {on_disk}")
            config.version_policy.Clear()
            config.version_policy.specific.versions.extend(versions)
        return config, triton_config.policy_versions(config.version_policy, on_disk)

    def _wait(self, model: str, versions: Sequence[int] | None) -> None:
        """load_model returns once loading is done; still, wait until the versions report READY."""
        deadline = time.monotonic() + self.timeout
        while True:
            ready = self.ready_versions(model)
            if (set(ready) == set(versions)) if versions else ready:
                return
            if time.monotonic() > deadline:
                raise ModelControlError(f"{model!r}: versions ready {ready} after {self.timeout:.0f} s, "
                                        f"expected {list(versions) if versions else 'any'}")
            time.sleep(0.05)
