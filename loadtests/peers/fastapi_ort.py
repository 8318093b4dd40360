"""A FastAPI + ONNX Runtime server as a user would write it: one session (2 intra-op threads), one request at a
time per FastAPI worker thread, batch 1, no batching across requests.

    python -m loadtests.peers.fastapi_ort --model-dir model_repository/sentiment/2 --port 8091
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI, HTTPException

from loadtests.peers.common import READY_PATH, OrtModel, PeerArgs, request_texts, v2_answer
from tunestack.cli import parse_dataclass

NAME = "fastapi-ort"


def build_app(model: OrtModel) -> FastAPI:
    app = FastAPI()

    @app.get(READY_PATH)
    def ready() -> dict:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict) -> dict:  # a plain def: FastAPI runs it in its thread pool
        try:
            texts = request_texts(body)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return v2_answer(NAME, model.predict(texts), model.labels)

    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(PeerArgs, argv, "python -m loadtests.peers.fastapi_ort", __doc__.split("\n\n")[0])
    uvicorn.run(build_app(OrtModel.load(args.model_dir, args.threads)), host=args.host, port=args.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
