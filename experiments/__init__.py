"""Experiments: what an experiment is and what it concludes (spec, assignment, store, judge, rollout, report, drift)."""
