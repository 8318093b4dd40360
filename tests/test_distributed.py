"""Data-parallel training with 2 CPU processes under torchrun (gloo) on a tiny model."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from peft import PeftModel

from training.distributed import Dist
from training.model import load_classifier
from tunestack import names
from tunestack.layout import RunLayout


def test_dist_from_env():
    assert Dist.from_env({}) == Dist(0, 1, 1) and not Dist.from_env({}).enabled
    d = Dist.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    assert d.enabled and not d.is_main and d.world_size == 2


@pytest.mark.e2e
def test_two_processes_train_one_adapter_and_the_loss_goes_down(tmp_path, tiny_model_dir):
    # an easy task a tiny random BERT learns in a few dozen steps: which of two words a text contains
    rng = random.Random(0)
    filler = "the a film plot story actor scene music long short".split()
    rows = ["text,label"]
    for i in range(400):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(filler, 5) + ["wonderful" if label == "pos" else "dreadful"]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    data = tmp_path / "easy.csv"
    data.write_text("\n".join(rows) + "\n")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "--name", "ddp", "--runs-dir", str(tmp_path / "runs"), "--model", str(tiny_model_dir),
        "--data", str(data), "--max-steps", "60", "--eval-every", "30", "--batch-size", "8",
        "--learning-rate", "2e-2", "--max-length", "16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = RunLayout.of(tmp_path / "runs", "ddp").adapter
    metrics = json.loads((adapter / names.METRICS_FILE).read_text())
    assert metrics["processes"] == 2
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.2, metrics
    assert metrics["test_after"]["accuracy"] > 0.9
    # the test split was predicted by both ranks and gathered: every example counted once
    assert metrics["test_after"]["examples"] == metrics["splits"]["test"] == 40
    assert proc.stdout.count("adapter: ") == 1, "only rank 0 reports and writes"
    labels = json.loads((adapter / names.LABEL_MAP_FILE).read_text())["labels"]
    PeftModel.from_pretrained(load_classifier(tiny_model_dir, labels), adapter)
