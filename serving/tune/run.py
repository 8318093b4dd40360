"""A whole tuning run: find the version, start tritonserver, search, publish the winner, write the report.

``reports/tune-TIMESTAMP/``: ``tune.json``, ``tune.md``, ``curves.png``, ``tritonserver.log`` and one
load-test folder per trial (``trials/NN/``). The winner is published with the export stage's own
``export.publish.publish`` from the tuned version's source (its ``provenance.json``), so it becomes a new
numbered version, built beside the repository and renamed in; the tuned version is never edited.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

from export import triton_config
from export.config import ExportConfig
from export.publish import PROVENANCE_FILE, default_version, existing_versions, publish
from serving.triton import TritonServer
from serving.tune import report
from serving.tune.config import TuneConfig, TuneError
from serving.tune.search import Candidate, brute_force, hill_climb
from serving.tune.trial import Load, candidate_of, run_trial
from tunestack.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    folder: Path
    data: dict
    published: Path | None


def tuned_version(cfg: TuneConfig) -> tuple[Path, int, dict]:
    """The model folder, the version to tune and its provenance; TuneError naming what is missing."""
    model_dir = cfg.repository_path / cfg.model
    if not (model_dir / "config.pbtxt").is_file():
        raise TuneError(f"{model_dir} has no config.pbtxt; publish the model first (`make export`)")
    versions = existing_versions(model_dir)
    version = cfg.version or default_version(model_dir) or 0
    if version not in versions:
        raise TuneError(f"{model_dir} has no version {cfg.version} (versions: {versions or 'none'})")
    provenance = model_dir / str(version) / PROVENANCE_FILE
    if not provenance.is_file():
        raise TuneError(f"{provenance} is missing: cannot tell which export to publish the winner from")
    return model_dir, version, json.loads(provenance.read_text())


def publish_winner(cfg: TuneConfig, provenance: dict, best: Candidate, tuned: int, report_dir: Path) -> Path:
    """Publish the tuned version's source again with the winning settings: a new version, never an edit."""
    onnx_dir = Path(provenance["source"]["onnx_dir"])
    if not onnx_dir.is_dir():
        raise TuneError(f"the source of version {tuned}, {onnx_dir}, is gone; re-export it, then tune again")
    known = {f.name for f in fields(ExportConfig)}
    settings = {k: v for k, v in provenance.get("export_config", {}).items() if k in known}
    extra = {**settings.get("extra", {}), "tuned_from_version": tuned, "tune_report": str(report_dir)}
    export_cfg = ExportConfig.from_dict({
        **settings, "repository": cfg.repository, "model_name": cfg.model, "instance_count": best.instance_count,
        "intra_op_threads": best.intra_op_threads, "dynamic_batching": best.batching,
        "max_queue_delay_us": max(best.max_queue_delay_us, 0), "preferred_batch_sizes": best.preferred_batch_sizes,
        "max_batch_size": best.max_batch_size, "intra_op_spinning": best.intra_op_spinning, "extra": extra})
    return publish(onnx_dir, provenance["variant"], export_cfg)


def texts_for(cfg: TuneConfig, provenance: dict) -> Path:
    texts = Path(cfg.texts) if cfg.texts else RunLayout.of_folder(provenance["source"]["onnx_dir"]).heldout
    if not texts.is_file():
        raise TuneError(f"texts file {texts} does not exist; pass --texts FILE (JSONL with a text field)")
    return texts


def run_tune(cfg: TuneConfig) -> TuneResult:
    model_dir, version, provenance = tuned_version(cfg)
    base = triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    if triton_config.config_layout(base) != "python":
        raise TuneError(f"{model_dir} is the onnxruntime (ensemble) layout, which this Triton cannot run")
    load = Load(texts_for(cfg, provenance), cfg.users, cfg.steps, cfg.step_time_s,
                cfg.rate if cfg.objective == "min-p99" else 0.0)
    folder = Path(cfg.out_dir) / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    objective, space, start = cfg.objective_spec(), cfg.space(), candidate_of(base)
    with TritonServer(cfg.repository_path, models=[], startup_timeout=120, log_file=folder / "tritonserver.log",
                      tritonserver=cfg.tritonserver or None) as server:
        def evaluate(c: Candidate):
            trials = folder / "trials"
            number = 1 + (len(list(trials.iterdir())) if trials.is_dir() else 0)
            (trials / f"{number:02d}").mkdir(parents=True)  # also for a trial whose config does not load
            return run_trial(server, base, version, c, load, trials / f"{number:02d}")

        if cfg.search == "quick":
            result = hill_climb(space, start, evaluate, objective, cfg.trial_budget)
        else:
            result = brute_force(space, evaluate, objective, cfg.trial_budget)
    published = None
    if result.best is not None and cfg.publish:
        published = publish_winner(cfg, provenance, result.best, version, folder)
    settings = {**cfg.to_dict(), "tuned_version": version, "start": start.label()}
    data = report.to_json(result, objective, settings, published.name if published else None)
    report.write(folder, data)
    return TuneResult(folder, data, published)
