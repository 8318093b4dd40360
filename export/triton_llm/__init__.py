"""The served causal LM: a decoupled Triton python model (``model.py``), copied into each published version."""
