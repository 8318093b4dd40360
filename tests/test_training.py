"""Training on a tiny random BERT: the adapter it writes, determinism, and every bad input's error."""

from __future__ import annotations

import json

import pytest
from peft import PeftModel

from tests.conftest import tiny_train_config
from training.config import TrainConfig
from training.data import load_splits
from training.errors import ConfigError, DataError, ModelError
from training.model import load_classifier
from training.train import train
from tunestack.names import LABEL_MAP_FILE, METRICS_FILE


def test_adapter_folder_has_everything_and_loads(tiny_adapter_dir, tiny_model_dir):
    names = {p.name for p in tiny_adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "label_map.json",
            "training_config.json", "metrics.json", "heldout.jsonl"} <= names
    labels = json.loads((tiny_adapter_dir / LABEL_MAP_FILE).read_text())["labels"]
    assert labels == ["negative", "positive"]
    metrics = json.loads((tiny_adapter_dir / METRICS_FILE).read_text())
    for split in ("test_before", "test_after"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0 and 0.0 <= metrics[split]["macro_f1"] <= 1.0
        assert metrics[split]["examples"] == metrics["splits"]["test"] > 0
    assert metrics["steps"] == 12 and len(metrics["history"]) == 2
    model = PeftModel.from_pretrained(load_classifier(tiny_model_dir, labels), tiny_adapter_dir)
    trained = {k for k, _ in model.named_parameters() if "lora_" in k}
    assert trained, "no LoRA weights loaded"
    assert any("modules_to_save" in k for k, _ in model.named_parameters()), "the head was not trained in full"


def test_training_is_deterministic(tmp_path, tiny_model_dir):
    runs = []
    for i in range(2):
        cfg = tiny_train_config(tmp_path / str(i), tiny_model_dir, max_steps=30, eval_every=30, learning_rate=3e-3)
        runs.append(train(cfg).metrics)
    assert runs[0]["test_after"] == runs[1]["test_after"]
    assert runs[0]["history"][0]["loss"] == runs[1]["history"][0]["loss"]


def test_refuses_to_overwrite_an_adapter(tiny_adapter_dir, tiny_model_dir):
    cfg = tiny_train_config(tiny_adapter_dir.parent.parent, tiny_model_dir)
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        train(cfg)


def test_time_budget_stops_early(tmp_path, tiny_model_dir):
    cfg = tiny_train_config(tmp_path, tiny_model_dir, max_steps=10_000, eval_every=10_000, time_budget_s=1.0)
    metrics = train(cfg).metrics
    assert metrics["stop_reason"].startswith("time budget") and metrics["steps"] < 10_000


def test_early_stopping_with_patience(tmp_path, tiny_model_dir):
    # learning rate ~0: validation accuracy cannot improve after the first evaluation
    cfg = tiny_train_config(tmp_path, tiny_model_dir, max_steps=50, eval_every=2, patience=2, learning_rate=1e-12)
    metrics = train(cfg).metrics
    assert metrics["stop_reason"].startswith("early stopping")
    assert metrics["steps"] == 6 and metrics["best_validation"]["step"] == 2


def test_split_is_stratified_deterministic_and_disjoint():
    cfg = TrainConfig(max_examples=1000, seed=7)
    a, b = load_splits(cfg), load_splits(cfg)
    assert [e.text for e in a.test] == [e.text for e in b.test]
    texts = [set(e.text for e in s) for s in (a.train, a.validation, a.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    share = sum(e.label == "positive" for e in a.train) / len(a.train)
    test_share = sum(e.label == "positive" for e in a.test) / len(a.test)
    assert abs(share - test_share) < 0.02
    assert len(a.test) == pytest.approx(100, abs=2)
    other = load_splits(TrainConfig(max_examples=1000, seed=8))
    assert [e.text for e in other.test] != [e.text for e in a.test]


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "suffix", "kwargs", "message"),
    [
        (None, ".csv", {}, "does not exist"),
        ("review,stars\nok,1\n", ".csv", {}, r"missing column\(s\) \['text', 'label'\] \(found: \['review', 'stars'\]\)"),
        ("text,label\n", ".csv", {}, "holds no rows"),
        ("", ".jsonl", {}, "holds no rows"),
        ('{"text": "a", "label": "x"}\nnot json\n', ".jsonl", {}, r"\.jsonl:2 is not valid JSON"),
        ("text,label\n" + "".join(f"t{i},same\n" for i in range(30)), ".csv", {}, "1 distinct label"),
        ("a,b\n", ".parquet", {}, "unknown format"),
    ],
)
def test_bad_data_gets_a_clear_error(tmp_path, tiny_model_dir, content, suffix, kwargs, message):
    path = tmp_path / f"data{suffix}"
    if content is not None:
        write(path, content)
    cfg = tiny_train_config(tmp_path, tiny_model_dir, data=path, **kwargs)
    with pytest.raises(DataError, match=message):
        train(cfg)


def test_label_unseen_in_training(tmp_path, tiny_model_dir):
    data = write(tmp_path / "d.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(40)))
    test = write(tmp_path / "t.jsonl", '{"text": "x", "label": "a"}\n{"text": "y", "label": "zzz"}\n')
    cfg = tiny_train_config(tmp_path, tiny_model_dir, data=data, test_data=test)
    with pytest.raises(DataError, match=r"label\(s\) \['zzz'\] appear in the test split but never in training"):
        train(cfg)


def test_custom_columns_and_jsonl(tmp_path, tiny_model_dir):
    lines = "".join(json.dumps({"review": f"text number {i}", "y": "ab"[i % 2]}) + "\n" for i in range(60))
    data = write(tmp_path / "d.jsonl", lines)
    cfg = tiny_train_config(tmp_path, tiny_model_dir, data=data, text_column="review", label_column="y", max_steps=2, eval_every=2)
    result = train(cfg)
    assert json.loads((result.adapter_dir / LABEL_MAP_FILE).read_text())["labels"] == ["a", "b"]


def test_bad_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_text("")
    with pytest.raises(ModelError, match=r"missing config.json \(found: \['weights.bin'\]\)"):
        train(TrainConfig(runs_dir=tmp_path, model=tmp_path / "empty", max_examples=100))
    with pytest.raises(ModelError, match="does not exist"):
        train(TrainConfig(runs_dir=tmp_path, model=tmp_path / "nope", max_examples=100))


def test_unknown_target_module(tmp_path, tiny_model_dir):
    cfg = tiny_train_config(tmp_path, tiny_model_dir, target_modules=("q_proj",))
    with pytest.raises(ModelError, match=r"target module\(s\) \['q_proj'\] not found"):
        train(cfg)


def test_config_collects_every_problem():
    with pytest.raises(ConfigError) as e:
        TrainConfig(lora_r=0, batch_size=0, learning_rate=-1)
    assert "lora_r" in str(e.value) and "batch_size" in str(e.value) and "learning_rate" in str(e.value)
    with pytest.raises(ConfigError, match=r"unknown training config key\(s\) \['lora_rank'\]"):
        TrainConfig.from_dict({"lora_rank": 4})


def test_cli_reads_a_config_file_and_flags_override_it(tmp_path):
    from functools import partial

    from tunestack.cli import parse_dataclass

    parse_config = partial(parse_dataclass, TrainConfig, prog="t", description="d", errors=())
    (tmp_path / "train.yaml").write_text("name: fromfile\nlora_r: 16\ntarget-modules: query,key\ntime_budget_s: 60\n")
    (tmp_path / "train.toml").write_text('name = "toml"\nlora_alpha = 8\n')
    cfg = parse_config(["--config", str(tmp_path / "train.yaml"), "--lora-r", "4"])
    assert (cfg.name, cfg.lora_r, cfg.target_modules, cfg.time_budget_s) == ("fromfile", 4, ("query", "key"), 60.0)
    assert parse_config(["--config", str(tmp_path / "train.toml")]).lora_alpha == 8
    assert parse_config(["--max-steps", "none", "--no-overwrite"]).max_steps is None
    (tmp_path / "bad.yaml").write_text("lora_rank: 4\n")
    with pytest.raises(ConfigError, match=r"unknown training config key\(s\) \['lora_rank'\]"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])


def test_training_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    from training.__main__ import main

    code = main(["--runs-dir", str(tmp_path), "--data", str(tmp_path / "missing.csv")])
    assert code == 2
    assert "error: data file" in capsys.readouterr().err
