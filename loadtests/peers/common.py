"""What the peer servers share: one published version folder loaded as tokenizer + ONNX Runtime session, and
the KServe v2 JSON subset Triton speaks (``TEXT`` in, ``PROBABILITIES`` and ``LABEL`` out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.contract import CONTRACT
from tunestack import names

READY_PATH = "/v2/health/ready"


@dataclass
class OrtModel:
    """Tokenizer (``tokenizers``, padded to the longest text) + ORT session + labels of one version folder."""

    tokenizer: object
    session: object
    input_names: list[str]
    labels: list[str]

    @classmethod
    def load(cls, version_dir: Path, threads: int) -> OrtModel:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        version_dir = Path(version_dir)
        settings = json.loads((version_dir / "serving.json").read_text())
        tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=int(settings["max_length"]))
        tokenizer.enable_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(version_dir / settings.get("onnx_file", CONTRACT.onnx_file)), options,
                                       providers=["CPUExecutionProvider"])
        labels = json.loads((version_dir / CONTRACT.label_map_file).read_text())["labels"]
        return cls(tokenizer, session, [i.name for i in session.get_inputs()], labels)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probabilities, one row per text."""
        enc = self.tokenizer.encode_batch(texts)
        features = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                    "token_type_ids": [e.type_ids for e in enc]}
        logits = self.session.run(None, {n: np.array(features[n], dtype=np.int64) for n in self.input_names})[0]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)


def request_texts(body: dict) -> list[str]:
    """The texts of a v2 request; ValueError naming what is wrong."""
    try:
        tensor = next(i for i in body["inputs"] if i["name"] == CONTRACT.input_text)
        texts = [str(t) for t in tensor["data"]]
    except (KeyError, TypeError, StopIteration):
        raise ValueError(f"expected a v2 request with a BYTES input {CONTRACT.input_text!r}") from None
    if not texts or not all(t.strip() for t in texts):
        raise ValueError("expected at least one non-empty text")
    return texts


def v2_answer(name: str, probs: np.ndarray, labels: list[str]) -> dict:
    predicted = [labels[i] for i in probs.argmax(axis=-1)]
    return {"model_name": name, "model_version": "1", "outputs": [
        {"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": list(probs.shape),
         "data": [float(p) for p in probs.ravel()]},
        {"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [len(predicted), 1], "data": predicted}]}


@dataclass
class PeerArgs:
    """A peer server: which version folder it serves and where it listens."""

    model_dir: Path
    """A published version folder (model.onnx, tokenizer.json, ...)."""
    port: int
    """Port to bind."""
    host: str = names.HOST
    """Address to bind."""
    threads: int = 2
    """ONNX Runtime intra-op threads."""
