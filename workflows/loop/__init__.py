"""The retrain loop: production feedback retrains the model, and the judge decides whether the new one ships.

``config.py`` (the experiment file's ``loop:`` section), ``dataset.py`` (feedback joined to kept inputs -> a data
set), ``gate.py`` (the offline gate), ``cycle.py`` (one cycle's recorded, resumable steps), ``run.py`` (the
lease, the triggers, ``python -m workflows retrain [--watch]``). Docs: docs/loop.md.
"""
