"""Publish a gated ONNX variant as a new numbered version of a Triton model.

``runs/NAME/onnx/ -> model_repository/MODEL/config.pbtxt + model_repository/MODEL/N/``

Each version folder is self-contained (``model.onnx``, the tokenizer files, ``label_map.json``,
``serving.json``, ``model.py``, ``parity.json``, ``drift_reference.json`` and ``provenance.json``), so versions of different
variants (fp32, int8) or runs coexist under one ``config.pbtxt``. Versions only go up and an existing
version is never touched. Everything is built in ``.REPOSITORY.tmp-publish-*`` beside the repository
(same filesystem, invisible to Triton) and moved in with ``os.rename`` / ``os.replace``; a failure on the way undoes what was moved, so a failed
or refused publish leaves the repository as it was. A variant whose ``parity.json`` entry is not
publishable is refused before the repository is touched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export import triton_config
from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.drift_reference import reference_path
from export.errors import GateError, InputError, PublishError
from tunestack import names
from tunestack.files import sha256
from tunestack.tracking import read_link

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "triton_model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SETTINGS_FILE = "serving.json"
PROVENANCE_FILE = "provenance.json"
TMP_PREFIX = ".tmp-publish-"


@dataclass
class Source:
    """What ``runs/NAME/onnx`` holds for one variant, checked before anything is written."""

    onnx_dir: Path
    variant: str
    onnx_file: Path
    labels: list[str]
    max_length: int
    parity: dict
    training_config: dict


def require_files(onnx_dir: Path, needed: list[str]) -> None:
    """Raise ``InputError`` naming every file of ``needed`` missing from the export folder, and what it holds."""
    missing = [n for n in needed if not (onnx_dir / n).is_file()]
    if missing:
        found = sorted(p.name for p in onnx_dir.iterdir()) if onnx_dir.is_dir() else "the folder does not exist"
        raise InputError(f"export folder {onnx_dir} is missing {', '.join(missing)} (found: {found})")


def read_source(onnx_dir: Path, variant: str) -> Source:
    """Check the export folder and the gate for ``variant``; raise InputError / GateError."""
    onnx_dir = Path(onnx_dir)
    if variant not in VARIANT_FILES:
        raise InputError(f"unknown variant {variant!r}; expected one of: {', '.join(VARIANT_FILES)}")
    needed = [VARIANT_FILES[variant], "tokenizer.json", CONTRACT.label_map_file, CONTRACT.parity_file,
              names.TRAINING_CONFIG_FILE]
    require_files(onnx_dir, needed)
    parity = json.loads((onnx_dir / CONTRACT.parity_file).read_text())
    entry = parity.get("variants", {}).get(variant)
    if entry is None:
        raise GateError(f"{onnx_dir / CONTRACT.parity_file} has no entry for variant {variant!r}; "
                        f"it was not gated (gated: {', '.join(parity.get('variants', {})) or 'none'})")
    if entry.get("publishable") is not True:
        failed = [f"{c.get('name')} = {c.get('value'):.4g} (threshold {c.get('threshold')})"
                  for c in entry.get("checks", []) if not c.get("passed", True)]
        reasons = "; ".join(failed) or entry.get("reasons") or "its entry does not say publishable: true"
        raise GateError(f"variant {variant!r} of {onnx_dir} failed the parity gate and is not published: {reasons}")
    labels = json.loads((onnx_dir / CONTRACT.label_map_file).read_text()).get("labels")
    if not labels or not all(isinstance(x, str) for x in labels):
        raise InputError(f"{onnx_dir / CONTRACT.label_map_file} must hold {{\"labels\": [names...]}}, got {labels!r}")
    training = json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())
    max_length = training.get("max_length")
    if not isinstance(max_length, int) or max_length < 1:
        raise InputError(f"{onnx_dir / names.TRAINING_CONFIG_FILE} needs an int max_length >= 1, got {max_length!r}")
    return Source(onnx_dir, variant, onnx_dir / VARIANT_FILES[variant], labels, max_length, entry, training)


def existing_versions(model_dir: Path) -> list[int]:
    """The numbered version folders of a model in a local repository, oldest first (none: ``[]``)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


