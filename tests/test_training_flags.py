"""Training flags on the tiny random BERT: each one's validation error, schedules, precision, metrics, cleaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny_train_config
from training.config import TrainConfig
from training.data import Example, clean_examples
from training.errors import ConfigError
from training.metrics import logit_metrics
from training.optim import Precision, make_optimizer, param_groups
from training.train import train


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "adapters"}, r"unknown method 'adapters'; expected one of: lora, full, freeze, ia3, loha"),
        ({"method": "prefix_tuning"}, r"method 'prefix_tuning' cannot be exported: it prepends learned key/value prefixes"),
        ({"method": "prompt_tuning"}, r"cannot be exported: it prepends learned virtual token embeddings"),
        ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be >= 1, got 0"),
        ({"lr_schedule": "step"}, r"unknown lr_schedule 'step'; expected one of: linear, cosine, constant"),
        ({"precision": "int4"}, r"unknown precision 'int4'; expected one of: fp32, bf16, fp16"),
        ({"early_stopping_metric": "f1"}, r"unknown early_stopping_metric 'f1'; expected one of: accuracy, macro_f1, val_loss"),
        ({"warmup_ratio": 1.5}, r"warmup_ratio must lie in \[0, 1\), got 1.5"),
        ({"label_smoothing": -0.1}, r"label_smoothing must lie in \[0, 1\), got -0.1"),
        ({"layerwise_lr_decay": 0.0}, r"layerwise_lr_decay must lie in \(0, 1\] \(1.0: off\), got 0.0"),
        ({"weight_decay": -0.01}, r"weight_decay must be >= 0, got -0.01"),
        ({"freeze_layers": -1}, r"freeze_layers must be >= 0, got -1"),
        ({"learning_rate": 0.0}, r"learning_rate must be > 0, got 0.0"),
    ],
)
def test_each_bad_flag_names_the_value_and_the_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides)


def test_freeze_beyond_the_depth_is_refused_before_training(tmp_path, tiny_model_dir):
    cfg = tiny_train_config(tmp_path, tiny_model_dir, method="freeze", freeze_layers=3)
    with pytest.raises(ConfigError, match=r"freeze_layers 3 is beyond the depth of .* \(2 layers\); expected 0..2"):
        train(cfg)
    assert not (tmp_path / "tiny").exists()


def test_bf16_without_hardware_support_is_refused_unless_a_fallback_is_asked():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"no native bf16 support; pass --allow-precision-fallback"):
        Precision.resolve(TrainConfig(precision="bf16"), cpu, bf16_ok=False)
    assert Precision.resolve(TrainConfig(precision="bf16", allow_precision_fallback=True), cpu, bf16_ok=False).name == "fp32"
    assert Precision.resolve(TrainConfig(precision="bf16"), cpu, bf16_ok=True).name == "bf16"
    with pytest.raises(ConfigError, match=r"fp16 needs a CUDA GPU \(this run is on cpu\)"):
        Precision.resolve(TrainConfig(precision="fp16"), cpu)


def test_per_method_default_learning_rates():
    assert TrainConfig().lr == 1e-3 and TrainConfig(method="full").lr == 5e-5
    assert TrainConfig(method="full", learning_rate=2e-5).lr == 2e-5


def test_layerwise_decay_and_weight_decay_groups(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    groups = param_groups(model, TrainConfig(method="full", learning_rate=1e-3, layerwise_lr_decay=0.5, weight_decay=0.1), 2)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(2.5e-4)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)
    assert wd_of[id(named["classifier.bias"])] == 0.0 and wd_of[id(named["bert.embeddings.LayerNorm.weight"])] == 0.0
    assert wd_of[id(named["classifier.weight"])] == 0.1


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_warm_up_then_decay(schedule, tiny_model_dir):
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1.0, lr_schedule=schedule, warmup_ratio=0.1), 0, 100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1.0)
    if schedule == "constant":
        assert lrs[99] == pytest.approx(1.0)
    else:
        assert lrs[99] < 0.05 and (lrs[55] == pytest.approx(0.5) if schedule == "linear" else lrs[55] == pytest.approx(0.5, abs=0.02))


def test_deterministic_with_a_schedule_accumulation_smoothing_and_decay(tmp_path, tiny_model_dir):
    flags = dict(max_steps=6, eval_every=3, learning_rate=3e-3, lr_schedule="cosine", warmup_ratio=0.2,
                 gradient_accumulation_steps=2, label_smoothing=0.1, layerwise_lr_decay=0.8, weight_decay=0.05,
                 early_stopping_metric="val_loss", method="full")
    runs = [train(tiny_train_config(tmp_path / str(i), tiny_model_dir, **flags)).metrics for i in range(2)]
    assert runs[0]["history"] == [{**h, "elapsed_s": runs[0]["history"][i]["elapsed_s"]} for i, h in enumerate(runs[1]["history"])]
    assert runs[0]["test_after"] == runs[1]["test_after"]
    assert "val_loss" in runs[0]["best_validation"]


def test_bf16_autocast_and_checkpointing_train(tmp_path, tiny_model_dir):
    cfg = tiny_train_config(tmp_path, tiny_model_dir, precision="bf16", allow_precision_fallback=True,
                            gradient_checkpointing=True, max_steps=2, eval_every=2)
    metrics = train(cfg).metrics
    assert metrics["precision"] in ("bf16", "fp32") and metrics["steps"] == 2
    assert np.isfinite(metrics["train_loss_last"])


def test_metrics_add_auc_and_per_class_f1():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    m = logit_metrics([0, 1, 1, 1], logits, ["neg", "pos"])
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0  # ranking is perfect even though one label is wrong
    assert m["per_class_f1"] == {"neg": pytest.approx(2 / 3), "pos": pytest.approx(0.8)}
    assert m["loss"] > 0
    assert logit_metrics([1, 1], logits[:2], ["neg", "pos"])["auc"] is None  # one class only: AUC undefined
    assert logit_metrics([0, 1, 2], np.eye(3, dtype=np.float32), ["a", "b", "c"])["auc"] is None


def test_cleaning_counts_what_it_did():
    examples = [Example("<p>Great&nbsp;movie</p>", "a"), Example("Great movie", "a"), Example("  so   so ", "b"),
                Example("<br/>", "b"), Example("Tom &amp; Jerry", "a"), Example("plain", "b")]
    out, report = clean_examples(examples)
    assert [e.text for e in out] == ["Great movie", "so so", "Tom & Jerry", "plain"]
    assert report.to_dict() == {"texts_in": 6, "html_tags_stripped": 2, "html_entities_decoded": 2,
                                "whitespace_normalized": 3, "emptied_and_dropped": 1, "duplicates_dropped": 1,
                                "texts_out": 4}


def test_cleaning_is_optional_and_reported_in_metrics(tmp_path, tiny_model_dir):
    rows = "".join(f"<b>text {i}</b>,{'ab'[i % 2]}\ntext {i},{'ab'[i % 2]}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    cfg = tiny_train_config(tmp_path, tiny_model_dir, data=tmp_path / "d.csv", clean_text=True, max_steps=1, eval_every=1)
    metrics = train(cfg).metrics
    assert metrics["cleaning"]["html_tags_stripped"] == 40 and metrics["cleaning"]["duplicates_dropped"] == 40
    assert sum(metrics["splits"].values()) == 40
    off = train(tiny_train_config(tmp_path / "off", tiny_model_dir, data=tmp_path / "d.csv", max_steps=1, eval_every=1)).metrics
    assert off["cleaning"] is None and sum(off["splits"].values()) == 80
