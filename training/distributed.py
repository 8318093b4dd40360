"""Data-parallel training across processes started by ``torchrun`` (gloo on CPU, NCCL on GPUs).

``Dist.from_env`` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK once, in ``__main__``; with one
process every collective below is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank 0 of 1 unless started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Dist:
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        if self.enabled and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.barrier()
            torch_dist.destroy_process_group()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch_dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any (e.g. one rank ran out of time)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, items: list) -> list:
        """Concatenate every process's list, in rank order."""
        if not self.enabled:
            return items
        out: list = [None] * self.world_size
        torch_dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)
