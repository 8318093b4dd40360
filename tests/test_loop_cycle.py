"""A retrain cycle on the tiny model and a SQLite store: the offline gate refuses a candidate that is not better
(and passes one that is), a cycle that crashes resumes from the store without rerunning its recorded steps,
publishing twice reuses the version, the data set mixes in original data and splits by time, and the
``loop:`` section is validated."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from experiments.rollout.config import RolloutConfig
from experiments.store import AnswerRow, open_store
from experiments.store.loop_tables import LabelledInput, LoopLog
from experiments.store.records import InputRow
from training.data import Example, read_jsonl
from tunestack.layout import RunLayout
from workflows.drills.progressive import flipped_export
from workflows.loop import dataset
from workflows.loop.config import LoopConfig, LoopConfigError
from workflows.loop.cycle import Cycle, LoopContext
from workflows.loop.gate import Predictor, offline_gate

EXP = "loop"
SPEC = {"name": EXP, "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "production", "model": "sentiment", "version": "1", "weight": 100},
                 {"name": "candidate", "model": "sentiment", "version": "1", "weight": 0}]}


def test_the_gate_refuses_a_candidate_that_is_not_better_and_passes_one_that_is(tiny_onnx_dir, tmp_path):
    flipped = flipped_export(tiny_onnx_dir, tmp_path / "flipped")  # every prediction's label name reversed
    heldout = read_jsonl(RunLayout.of_folder(tiny_onnx_dir).heldout)
    right = Predictor(tiny_onnx_dir).correct(heldout)
    texts = [ex for ex, ok in zip(heldout, right, strict=True) if ok]  # the original is right on all, flipped on none
    assert len(texts) >= 20
    same = offline_gate(tiny_onnx_dir, tiny_onnx_dir, texts, texts, variant="fp32", min_gain=0.0, max_forgetting=0.02,
                        confidence=0.95)
    assert not same["passed"] and same["shifted"]["difference"]["value"] == 0.0
    assert len(same["reasons"]) == 1 and "does not exceed" in same["reasons"][0]  # no forgetting, but no gain
    worse = offline_gate(flipped, tiny_onnx_dir, texts, texts, variant="fp32", min_gain=0.0, max_forgetting=0.02,
                         confidence=0.95)
    assert not worse["passed"] and len(worse["reasons"]) == 2
    assert worse["shifted"]["candidate"]["value"] == 0.0 and worse["shifted"]["production"]["value"] == 1.0
    better = offline_gate(tiny_onnx_dir, flipped, texts, texts, variant="fp32", min_gain=0.5, max_forgetting=0.02,
                          confidence=0.95)
    assert better["passed"] and better["reasons"] == [] and better["shifted"]["difference"]["low"] > 0.5


def test_the_gate_refuses_feedback_whose_labels_a_model_cannot_reproduce(tiny_onnx_dir):
    heldout = read_jsonl(RunLayout.of_folder(tiny_onnx_dir).heldout)
    right = Predictor(tiny_onnx_dir).correct(heldout)
    texts = [ex for ex, ok in zip(heldout, right, strict=True) if ok]
    labels = sorted({e.label for e in heldout})
    flip = set(random.Random(0).sample(range(len(texts)), round(0.3 * len(texts))))
    poisoned = [Example(e.text, labels[1 - labels.index(e.label)]) if i in flip else e for i, e in enumerate(texts)]
    kwargs = dict(variant="fp32", min_gain=-0.5, max_forgetting=0.02, confidence=0.95)
    clean = offline_gate(tiny_onnx_dir, tiny_onnx_dir, texts, texts, max_label_gap=0.1, **kwargs)
    assert clean["passed"], clean["reasons"]
    bad = offline_gate(tiny_onnx_dir, tiny_onnx_dir, poisoned, texts, max_label_gap=0.1, **kwargs)
    assert bad["shifted"]["candidate"]["value"] == pytest.approx(0.7, abs=0.01)
    assert not bad["passed"] and bad["reasons"] == [r for r in bad["reasons"] if "labels look wrong" in r] != []


def test_the_data_set_splits_by_time_and_mixes_in_original_data():
    rows = [LabelledInput(f"r{i}", "production", (f"text {i}", f"more {i}"), ("positive", "negative"), float(i))
            for i in range(50)]
    rows.append(LabelledInput("bad", "production", ("x", "y"), ("positive",), 60.0))  # one label for two texts
    original = [Example(f"original {i}", "positive") for i in range(500)]
    data = dataset.build(rows, original, eval_fraction=0.2, validation_fraction=0.1, original_share=0.3, seed=1)
    assert data.stats["requests_dropped"] == 1 and data.stats["feedback_examples"] == 100
    assert len(data.evaluate) == 20 and {e.text.split()[1] for e in data.evaluate} == {str(i) for i in range(40, 50)}
    newest_train = max(int(e.text.split()[1]) for e in data.train + data.validation if not e.text.startswith("original"))
    assert newest_train < 40  # older to train, newest to evaluate
    assert data.stats["original_share"] == pytest.approx(0.3, abs=0.02)
    assert not {e.text for e in data.train} & {e.text for e in data.evaluate}


def test_the_loop_section_is_validated():
    with pytest.raises(LoopConfigError) as e:
        LoopConfig.from_dict({"start_from": "scratch", "original_share": 1.5, "triggers": {"new_labels": 0}, "x": 1})
    assert "unknown key(s) ['x']" in str(e.value)
    with pytest.raises(LoopConfigError) as e:
        LoopConfig.from_dict({"start_from": "scratch", "original_share": 1.5, "triggers": {"new_labels": 0}})
    for part in ("start_from='scratch'", "original_share=1.5", "triggers.new_labels=0"):
        assert part in str(e.value)


async def seed_store(store, heldout: list[Example]) -> None:
    """Revision 1 of the experiment, answers with kept inputs, feedback on each (time-ordered)."""
    await store.add_revision(EXP, SPEC, "file", "test", "start")
    now, rows = time.time() - 1000, []
    for i, ex in enumerate(heldout):
        rows += [AnswerRow(EXP, f"r{i}", "production", "production", "1", f"u{i}", 0.01, (ex.label,), now + i, (), 1),
                 InputRow(EXP, f"r{i}", "production", (ex.text,), now + i)]
    await store.write_batch(rows)
    for i, ex in enumerate(heldout):
        await store.add_feedback(EXP, f"r{i}", (ex.label,))


def test_a_crashed_cycle_resumes_from_the_store_without_rerunning_its_steps(tiny_onnx_dir, tmp_path, monkeypatch):
    run = tiny_onnx_dir.parent
    heldout = read_jsonl(RunLayout.of_folder(tiny_onnx_dir).heldout)
    random.Random(0).shuffle(heldout)
    cfg = LoopConfig(production_run=Path(run), min_examples=20, runs_dir=tmp_path / "runs",
                     repository=tmp_path / "model_repository",
                     train={"max_steps": 3, "batch_size": 8, "max_length": 32, "eval_every": 3})
    ctx = LoopContext(EXP, cfg, RolloutConfig())
    trained = []
    real_train = __import__("training.train", fromlist=["train"]).train
    monkeypatch.setattr("training.train.train", lambda c: trained.append(c.name) or real_train(c))

    async def crash(self, done):
        raise RuntimeError("the machine went away")

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            await seed_store(store, heldout[:80])
            monkeypatch.setattr(Cycle, "_gate", crash)
            with pytest.raises(RuntimeError, match="went away"):
                await Cycle(store, ctx, 1, "manual: test").run()
            recorded = [s.step for s in await LoopLog(store, EXP).steps(1)]
            assert recorded == ["dataset", "train", "export"]
            monkeypatch.undo()
            monkeypatch.setattr("training.train.train", lambda c: trained.append(c.name) or real_train(c))
            out = await Cycle(store, ctx, 1, "manual: test").run()
            steps = [s.step for s in await LoopLog(store, EXP).steps(1)]
            return out, steps

    out, steps = asyncio.run(go())
    assert trained == [f"{EXP}-loop-1"]  # trained once, not again on the rerun
    assert steps[:3] == ["dataset", "train", "export"] and steps[-1] == "end"
    # the tiny model's retrain on its own held-out labels is no better than production: refused by the gate
    assert out["outcome"] == "refused" and "offline gate" in out["reason"], out
    assert steps == ["dataset", "train", "export", "gate", "end"]


def test_publishing_twice_reuses_the_version(tiny_onnx_dir, tmp_path):
    cfg = LoopConfig(production_run=tiny_onnx_dir.parent, runs_dir=tmp_path, repository=tmp_path / "repo")

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            await store.add_revision(EXP, SPEC, "file", "test", "start")
            c = Cycle(store, LoopContext(EXP, cfg, RolloutConfig()), 1, "manual")
            done = {"export": {"onnx_dir": str(tiny_onnx_dir)}}
            return await c._publish(done), await c._publish(done)

    first, second = asyncio.run(go())
    assert first["version"] == second["version"] == "1"
    assert (first["already_published"], second["already_published"]) == (False, True)
    assert sorted(p.name for p in (tmp_path / "repo" / "sentiment").iterdir() if p.is_dir()) == ["1"]

