"""Validation history, the best weights so far, and the early-stopping count, on a chosen metric."""

from __future__ import annotations

import torch

LOWER_IS_BETTER = {"val_loss"}
"""Early-stopping metrics that improve by going down."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights (the adapter and head, or every unfrozen weight)."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


class Progress:
    """Evaluations so far; keeps the weights of the best one by ``metric`` and counts evaluations since."""

    def __init__(self, model: torch.nn.Module, metric: str):
        self.metric = metric
        self.best: dict = {"step": 0, metric: None}
        self.best_state = trainable_state(model)
        self.history: list[dict] = []
        self.stale = 0

    def _better(self, value: float) -> bool:
        best = self.best[self.metric]
        if best is None:
            return True
        return value < best if self.metric in LOWER_IS_BETTER else value > best

    def record(self, model: torch.nn.Module, entry: dict) -> bool:
        """Add an evaluation (``entry``: step, elapsed_s and the validation metrics); True when it is the best so far."""
        self.history.append(entry)
        if self._better(entry[self.metric]):
            self.best = {k: v for k, v in entry.items() if k not in ("epoch", "loss", "auc")}
            self.best_state = trainable_state(model)
            self.stale = 0
            return True
        self.stale += 1
        return False
