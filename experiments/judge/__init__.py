"""The anytime-valid judge: confidence sequences and verdicts for A/B experiments, readable at any look.

* ``judge(control, treatment, config)`` -> ``Judgement``: from two ``ArmStats`` snapshots (``judge.py``);
* ``Judge``: feed samples per arm as they arrive, ``report()`` at any moment;
* ``JudgeConfig``: alpha, margins and minimum samples (``config.py``);
* ``boundaries.py``: the time-uniform boundaries, with the papers they come from;
* ``simulate.py``: the proof by simulation (``python -m serving judge simulate``).
"""

from experiments.judge.config import METRICS, JudgeConfig, Margins, MinSamples
from experiments.judge.judge import Judge, Judgement, MetricResult, judge
from experiments.judge.snapshot import ArmAccumulator, ArmStats, Moments

__all__ = ["METRICS", "ArmAccumulator", "ArmStats", "Judge", "JudgeConfig", "Judgement", "Margins", "MetricResult",
           "MinSamples", "Moments", "judge"]
