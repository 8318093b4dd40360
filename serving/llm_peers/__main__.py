"""``python -m serving.llm_peers``: serve a causal LM with one peer engine behind the OpenAI chat completions API."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from export.contract import GENERATIVE
from serving.llm_peers import ENGINES
from tunestack.cli import parse_dataclass
from tunestack.names import HOST
from tunestack.problems import raise_problems


@dataclass
class PeerArgs:
    """Serve a causal LM with one peer engine behind the OpenAI chat completions API (a benchmark peer)."""

    engine: str = "transformers"
    """transformers (generate + TextIteratorStreamer on a Hugging Face folder) or ortgenai (onnxruntime-genai
    on a folder its builder made)."""
    model_dir: Path = Path("runs/llm/merged")
    """The folder the engine loads."""
    model: str = GENERATIVE.default_model_name
    """The model name requests must give."""
    host: str = HOST
    """The address to listen on."""
    port: int = 8090
    """The port to listen on."""
    threads: int = 2
    """Intra-op threads of the engine (torch or ONNX Runtime)."""

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        problems = []
        if self.engine not in ENGINES:
            problems.append(f"unknown engine {self.engine!r}; expected one of: {', '.join(ENGINES)}")
        if not self.model_dir.is_dir():
            problems.append(f"model_dir {self.model_dir} is not a folder")
        if self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        raise_problems(problems, ValueError, "peer arguments")


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from serving.llm_peers.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_dataclass(PeerArgs, argv, "python -m serving.llm_peers", __doc__.split("\n\n")[0])
    if args.engine == "transformers":
        from serving.llm_peers.hf_engine import TransformersEngine as EngineClass
    else:
        from serving.llm_peers.ortgenai_engine import OrtGenaiEngine as EngineClass
    engine = EngineClass(args.model_dir, args.threads)
    uvicorn.run(create_app(engine, args.model), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