FASTEST_CPU_VARIANT = "int8"
"""The variant the benches and ``workflows tune`` pick by default: dynamic int8 is the fastest on CPU here
(static int8 trades speed for batch invariance; docs/export.md)."""


def default_version(model_dir: Path, variant: str = FASTEST_CPU_VARIANT) -> int | None:
    """The newest version published from ``variant`` (its provenance says so), else the newest; None if none."""
    versions = existing_versions(model_dir)
    for v in reversed(versions):
        provenance = model_dir / str(v) / PROVENANCE_FILE
        if provenance.is_file() and json.loads(provenance.read_text()).get("variant") == variant:
            return v
    return versions[-1] if versions else None


def read_config(model_dir: Path):
    path = model_dir / "config.pbtxt"
    return triton_config.parse_pbtxt(path.read_text()) if path.is_file() else None


def _check_compatible(model_dir: Path, layout: str, labels: list[str]) -> None:
    """Versions of one model share config.pbtxt: refuse another layout or other labels (or a causal LM's folder)."""
    causal = [v for v in existing_versions(model_dir) if (model_dir / str(v) / PROVENANCE_FILE).is_file()
              and json.loads((model_dir / str(v) / PROVENANCE_FILE).read_text()).get("task") == "causal-lm"]
    if causal:
        raise PublishError(f"{model_dir} holds causal-lm versions {causal}; refusing to add a classifier version "
                           "(use another --model-name)")
    existing = read_config(model_dir)
    if existing is None:
        return
    if triton_config.config_layout(existing) != layout:
        raise PublishError(f"{model_dir} holds the {triton_config.config_layout(existing)!r} layout; refusing to "
                           f"add a {layout!r} version (use another --model-name or --repository)")
    old_labels = triton_config.config_labels(existing)
    if old_labels is not None and old_labels != labels:
        raise PublishError(f"{model_dir} serves labels {old_labels}; this export has {labels} "
                           "(publish under another --model-name)")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _stage_files(src: Source, cfg: ExportConfig, dest: Path, version: int, *, role: str) -> None:
    """Write one version folder for ``role``: classify (python layout), tokenize, onnx, postprocess, ensemble."""
    dest.mkdir(parents=True)
    if role in ("classify", "tokenize", "postprocess"):
        shutil.copy2(TEMPLATE_DIR / "model.py", dest / "model.py")
        shutil.copy2(src.onnx_dir / CONTRACT.label_map_file, dest / CONTRACT.label_map_file)
        write_json(dest / SETTINGS_FILE, {"max_length": src.max_length, "onnx_file": CONTRACT.onnx_file})
    if role in ("classify", "tokenize"):
        for name in TOKENIZER_FILES:
            if (src.onnx_dir / name).is_file():
                shutil.copy2(src.onnx_dir / name, dest / name)
    if role in ("classify", "onnx", "ensemble"):
        if role != "ensemble":
            shutil.copy2(src.onnx_file, dest / CONTRACT.onnx_file)
        shutil.copy2(src.onnx_dir / CONTRACT.parity_file, dest / CONTRACT.parity_file)
        drift_reference = reference_path(src.onnx_dir, src.variant)
        if drift_reference.is_file():  # exports from before drift references were written have none
            shutil.copy2(drift_reference, dest / CONTRACT.drift_reference_file)
        write_json(dest / PROVENANCE_FILE, {
            "model_name": cfg.model_name, "version": version, "variant": src.variant, "layout": cfg.layout,
            "method": src.training_config.get("method", "lora"), "training_run": read_link(src.onnx_dir),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": {"run": src.onnx_dir.resolve().parent.name, "onnx_dir": str(src.onnx_dir.resolve()),
                       "onnx_file": src.onnx_file.name},
            "onnx_sha256": sha256(dest / CONTRACT.onnx_file if role != "ensemble" else src.onnx_file), "parity": src.parity, "labels": src.labels,
            "max_length": src.max_length, "export_config": cfg.to_dict(),
            "training_config": src.training_config,
        })


def _onnx_names(onnx_file: Path) -> tuple[list[str], str]:
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], graph.output[0].name


