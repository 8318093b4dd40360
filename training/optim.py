"""The optimizer, its schedule and the precision: everything one optimizer step needs besides the data.

- AdamW over parameter groups: no weight decay on biases and LayerNorm weights; with layer-wise LR
  decay each transformer block gets its own learning rate (lower blocks smaller).
- Warm-up, then linear / cosine / constant decay (transformers' ``get_scheduler``).
- Mixed precision: bf16 autocast (CPU, or CUDA with bf16), fp16 autocast + ``GradScaler`` (CUDA);
  hardware without the asked precision is refused unless the config allows a fallback to fp32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from training.config import TrainConfig
from training.errors import ConfigError
from training.methods import layer_depth

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_f.weight")
"""Parameter-name endings that get no weight decay (the usual BERT/GPT recipe)."""


def param_groups(model: torch.nn.Module, cfg: TrainConfig, n_layers: int) -> list[dict]:
    """AdamW groups keyed by (learning rate, weight decay) over the trainable parameters."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = cfg.layerwise_lr_decay ** (n_layers + 1 - layer_depth(name, n_layers))
        decay = 0.0 if name.endswith(NO_DECAY) else cfg.weight_decay
        groups.setdefault((cfg.lr * scale, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in sorted(groups.items())]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, n_layers: int, total_steps: int):
    """(AdamW, scheduler) for ``total_steps`` optimizer steps."""
    groups = param_groups(model, cfg, n_layers)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    warmup = round(cfg.warmup_ratio * total_steps)
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (CUDA: Ampere or newer; CPU: oneDNN's bf16 check)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """The precision training runs in on ``device``, resolved once before training starts."""

    name: str
    device: torch.device

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device, bf16_ok: bool | None = None) -> Precision:
        """Check ``cfg.precision`` against the hardware: refuse, or fall back to fp32 if allowed."""
        bf16_ok = bf16_supported(device) if bf16_ok is None else bf16_ok
        problem = None
        if cfg.precision == "bf16" and not bf16_ok:
            problem = f"precision bf16 asked, but this {device.type} has no native bf16 support"
        elif cfg.precision == "fp16" and device.type != "cuda":
            problem = f"precision fp16 needs a CUDA GPU (this run is on {device.type}); use bf16 or fp32"
        if problem is None:
            return cls(cfg.precision, device)
        if not cfg.allow_precision_fallback:
            raise ConfigError(f"{problem}; pass --allow-precision-fallback to train in fp32 instead")
        log.warning("%s: falling back to fp32 (--allow-precision-fallback)", problem)
        return cls("fp32", device)

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler: active for fp16 only (bf16 and fp32 do not need one)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
