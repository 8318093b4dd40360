"""Where a run's files live: ``runs/NAME/`` and every path the stages read and write in it, each named once.

    layout = RunLayout.of("runs", "demo")        # RunLayout(Path("runs/demo"))
    layout.adapter          runs/demo/adapter/    training: adapter (or full model), label_map.json,
                                                  training_config.json, metrics.json, heldout.jsonl
    layout.merged           runs/demo/merged/     merge: a plain transformers model + the files carried over
    layout.onnx             runs/demo/onnx/       export: the ONNX variants, parity.json, export_config.json,
                                                  drift_reference.VARIANT.json (+ the carried files)
    layout.heldout          runs/demo/merged/heldout.jsonl: the held-out texts every later stage reads
    layout.parity           runs/demo/onnx/parity.json
    layout.drift_reference("int8")   runs/demo/onnx/drift_reference.int8.json

A stage handed a folder directly (``--adapter some/where``) joins the file names of ``tunestack.names`` to
it; ``RunLayout.of_folder(folder)`` is the run that folder belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tunestack import names


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run, ``runs/NAME/``."""

    root: Path
    """The run's folder, ``runs/NAME``."""

    ADAPTER: ClassVar[str] = "adapter"
    """Training's output folder."""
    MERGED: ClassVar[str] = "merged"
    """Merge's output folder."""
    ONNX: ClassVar[str] = "onnx"
    """Export's output folder."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunLayout:
        """``runs_dir/name``."""
        return cls(Path(runs_dir) / name)

    @classmethod
    def of_folder(cls, folder: str | Path) -> RunLayout:
        """The run a stage folder (``runs/NAME/adapter``, ``.../merged``, ``.../onnx``) belongs to."""
        return cls(Path(folder).parent)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def adapter(self) -> Path:
        return self.root / self.ADAPTER

    @property
    def merged(self) -> Path:
        return self.root / self.MERGED

    @property
    def onnx(self) -> Path:
        return self.root / self.ONNX

    @property
    def heldout(self) -> Path:
        """The held-out split as merge carries it forward (what parity, the benches and the load tests read)."""
        return self.merged / names.HELDOUT_FILE

    @property
    def training_config(self) -> Path:
        return self.adapter / names.TRAINING_CONFIG_FILE

    @property
    def metrics(self) -> Path:
        """Training's evaluation history and final test metrics."""
        return self.adapter / names.METRICS_FILE

    @property
    def parity(self) -> Path:
        return self.onnx / names.PARITY_FILE

    @property
    def export_config(self) -> Path:
        return self.onnx / names.EXPORT_CONFIG_FILE

    @staticmethod
    def drift_reference_file(variant: str) -> str:
        """``drift_reference.VARIANT.json``: one variant's drift reference inside ``onnx/``."""
        stem, _, suffix = names.DRIFT_REFERENCE_FILE.rpartition(".")
        return f"{stem}.{variant}.{suffix}"

    def drift_reference(self, variant: str) -> Path:
        return self.onnx / self.drift_reference_file(variant)
