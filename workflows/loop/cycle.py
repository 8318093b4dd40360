"""One retrain cycle, step by step, each step recorded in the store (``LoopLog``) before the next one starts.

    dataset -> train -> export -> gate -> publish -> canary -> end

* ``dataset``: the kept inputs with feedback, cleaned, split by time, mixed with original data (``dataset.py``);
* ``train``: fine-tune the production model (or the base) on it (``training.train``);
* ``export``: merge, ONNX, the parity gate (``export.pipeline.run_export``, not published);
* ``gate``: the offline gate (``gate.py``) against the production export;
* ``publish``: the candidate as a new version of the candidate arm's model (``export.publish``); a version that
  already serves the same ONNX file is reused (``find_published``), so a rerun never publishes twice;
* ``canary``: the experiment's second arm is pointed at the new version at weight 0 (a ``loop`` revision), Triton
  loads it, and the rollout controller ramps it, judged live; when it completes, the first (production) arm is
  pointed at the new version at 100 % (another ``loop`` revision) and the cycle is promoted;
* ``end``: the outcome: promoted, rolled back (or held, halted), refused (by the export or offline gate), or
  too few labels.

A cycle that crashes is resumed by the next run: its recorded steps are not run again (their outputs are read
back), the canary's ``loop`` revision is not written twice, and the rollout controller resumes from the store's
revisions. Every step is also logged as an MLflow run (``tunestack.tracking``, stage ``loop``) tagged with
the cycle's trigger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.rollout.config import RolloutConfig
from experiments.rollout.controller import RolloutController
from experiments.spec import experiment_from_dict
from experiments.store import Store
from experiments.store.loop_tables import LoopLog, labelled_inputs
from experiments.store.sync import spec_of
from tunestack import tracking
from tunestack.files import sha256
from tunestack.layout import RunLayout
from workflows.loop import dataset
from workflows.loop.config import LoopConfig

log = logging.getLogger(__name__)

TRAIN_DEFAULTS = {"early_stopping_metric": "val_loss"}
"""The candidate's training settings unless the ``loop.train`` section says otherwise: the best checkpoint by
validation loss, since the validation part is small (a tenth of the older feedback, a few dozen texts), where
accuracy moves in steps of 1/n and picks a noisy early checkpoint."""
STEPS = ("dataset", "train", "export", "gate", "publish", "canary")
END = "end"
SOURCE = "loop"
"""The ``source`` of the experiment revisions the loop writes."""


@dataclass(frozen=True)
class LoopContext:
    """What every cycle of one loop needs besides the store."""

    experiment: str
    cfg: LoopConfig
    rollout: RolloutConfig
    triton_address: str | None = None
    """Triton's HTTP ``host:port`` to load a published version on (explicit model control); None: not loaded."""
    who: str = "loop"
    tracking_uri: str | None = None


class Stop(Exception):
    """A step ends the cycle early with an outcome (refused, too few labels)."""

    def __init__(self, outcome: str, output: dict[str, Any]):
        super().__init__(outcome)
        self.outcome, self.output = outcome, output


async def production_run(loop_log: LoopLog, cfg: LoopConfig) -> Path:
    """The run production serves: the newest promoted cycle's, else ``cfg.production_run``."""
    promoted = [s for s in await loop_log.steps() if s.step == END and s.output.get("outcome") == "promoted"]
    return Path(promoted[-1].output["run"]) if promoted else cfg.production_run


