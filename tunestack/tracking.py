"""Experiment tracking with MLflow: one run per training, export and load test, in one experiment.

Where runs go, decided once per call by ``resolve_uri``:
an explicit URI (``--tracking-uri``) > ``$MLFLOW_TRACKING_URI`` > ``TUNESTACK_TRACKING=off`` (no tracking)
> the local store ``sqlite:///mlruns/mlflow.db`` (artifacts in ``mlruns/artifacts``); ``off`` anywhere
turns it off. Open the local store with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``
(the ``mlflow`` UI package is not installed here: it would move numpy; ``mlflow-skinny`` logs runs).

Tracking never fails a pipeline: an unreachable server or a bad store is logged as a warning and the
run id is None. The training run's id is written to ``tracking.json`` beside the adapter; it travels
with the model through merge and export into the published version's ``provenance.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunestack import names
from tunestack.problems import is_number

log = logging.getLogger(__name__)

EXPERIMENT = "tunestack"
"""The MLflow experiment every stage logs into."""
OFF = "off"
"""The URI (or ``TUNESTACK_TRACKING`` value) that turns tracking off."""
SWITCH_ENV = "TUNESTACK_TRACKING"
URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_STORE = Path("mlruns")
"""The local store's folder (relative to the working directory): mlflow.db and artifacts/."""
TRACKING_FILE = "tracking.json"
"""``{"run_id", "tracking_uri", "experiment"}`` of the training run, written beside the adapter."""


def resolve_uri(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The tracking URI to log to, or None when tracking is off (see the module docstring)."""
    env = os.environ if environ is None else environ
    uri = explicit or env.get(URI_ENV) or (OFF if env.get(SWITCH_ENV, "").lower() == OFF else None)
    if uri is None:
        uri = f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"
    return None if uri.lower() == OFF else uri


def _artifact_root(uri: str) -> str | None:
    """For a local sqlite store, artifacts go in ``artifacts/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None  # a tracking server (or a file store) chooses its own artifact location


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as JSON text; characters MLflow refuses in a name
    (anything but letters, digits, ``_ - . : /`` and spaces, e.g. the parentheses of ``(dropped)``) become ``_``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = prefix + re.sub(r"[^\w\-.:/ ]", "_", str(key))
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return out


def numeric(data: Mapping[str, Any]) -> dict[str, float]:
    """The int/float (not bool) values of a flattened mapping, for MLflow metrics."""
    return {k: float(v) for k, v in flatten(data).items() if is_number(v)}


def _client(uri: str):
    from mlflow.tracking import (
        MlflowClient,  # imported here: mlflow is slow to import and optional at run time
    )

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
    else:
        experiment_id = experiment.experiment_id
    return client, experiment_id


def log_run(stage: str, run_name: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None, documents: Mapping[str, Any] | None = None,
            series: list[dict] | None = None, uri: str | None = None) -> str | None:
    """Log one finished run of ``stage``; returns its run id (None if tracking is off or failed).

    ``params`` and ``metrics`` may nest (keys are flattened with dots; metrics keep numbers only),
    ``documents`` are saved as JSON artifacts (name -> data), ``series`` are metrics by ``step``.
    """
    resolved = resolve_uri(uri)
    if resolved is None:
        return None
    try:
        from mlflow.entities import Metric, Param, RunTag

        client, experiment_id = _client(resolved)
        run = client.create_run(experiment_id, run_name=run_name, tags={"stage": stage, **(tags or {})})
        run_id = run.info.run_id
        flat_params = [Param(k, str(v)[:6000]) for k, v in flatten(params or {}).items()]
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, 0) for k, v in numeric(metrics or {}).items()]
        for entry in series or []:
            step = int(entry.get("step", 0))
            points += [Metric(k, v, now, step) for k, v in numeric(entry).items() if k != "step"]
        client.log_batch(run_id, metrics=points, params=flat_params, tags=[RunTag("mlflow.runName", run_name)])
        for name, data in (documents or {}).items():
            client.log_dict(run_id, data, name)
        client.set_terminated(run_id)
    except Exception as e:  # noqa: BLE001 - tracking is a side channel: it must not fail the pipeline
        log.warning("experiment tracking to %s failed (%s: %s); the %s run is not logged", resolved, type(e).__name__, e, stage)
        return None
    log.info("logged the %s run %r to MLflow (%s): run id %s", stage, run_name, resolved, run_id)
    return run_id


def write_link(folder: Path, run_id: str | None, uri: str | None) -> None:
    """Write ``tracking.json`` (the run id that produced ``folder``) when there is one."""
    if run_id is not None:
        (Path(folder) / TRACKING_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment": EXPERIMENT}, indent=2))


def read_link(folder: Path) -> dict | None:
    """The ``tracking.json`` in ``folder``, if any."""
    path = Path(folder) / TRACKING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def log_export(cfg, result) -> str | None:
    """Log one export (``export.pipeline.run_export``'s config and result): the parity figures per variant,
    the gate's verdict and the published versions, tagged with the training run it came from."""
    link = read_link(result.onnx_dir) or {}
    keys = ("max_abs_diff", "mean_abs_diff", "label_agreement", "accuracy", "macro_f1", "publishable",
            "max_abs_logit_diff", "rouge_l", "bleu4", "perplexity", "first_word_match")
    metrics = {"passed": float(result.passed), **{
        name: {k: float(v[k]) for k in keys if k in v} for name, v in result.parity.get("variants", {}).items()}}
    published = {variant: str(where) for variant, where in result.published.items()}
    return log_run("export", cfg.run_name, params=cfg.to_dict(), metrics=metrics,
                   tags={"training_run_id": link.get("run_id", ""), "published": json.dumps(published)},
                   documents={names.PARITY_FILE: result.parity})


def log_loadtest(summary: dict, folder: Path) -> str | None:
    """Log one load-test (or A/B) report: its config as params, its numbers as metrics, summary.json as an artifact."""
    return log_run("loadtest", Path(folder).name, params=summary.get("config") or {},
                   metrics={k: v for k, v in summary.items() if k != "config"}, documents={"summary.json": summary})
