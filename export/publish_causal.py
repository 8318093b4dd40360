"""Publish a gated causal LM variant as a new numbered version: ``runs/NAME/onnx/ -> REPOSITORY/MODEL/N/``.

A version folder holds ``model.onnx`` (the variant's decoder under one name), the tokenizer files,
``generation.json``, ``parity.json`` and ``provenance.json`` (variant, task, source run, sha256, configs):
everything ``export.generate.Generator.from_folder`` needs; and the served model: ``model.py`` (the
decoupled Triton python model, ``export/triton_llm/model.py``) with the project modules it imports under
``runtime/`` (``runtime_files``: found by following its imports, so the copy is whole by construction).
``MODEL/config.pbtxt`` is written from ``export.triton_config.causal_model_config``.

The repository rules are the classifier's (``export.publish``): versions only go up, one is never
overwritten, everything is staged beside the repository and renamed in, a failure leaves it as it was,
and a variant the gate did not mark publishable is refused before the repository is touched. A model
folder that serves a classifier is refused (and the reverse, in ``export.publish``).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from export import triton_config
from export.config import ExportConfig
from export.contract import CONTRACT, GENERATIVE, GENERATIVE_VARIANT_FILES
from export.errors import GateError, InputError, PublishError
from export.publish import PROVENANCE_FILE, existing_versions, install, require_files, staging_dir, write_json
from tunestack import names
from tunestack.files import sha256
from tunestack.tracking import read_link

log = logging.getLogger(__name__)

TASK = "causal-lm"
SERVED_MODEL = Path(__file__).parent / "triton_llm" / "model.py"
"""The served model's file, copied into each version as ``model.py``."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("export", "tunestack")
"""The packages whose modules ``runtime_files`` follows (everything else comes from the venv)."""


def _imported_modules(path: Path) -> set[str]:
    """Dotted names of the project modules ``path`` imports (any ``import`` / ``from ... import``, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PROJECT_PACKAGES}


def runtime_files(entry: Path = SERVED_MODEL) -> list[Path]:
    """The project files ``entry`` needs, relative to the project root: every module it imports from
    ``PROJECT_PACKAGES``, what those import, and each package's ``__init__.py``."""
    files: set[Path] = set()
    todo = [entry]
    while todo:
        for name in _imported_modules(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                module = PROJECT_ROOT.joinpath(*parts[:depth])
                for candidate in (module / "__init__.py", module.with_suffix(".py")):
                    rel = candidate.relative_to(PROJECT_ROOT)
                    if candidate.is_file() and rel not in files:
                        files.add(rel)
                        todo.append(candidate)
    return sorted(files)


def version_task(version_dir: Path) -> str | None:
    """The task a published version was exported for (its provenance; classifier versions predate the key)."""
    provenance = version_dir / PROVENANCE_FILE
    return json.loads(provenance.read_text()).get("task", "classification") if provenance.is_file() else None


def _check_source(onnx_dir: Path, variant: str) -> dict:
    """The gate's entry for ``variant``; raise InputError when files are missing, GateError when it failed."""
    if variant not in GENERATIVE_VARIANT_FILES:
        raise InputError(f"unknown variant {variant!r} of a causal LM; expected one of: {', '.join(GENERATIVE_VARIANT_FILES)}")
    needed = [GENERATIVE_VARIANT_FILES[variant], GENERATIVE.tokenizer_file, GENERATIVE.generation_file,
              CONTRACT.parity_file, names.TRAINING_CONFIG_FILE]
    require_files(onnx_dir, needed)
    parity = json.loads((onnx_dir / CONTRACT.parity_file).read_text())
    entry = parity.get("variants", {}).get(variant)
    if entry is None or parity.get("task") != TASK:
        raise GateError(f"{onnx_dir / CONTRACT.parity_file} holds no causal-lm gate entry for {variant!r}")
    if entry.get("publishable") is not True:
        failed = [f"{c['name']} = {c['value']:.4g} (threshold {c['threshold']:.4g})"
                  for c in entry.get("checks", []) if not c.get("passed", True)]
        raise GateError(f"variant {variant!r} of {onnx_dir} failed the gate and is not published: "
                        + ("; ".join(failed) or "its entry does not say publishable: true"))
    return entry


def _stage(onnx_dir: Path, variant: str, entry: dict, cfg: ExportConfig, dest: Path, version: int) -> None:
    dest.mkdir(parents=True)
    shutil.copy2(SERVED_MODEL, dest / SERVED_MODEL.name)
    for rel in runtime_files():
        (dest / GENERATIVE.runtime_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / rel, dest / GENERATIVE.runtime_dir / rel)
    shutil.copy2(onnx_dir / GENERATIVE_VARIANT_FILES[variant], dest / GENERATIVE.onnx_file)
    for name in (*GENERATIVE.tokenizer_files, GENERATIVE.generation_file, CONTRACT.parity_file):
        if (onnx_dir / name).is_file():
            shutil.copy2(onnx_dir / name, dest / name)
    training = json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())
    write_json(dest / PROVENANCE_FILE, {
        "model_name": cfg.model_name, "version": version, "variant": variant, "task": TASK,
        "method": training.get("method", "lora"), "training_run": read_link(onnx_dir),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": {"run": onnx_dir.resolve().parent.name, "onnx_dir": str(onnx_dir.resolve()),
                   "onnx_file": GENERATIVE_VARIANT_FILES[variant]},
        "onnx_sha256": sha256(dest / GENERATIVE.onnx_file), "parity": {k: v for k, v in entry.items() if k != "prompts"},
        "export_config": cfg.to_dict(), "training_config": training,
    })


def publish_causal(onnx_dir: Path, variant: str, cfg: ExportConfig) -> Path:
    """Publish ``variant`` of ``onnx_dir`` as version N+1 of ``cfg.model_name``; return the version folder."""
    onnx_dir = Path(onnx_dir)
    entry = _check_source(onnx_dir, variant)
    repository = Path(cfg.repository)
    model_dir = repository / cfg.model_name
    others = sorted({t for v in existing_versions(model_dir) if (t := version_task(model_dir / str(v))) not in (None, TASK)})
    if others:
        raise PublishError(f"{model_dir} holds {', '.join(others)} versions; refusing to add a causal LM version "
                           "(use another --model-name)")
    created_repository = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(repository)
    try:
        version = 1 + max(existing_versions(model_dir), default=0)
        _stage(onnx_dir, variant, entry, cfg, tmp / "v" / cfg.model_name, version)
        config = triton_config.to_pbtxt(triton_config.causal_model_config(cfg))
        install(repository, tmp, {cfg.model_name: (tmp / "v" / cfg.model_name, config)}, version)
    except OSError as e:
        raise PublishError(f"publishing {variant} of {onnx_dir} to {repository} failed; repository unchanged: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_repository and not any(repository.iterdir()):
            repository.rmdir()
    version_dir = model_dir / str(version)
    log.info("published %s of %s as %s", variant, onnx_dir, version_dir)
    return version_dir
