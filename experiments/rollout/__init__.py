"""The progressive rollout: ramp a treatment through the experiment store on the anytime-valid judge's verdicts.

* ``config.py``: the experiment file's ``rollout:`` section (``RolloutConfig``) and the CLI (``RolloutArgs``);
* ``decision.py``: one look at the verdicts -> promote, roll back, hold or wait;
* ``controller.py``: the loop, its store revisions (the audit log) and how a restart resumes;
* ``rollout_report.py``: ``reports/rollout-TIMESTAMP/`` (Markdown, JSON, plots);
* ``cli.py``: ``python -m serving rollout``.
"""

from experiments.rollout.config import RolloutArgs, RolloutConfig, RolloutConfigError
from experiments.rollout.controller import Outcome, RolloutController

__all__ = ["Outcome", "RolloutArgs", "RolloutConfig", "RolloutConfigError", "RolloutController"]
