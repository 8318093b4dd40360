"""``python -m serving.llm_peers.ortgenai_build``: onnxruntime-genai's model builder on the merged Hugging Face
folder, for the ``ortgenai-*`` peers.

    python -m serving.llm_peers.ortgenai_build --merged-dir runs/llm/merged --out-dir runs/llm/ortgenai-fp32
    python -m serving.llm_peers.ortgenai_build --merged-dir runs/llm/merged --out-dir runs/llm/ortgenai-int4 --precision int4

It runs ``onnxruntime_genai.models.builder`` (``-e cpu``; precision fp32, int8 or int4: int8/int4 are its
weight-only ``MatMulNBits`` quantization, block 32, RTN, ``accuracy_level`` 4 on CPU) in this process,
writing the folder whole or not at all, with ``build_source.json`` (the merged weights' sha256, the
precision, the onnxruntime-genai version): a second run with the same source says "already built", one
over a folder built from something else is refused.

Two things bridge the builder of onnxruntime-genai 0.18 to the pinned transformers 4.57, both confined
to the builder's own process and input: the builder imports class names that only transformers 5 has
(``Qwen3_5ForConditionalGeneration``, ...; used for those models only), so placeholders stand in for the
missing ones; and it reads RoPE settings as transformers 5 writes them (a ``rope_type``), while 4.57 saves
``rope_scaling: null`` for plain RoPE, so the builder reads a copy of the folder (links to its files) whose
``config.json`` says ``{"rope_type": "default"}``: the same RoPE to transformers 4.57. The built model's
greedy tokens equal the decode loop's (``tests/test_llm_peers_e2e.py``).
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunestack.cli import parse_dataclass
from tunestack.files import atomic_folder, sha256
from tunestack.problems import raise_problems
from tunestack.procs import ChildProcess, log_tail

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "int4")
"""Builder precisions that run on the CPU execution provider."""
SOURCE_FILE = "build_source.json"
"""What a built folder was built from."""
WEIGHTS_FILE = "model.safetensors"
MISSING_IN_TRANSFORMERS_4 = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")
"""Names the builder imports from transformers that transformers 4.57 does not have."""


@dataclass
class BuildArgs:
    """onnxruntime-genai's model builder on the merged Hugging Face folder (CPU)."""

    merged_dir: Path = Path("runs/llm/merged")
    """The merged fp32 Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    out_dir: Path = Path("runs/llm/ortgenai-fp32")
    """The onnxruntime-genai model folder to write."""
    precision: str = "fp32"
    """fp32, int8 or int4 (weight-only quantization of the MatMuls)."""

    def __post_init__(self) -> None:
        self.merged_dir, self.out_dir = Path(self.merged_dir), Path(self.out_dir)
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")
        if not (self.merged_dir / WEIGHTS_FILE).is_file():
            problems.append(f"merged_dir {self.merged_dir} has no {WEIGHTS_FILE}")
        raise_problems(problems, ValueError, "onnxruntime-genai build arguments")


def build_source(merged_dir: Path, precision: str) -> dict:
    from importlib.metadata import version

    return {"merged_sha256": sha256(merged_dir / WEIGHTS_FILE), "precision": precision,
            "onnxruntime_genai": version("onnxruntime-genai")}


def builder_input(merged_dir: Path, folder: Path) -> Path:
    """``folder`` filled with links to ``merged_dir``'s files and a ``config.json`` the builder reads (see the
    module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in Path(merged_dir).iterdir():
        if path.is_file() and path.name != "config.json":
            (folder / path.name).symlink_to(path.resolve())
    config = json.loads((Path(merged_dir) / "config.json").read_text())
    if config.get("rope_scaling") is None:
        config["rope_scaling"] = {"rope_type": "default"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def run_builder(source: Path, out: Path, precision: str, cache: Path) -> None:
    """The builder, in this process, as ``python -m onnxruntime_genai.models.builder`` would run."""
    import transformers

    for name in MISSING_IN_TRANSFORMERS_4:
        if name not in dir(transformers):
            setattr(transformers, name, type(name, (), {}))
    argv = sys.argv
    sys.argv = ["builder", "-i", str(source), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache),
                "--extra_options", "hf_token=false"]
    try:
        runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv


def build(args: BuildArgs) -> Path:
    """Build ``args.out_dir`` (see the module docstring); the folder."""
    source = build_source(args.merged_dir, args.precision)
    if args.out_dir.exists():
        found = args.out_dir / SOURCE_FILE
        if found.is_file() and json.loads(found.read_text()) == source:
            log.info("%s is already built from %s (%s)", args.out_dir, args.merged_dir, args.precision)
            return args.out_dir
        raise FileExistsError(f"{args.out_dir} exists and was not built from {args.merged_dir} at {args.precision} "
                              f"({found.name}: {found.read_text().strip() if found.is_file() else 'missing'}); "
                              "remove it or choose another --out-dir")
    with tempfile.TemporaryDirectory(prefix="ortgenai-build-") as work, atomic_folder(args.out_dir) as out:
        run_builder(builder_input(args.merged_dir, Path(work) / "input"), out, args.precision, Path(work) / "cache")
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return args.out_dir


def build_in_child(merged_dir: Path, out_dir: Path, precision: str, log_path: Path, timeout: float = 1800) -> Path:
    """``build`` in a child process (the builder's stand-ins never touch the caller's transformers); its output
    goes to ``log_path``; ``RuntimeError`` with the log's tail if it fails."""
    child = ChildProcess(f"ortgenai-build-{precision}", [sys.executable, "-m", "serving.llm_peers.ortgenai_build",
                                                         "--merged-dir", str(merged_dir), "--out-dir", str(out_dir),
                                                         "--precision", precision], log_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}).start()
    try:
        code = child.process.wait(timeout=timeout)
    finally:
        child.stop()
    if code != 0:
        raise RuntimeError(f"onnxruntime-genai's builder failed ({precision}, exit {code}); log {log_path}:\n"
                           f"{log_tail(log_path)}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_dataclass(BuildArgs, argv, "python -m serving.llm_peers.ortgenai_build", __doc__.split("\n\n")[0])
    print(f"built: {build(args)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