def install(repository: Path, tmp: Path, staged: dict[str, tuple[Path, str | None]], version: int) -> None:
    """Move staged ``model -> (version folder, config text)`` into the repository, undoing on failure.

    A config text of None leaves ``config.pbtxt`` as it is (or absent)."""
    undo: list[tuple[Path, Path]] = []  # (src, dst) renames that put things back, newest last
    try:
        for model, (version_dir, config_text) in staged.items():
            model_dir = repository / model
            if not model_dir.exists():  # a new model: config.pbtxt and version land in one rename
                whole = tmp / f"model-{model}"
                whole.mkdir()
                if config_text is not None:
                    (whole / "config.pbtxt").write_text(config_text)
                os.rename(version_dir, whole / str(version))
                os.rename(whole, model_dir)
                undo.append((model_dir, whole))
                continue
            target = model_dir / str(version)
            if target.exists():
                raise PublishError(f"{target} already exists; versions are never overwritten")
            os.rename(version_dir, target)
            undo.append((target, version_dir))
            config_path = model_dir / "config.pbtxt"
            if config_text is None or (config_path.is_file() and config_path.read_text() == config_text):
                continue
            new_config, old_config = tmp / f"{model}.config.pbtxt", tmp / f"{model}.config.pbtxt.old"
            new_config.write_text(config_text)
            if not config_path.is_file():  # a model folder published without one: undoing takes it out again
                os.replace(new_config, config_path)
                undo.append((config_path, new_config))
                continue
            shutil.copy2(config_path, old_config)
            os.replace(new_config, config_path)
            undo.append((old_config, config_path))
    except BaseException:
        for src, dst in reversed(undo):
            try:
                os.replace(src, dst) if src.is_file() else os.rename(src, dst)
            except OSError as e:  # keep undoing the rest; say what could not be put back
                log.error("could not move %s back to %s while undoing a failed publish: %s", src, dst, e)
        raise


def staging_dir(repository: Path) -> Path:
    """A temporary folder on the repository's filesystem, beside it so Triton never sees it.

    (Triton treats every folder in the repository as a model: a half-built ``.tmp`` folder inside would
    fail a ``--load-model=*`` start-up.) Inside the repository only if the parent is another filesystem.
    """
    parent = repository.resolve().parent
    if os.stat(parent).st_dev == os.stat(repository).st_dev and os.access(parent, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f".{repository.name}{TMP_PREFIX}", dir=parent))
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=repository))


def publish(onnx_dir: Path, variant: str, cfg: ExportConfig) -> Path:
    """Publish ``variant`` of ``onnx_dir`` as version N+1 of ``cfg.model_name``; return the version folder.

    Raises GateError when parity.json says the variant is not publishable, InputError when the export
    folder is incomplete, PublishError when the repository refuses it; in each case nothing changed.
    """
    src = read_source(onnx_dir, variant)
    repository = Path(cfg.repository)
    names = (triton_config.step_names(cfg.model_name) if cfg.layout == "onnxruntime" else {})
    models = [cfg.model_name, *names.values()]
    _check_compatible(repository / cfg.model_name, cfg.layout, src.labels)
    created_repository = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(repository)
    try:
        version = 1 + max((v for m in models for v in existing_versions(repository / m)), default=0)
        staged: dict[str, tuple[Path, str]] = {}
        if cfg.layout == "python":
            _stage_files(src, cfg, tmp / "v" / cfg.model_name, version, role="classify")
            config = triton_config.python_model_config(cfg, src.labels)
            staged[cfg.model_name] = (tmp / "v" / cfg.model_name, triton_config.to_pbtxt(config))
        else:
            inputs, output = _onnx_names(src.onnx_file)
            configs = triton_config.ensemble_model_configs(cfg, src.labels, inputs, output)
            roles = {cfg.model_name: "ensemble", **{name: role for role, name in names.items()}}
            for model, role in roles.items():
                _stage_files(src, cfg, tmp / "v" / model, version, role=role)
                staged[model] = (tmp / "v" / model, triton_config.to_pbtxt(configs[model]))
        install(repository, tmp, staged, version)
    except PublishError:
        raise
    except OSError as e:
        raise PublishError(f"publishing {variant} of {onnx_dir} to {repository} failed; repository unchanged: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_repository and not any(repository.iterdir()):
            repository.rmdir()
    version_dir = repository / cfg.model_name / str(version)
    log.info("published %s of %s as %s", variant, onnx_dir, version_dir)
    return version_dir