class Cycle:
    """Cycle ``number`` of the loop (``ctx.experiment``), started by ``trigger``."""

    def __init__(self, store: Store, ctx: LoopContext, number: int, trigger: str):
        self.store, self.ctx, self.number, self.trigger = store, ctx, number, trigger
        self.log = LoopLog(store, ctx.experiment)
        self.run_dir = ctx.cfg.runs_dir / f"{ctx.experiment}-loop-{number}"

    async def run(self) -> dict[str, Any]:
        """Run (or resume) every step; return the ``end`` step's output."""
        done = {s.step: s.output for s in await self.log.steps(self.number)}
        if END in done:
            return done[END]
        done.setdefault("production_run", {"run": str(await production_run(self.log, self.ctx.cfg))})
        for step in STEPS:
            if step in done:
                log.info("cycle %d: %s already done (recorded), resuming after it", self.number, step)
                continue
            started = time.time()
            try:
                output = await getattr(self, f"_{step}")(done)
            except Stop as stop:
                await self._record(step, {**stop.output, "seconds": time.time() - started})
                return await self._end(stop.outcome, done, {"reason": stop.output.get("reason", "")})
            done[step] = {**output, "seconds": round(time.time() - started, 3)}
            await self._record(step, done[step])
        outcome = done["canary"]["outcome"]
        return await self._end("promoted" if outcome == "complete" else outcome, done, {"reason": done["canary"]["reason"]})

    async def _record(self, step: str, output: dict[str, Any]) -> None:
        await self.log.record(self.number, step, self.trigger, output, self.ctx.who)
        tracking.log_run("loop", f"{self.ctx.experiment}-cycle{self.number}-{step}",
                         params={"experiment": self.ctx.experiment, "cycle": self.number, "step": step,
                                 "trigger": self.trigger}, metrics=output, tags={"trigger": self.trigger[:250]},
                         documents={f"{step}.json": output}, uri=self.ctx.tracking_uri)

    async def _end(self, outcome: str, done: dict[str, dict], extra: dict[str, Any]) -> dict[str, Any]:
        output = {"outcome": outcome, "trigger": self.trigger, "run": str(self.run_dir),
                  "version": done.get("publish", {}).get("version"), **extra}
        await self._record(END, output)
        log.info("cycle %d ended: %s", self.number, outcome)
        return output

    # -- the steps: each returns its output (recorded), or raises Stop -----------------------------------------

    async def _dataset(self, done: dict) -> dict:
        cfg = self.ctx.cfg
        rows = await labelled_inputs(self.store, self.ctx.experiment)
        if len(rows) < cfg.min_examples:
            raise Stop("too few labels", {"labelled": len(rows), "reason": f"{len(rows)} labelled kept inputs, "
                                                                          f"fewer than min_examples={cfg.min_examples}"})
        run = Path(done["production_run"]["run"])
        original = await asyncio.to_thread(dataset.original_training, run)
        data = dataset.build(rows, original, eval_fraction=cfg.eval_fraction, validation_fraction=cfg.validation_fraction,
                             original_share=cfg.original_share, seed=self.number)
        return {**data.stats, "files": data.write(self.run_dir / "data"), "production_run": str(run)}

    async def _train(self, done: dict) -> dict:
        from training.config import TrainConfig
        from training.train import train

        cfg, files, run = self.ctx.cfg, done["dataset"]["files"], Path(done["production_run"]["run"])
        model = RunLayout(run).merged if cfg.start_from == "production" else cfg.base_model
        train_cfg = TrainConfig(**{"max_length": 64, "seed": self.number, **TRAIN_DEFAULTS, **cfg.train},
                                name=self.run_dir.name, runs_dir=cfg.runs_dir, model=model, data=Path(files["train"]),
                                validation_data=Path(files["validation"]), test_data=Path(files["evaluate"]),
                                overwrite=True, tracking_uri=self.ctx.tracking_uri)
        result = await asyncio.to_thread(train, train_cfg)
        return {"adapter": str(result.adapter_dir), "start_from": cfg.start_from, "model": str(model or "base"),
                "test_before": result.metrics["test_before"].get("accuracy"),
                "test_after": result.metrics["test_after"].get("accuracy"), "steps": result.metrics.get("steps")}

    async def _export(self, done: dict) -> dict:
        from export.config import ExportConfig
        from export.pipeline import run_export

        cfg = self.ctx.cfg
        export_cfg = ExportConfig(adapter=Path(done["train"]["adapter"]), runs_dir=cfg.runs_dir, publish=False,
                                  variants=(cfg.variant,))
        result = await asyncio.to_thread(run_export, export_cfg)
        output = {"onnx_dir": str(result.onnx_dir), "passed": result.passed}
        if not result.passed:
            raise Stop("refused", {**output, "reason": "the export's parity gate failed (see parity.json)"})
        return output

    async def _gate(self, done: dict) -> dict:
        from training.data import read_jsonl
        from workflows.loop.gate import offline_gate

        cfg, run = self.ctx.cfg, Path(done["production_run"]["run"])
        shifted = read_jsonl(Path(done["dataset"]["files"]["evaluate"]))
        original = dataset.original_heldout(run)
        result = await asyncio.to_thread(offline_gate, Path(done["export"]["onnx_dir"]), RunLayout(run).onnx, shifted,
                                         original, variant=cfg.variant, min_gain=cfg.min_gain,
                                         max_forgetting=cfg.max_forgetting, confidence=cfg.confidence,
                                         max_label_gap=cfg.max_label_gap)
        if not result["passed"]:
            raise Stop("refused", {**result, "reason": "offline gate: " + "; ".join(result["reasons"])})
        return result

    async def _publish(self, done: dict) -> dict:
        from export.config import ExportConfig
        from export.contract import VARIANT_FILES
        from export.object_store import S3Repository, is_s3_uri
        from export.pipeline import find_published
        from export.publish import publish

        cfg = self.ctx.cfg
        exp = await self._experiment()
        model, onnx_dir = exp.arms[1].model, Path(done["export"]["onnx_dir"])
        export_cfg = ExportConfig(repository=cfg.repository, model_name=model)
        onnx_file = onnx_dir / VARIANT_FILES[cfg.variant]
        if is_s3_uri(cfg.repository):
            bucket = S3Repository.from_env(str(cfg.repository))
            existing = await asyncio.to_thread(bucket.find_published, model, sha256(onnx_file), cfg.variant)
            where = existing or await asyncio.to_thread(bucket.publish, onnx_dir, cfg.variant, export_cfg)
        else:
            existing = find_published(Path(cfg.repository) / model, onnx_file, cfg.variant)
            where = existing or await asyncio.to_thread(publish, onnx_dir, cfg.variant, export_cfg)
        return {"model": model, "version": str(where).rstrip("/").rsplit("/", 1)[-1], "folder": str(where),
                "already_published": existing is not None}

    async def _experiment(self):
        latest = await self.store.latest_revision(self.ctx.experiment)
        if latest is None:
            raise LookupError(f"experiment {self.ctx.experiment!r} has no revision in the store {self.store.url}; "
                              "start a router on the experiment file first")
        return experiment_from_dict(latest.spec, f"store revision {latest.revision}")

    async def _point(self, arm_index: int, version: str, weights: dict[str, float], why: str) -> int:
        """Store a ``loop`` revision: arm ``arm_index`` serves ``version``, with ``weights``; its number."""
        exp = await self._experiment()
        arms = [dataclasses.replace(a, version=version) if i == arm_index else a for i, a in enumerate(exp.arms)]
        exp = dataclasses.replace(exp, arms=tuple(arms)).with_weights(weights)
        return (await self.store.add_revision(exp.name, spec_of(exp), SOURCE, self.ctx.who, why)).revision

    async def _canary(self, done: dict) -> dict:
        version, model = done["publish"]["version"], done["publish"]["model"]
        exp = await self._experiment()
        control, candidate = exp.arms[0].name, exp.arms[1].name
        tag = f"cycle {self.number}: canary"
        ours = [r for r in await self.store.revisions(exp.name, 1000) if r.source == SOURCE and r.why.startswith(tag)]
        if self.ctx.triton_address:
            from export.object_store import is_s3_uri
            from serving.repository import ModelRepository

            local = None if is_s3_uri(self.ctx.cfg.repository) else self.ctx.cfg.repository
            with ModelRepository(self.ctx.triton_address, local) as models:
                await asyncio.to_thread(models.load, model)
        if not ours:
            await self._point(1, version, {control: 100.0, candidate: 0.0},
                              f"{tag} {model} version {version} as {candidate} (trigger: {self.trigger})")
        started = time.time()
        outcome = await RolloutController(self.store, exp.name, dataclasses.replace(self.ctx.rollout, treatment=candidate),
                                          who=f"{self.ctx.who}-rollout").run()
        output = {"outcome": outcome.result, "reason": outcome.reason, "step": outcome.step, "steps": outcome.steps,
                  "candidate_requests": outcome.treatment_requests, "candidate_users": outcome.treatment_users,
                  "rollout_s": outcome.duration_s, "started_at": started, "decided_at": time.time(),
                  "control": control, "candidate": candidate}
        if outcome.result == "complete":
            output["promotion_revision"] = await self._point(
                0, version, {control: 100.0, candidate: 0.0},
                f"cycle {self.number}: promote {model} version {version} to {control} (the judge completed the rollout)")
        return output
