"""Workflows: what spans the stages (the demo, method comparison, serving-config tuning, the drills, the peer bench)."""
