"""Drift on live traffic: each arm's inputs and predictions against its version's training reference."""
