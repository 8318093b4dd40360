"""The export stage end to end: merge -> ONNX (+ int8) -> parity gate -> publish."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from export.config import ExportConfig, training_task
from export.contract import VARIANT_FILES
from export.errors import InputError
from export.merge import check_adapter_dir, merge
from export.onnx import export_onnx
from export.parity import check_parity
from tunestack import names, tracking
from tunestack.files import sha256

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """Where each output went, the parity report, and the versions published."""

    merged_dir: Path
    onnx_dir: Path
    parity: dict
    published: dict[str, Path | str] = field(default_factory=dict)
    """variant -> version folder in the model repository (new, or the one already serving it)."""
    already_published: list[str] = field(default_factory=list)
    """Variants whose exact ONNX file an existing version already serves (nothing new published)."""
    triton_repository: str | None = None
    """For an s3:// repository: the URI to pass to ``tritonserver --model-repository``."""

    @property
    def passed(self) -> bool:
        return bool(self.parity["passed"])


def run_export(cfg: ExportConfig) -> ExportResult:
    """Run the stage. Publishes only when every requested variant passed the gate, so a failed
    export leaves the model repository exactly as it was."""
    if cfg.adapter is None:
        raise InputError("no adapter given: pass --adapter runs/NAME/adapter (or run `make export`, which trains first)")
    check_adapter_dir(cfg.adapter)
    if training_task(cfg.adapter) != cfg.task:
        raise InputError(f"--task {cfg.task} does not match the adapter {cfg.adapter}, trained for "
                         f"{training_task(cfg.adapter)} (leave --task unset to follow the adapter)")
    causal = cfg.task == "causal-lm"
    merged_dir = merge(cfg.adapter, cfg.merged_dir)
    if causal:
        from export.onnx_causal import export_causal_onnx
        from export.parity_causal import check_causal_parity

        onnx_dir = export_causal_onnx(merged_dir, cfg.onnx_dir, cfg)
        (onnx_dir / names.EXPORT_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        parity = check_causal_parity(onnx_dir, merged_dir, cfg)
    else:
        onnx_dir = export_onnx(merged_dir, cfg.onnx_dir, cfg)
        (onnx_dir / names.EXPORT_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        parity = check_parity(onnx_dir, merged_dir, cfg)
    result = ExportResult(merged_dir, onnx_dir, parity)
    if not result.passed:
        failed = [v for v in cfg.variants if not parity["variants"][v]["publishable"]]
        log.error("gate failed for %s: nothing published", ", ".join(failed))
        tracking.log_export(cfg, result)
        return result
    if cfg.publish:
        from export.object_store import S3Repository, is_s3_uri
        from export.publish import publish  # the publish step writes the Triton model repository
        from export.publish_causal import publish_causal

        publish_one = publish_causal if causal else publish
        bucket = S3Repository.from_env(cfg.repository) if is_s3_uri(cfg.repository) else None
        for variant in cfg.variants:
            onnx_file = onnx_dir / VARIANT_FILES[variant]
            if bucket is not None:
                existing = bucket.find_published(cfg.model_name, sha256(onnx_file), variant)
            else:
                existing = find_published(cfg.repository / cfg.model_name, onnx_file, variant)
            if existing is not None:
                log.info("already published: %s of %s is %s", variant, onnx_dir, existing)
                result.published[variant] = existing
                result.already_published.append(variant)
                continue
            result.published[variant] = bucket.publish(onnx_dir, variant, cfg) if bucket else publish_one(onnx_dir, variant, cfg)
        if bucket is not None:
            result.triton_repository = bucket.triton_uri
    tracking.log_export(cfg, result)
    return result


def find_published(model_dir: Path, onnx_file: Path, variant: str) -> Path | None:
    """The version folder that already serves this exact ONNX file as ``variant``, if any."""
    if not model_dir.is_dir():
        return None
    digest = sha256(onnx_file)
    for provenance in sorted(model_dir.glob("[0-9]*/provenance.json"), key=lambda p: int(p.parent.name)):
        data = json.loads(provenance.read_text())
        if data.get("onnx_sha256") == digest and data.get("variant") == variant:
            return provenance.parent
    return None
