"""LitServe (the real package) on the same ONNX Runtime model, with its own dynamic batching: requests that
arrive within ``--batch-timeout`` seconds are run as one padded batch of up to ``--max-batch-size``.

    python -m loadtests.peers.litserve_ort --model-dir model_repository/sentiment/2 --port 8092
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import litserve as ls

from loadtests.peers.common import READY_PATH, OrtModel, PeerArgs, request_texts, v2_answer
from tunestack.cli import parse_dataclass

NAME = "litserve"


class SentimentAPI(ls.LitAPI):
    """decode (texts of one request) -> batch (a list of requests) -> one ORT run -> unbatch -> v2 answer."""

    def __init__(self, model_dir: Path, threads: int, **kwargs):
        super().__init__(api_path=f"/v2/models/{NAME}/infer", **kwargs)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device) -> None:
        self.model = OrtModel.load(self.model_dir, self.threads)

    def decode_request(self, request: dict) -> list[str]:
        try:
            return request_texts(request)
        except ValueError as e:
            from fastapi import HTTPException

            raise HTTPException(400, str(e)) from None

    def batch(self, inputs: list[list[str]]) -> list[list[str]]:
        return inputs

    def predict(self, x: list[list[str]]) -> list:
        flat = [text for texts in x for text in texts]
        probs = self.model.predict(flat)
        out, start = [], 0
        for texts in x:
            out.append(probs[start:start + len(texts)])
            start += len(texts)
        return out

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output) -> dict:
        return v2_answer(NAME, output, self.model.labels)


@dataclass
class LitServeArgs(PeerArgs):
    """LitServe on a published version folder, with its own dynamic batching."""

    max_batch_size: int = 16
    """LitServe max_batch_size."""
    batch_timeout: float = 0.002
    """LitServe batch_timeout (seconds)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(LitServeArgs, argv, "python -m loadtests.peers.litserve_ort", __doc__.split("\n\n")[0])
    api = SentimentAPI(args.model_dir, args.threads, max_batch_size=args.max_batch_size,
                       batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, healthcheck_path=READY_PATH)
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
