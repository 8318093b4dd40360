"""The anytime-valid judge: confidence sequences and verdicts for A/B experiments, readable at any look.

* ``judge(table, config)`` -> ``Verdicts``: every treatment against the control and the sample-ratio
  check, from one ``UnitTable`` (``judge.py``);
* ``Judge``: feed samples per arm and unit as they arrive, ``report()`` at any moment (``accumulator.py``);
* ``UnitTable``: the data, one row per (arm, period, unit) (``units.py``);
* ``JudgeConfig``: alpha, margins and minimum samples (``config.py``);
* ``ratio.py``, ``srm.py``, ``boundaries.py``: the methods, with the papers they come from;
* ``simulate.py``: the proof by simulation (``python -m serving judge simulate``).
"""

from experiments.judge.accumulator import Judge
from experiments.judge.config import (
           ALL_METRICS,
           GENERATIVE_METRICS,
           METRICS,
           JudgeConfig,
           Margins,
           MinSamples,
)
from experiments.judge.judge import Judgement, MetricResult, SampleRatio, Verdicts, judge
from experiments.judge.snapshot import Moments
from experiments.judge.units import UnitTable

__all__ = ["ALL_METRICS", "GENERATIVE_METRICS", "METRICS", "Judge", "JudgeConfig", "Judgement", "Margins", "MetricResult", "MinSamples", "Moments",
           "SampleRatio", "UnitTable", "Verdicts", "judge"]
