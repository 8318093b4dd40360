"""The baseline a user would otherwise write: a small Starlette service running a transformers ``pipeline``.

It serves the merged torch model (``runs/NAME/merged``) in one uvicorn process, one request at a time
per thread of Starlette's thread pool, no batching, no ONNX -- the obvious first version. It speaks the
same KServe v2 JSON subset as Triton (``POST /v2/models/NAME/infer`` with a BYTES ``TEXT`` input,
``PROBABILITIES`` and ``LABEL`` outputs), so the same locustfile (``--target triton --model NAME``) and
the same texts measure it side by side with Triton and the router.

    python -m loadtests baseline --model runs/demo/merged --port 8090
"""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from export.contract import CONTRACT

log = logging.getLogger(__name__)


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(model_dir: Path, name: str = "baseline", threads: int = 2) -> Starlette:
    """The Starlette app: loads the pipeline once, answers v2 infer requests with it."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device=-1, top_k=None)
    labels = [classifier.model.config.id2label[i] for i in range(classifier.model.config.num_labels)]

    def predict(texts: list[str]) -> tuple[list[list[float]], list[str]]:
        with torch.inference_mode():
            answers = classifier(texts, truncation=True)
        probs = [[next(a["score"] for a in answer if a["label"] == label) for label in labels] for answer in answers]
        return probs, [labels[max(range(len(p)), key=p.__getitem__)] for p in probs]

    async def infer(request: Request) -> JSONResponse:
        if request.path_params["model"] != name:
            return error(f"unknown model {request.path_params['model']!r}; this service serves {name!r}", 404)
        try:
            body = await request.json()
            tensor = next(i for i in body["inputs"] if i["name"] == CONTRACT.input_text)
            texts = [str(t) for t in tensor["data"]]
        except (ValueError, KeyError, TypeError, StopIteration):
            return error(f"expected a v2 request with a BYTES input {CONTRACT.input_text!r}")
        if not texts or not all(t.strip() for t in texts):
            return error("expected at least one non-empty text")
        probs, predicted = await run_in_threadpool(predict, texts)
        return JSONResponse({
            "model_name": name, "model_version": "1", "id": body.get("id", ""),
            "outputs": [
                {"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": [len(texts), len(labels)],
                 "data": [p for row in probs for p in row]},
                {"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [len(texts), 1], "data": predicted},
            ]})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]),
                             Route("/v2/health/ready", ready), Route("/v2/health/live", ready)])


def serve(model_dir: Path, host: str = "127.0.0.1", port: int = 8090, threads: int = 2, name: str = "baseline") -> None:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no transformers model (no config.json); expected runs/NAME/merged")
    uvicorn.run(build_app(model_dir, name, threads), host=host, port=port, log_level="warning")
