"""The A/B router: KServe v2 HTTP in front of Triton, sticky traffic splitting, shadow traffic,
metrics and a statistical report. ``python -m serving router --experiment FILE`` runs it."""
