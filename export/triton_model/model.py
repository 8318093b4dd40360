"""Triton python-backend model: raw text in, label probabilities out.

``export.publish`` copies this file into every published version folder, next to the ONNX file, the
tokenizer files, ``label_map.json`` and ``serving.json`` (``{"max_length", "onnx_file"}``), so each
version is self-contained. It needs numpy, tokenizers and onnxruntime only, and reads every tensor name
from the model config Triton hands it (written by ``export.triton_config`` from ``export.contract``).

The ``role`` parameter in ``config.pbtxt`` picks what an instance does:

- ``classify`` (the default python layout): TEXT -> tokenize -> ONNX Runtime -> PROBABILITIES, LABEL;
- ``tokenize`` (first step of the onnxruntime-backend ensemble): TEXT -> the ONNX model's int64 inputs;
- ``postprocess`` (last step of that ensemble): logits -> PROBABILITIES, LABEL.

Bad input (an empty text, bytes that are not UTF-8, a tensor that cannot be read) fails that request
only, with ``pb_utils.TritonError(message, TritonError.INVALID_ARG)``, which Triton (2.51 included)
answers as HTTP 400 / gRPC INVALID_ARGUMENT; the other requests of the batch are answered and the
instance keeps running. Only a failed forward pass is INTERNAL (500). A text longer than the trained
``max_length`` tokens is truncated, as in training.
Outside Triton (tests, ``serving.bench``) ``TextClassifier`` runs the same code in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # only importable inside Triton's python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported in-process: TextClassifier and the helpers still work
    pb_utils = None

SETTINGS_FILE = "serving.json"
LABEL_MAP_FILE = "label_map.json"
SPINNING_PARAMETER = "intra_op_spinning"
"""Config parameter: "1" lets ONNX Runtime's intra-op threads busy-wait (lower latency, more CPU)."""


class RequestError(ValueError):
    """The caller's input is invalid; it becomes that request's error, never the batch's."""


def decode_texts(values: np.ndarray, name: str = "TEXT") -> list[str]:
    """BYTES tensor elements -> str, or RequestError naming the first bad element."""
    texts = []
    for i, value in enumerate(np.asarray(values, dtype=object).reshape(-1)):
        if isinstance(value, str):
            text = value
        else:
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"{name}[{i}] is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                   "expected UTF-8 encoded text") from None
        if not text.strip():
            raise RequestError(f"{name}[{i}] is an empty string; expected non-empty text")
        texts.append(text)
    if not texts:
        raise RequestError(f"{name} holds no elements; expected at least one text")
    return texts


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


MAX_PADDING = 0.25
"""Length buckets: a bucket's padded tokens may exceed its real tokens by at most this fraction."""


def length_buckets(lengths: list[int], max_padding: float | None = MAX_PADDING) -> list[list[int]]:
    """Indices of ``lengths`` grouped into buckets of similar length, shortest first.

    Sorted by length, a bucket takes the next (longer) sequence while padding every member to it keeps
    the padded tokens within ``(1 + max_padding)`` x the real ones, so a batch costs about what its
    texts cost one by one, less the per-call overhead. ``None``: one bucket (pad to the longest).
    """
    if max_padding is None:
        return [list(range(len(lengths)))] if lengths else []
    buckets: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[index]
        if buckets and (len(buckets[-1]) + 1) * length <= (1.0 + max_padding) * (real + length):
            buckets[-1].append(index)
            real += length
        else:
            buckets.append([index])
            real = length
    return buckets


class Tokenizer:
    """The training tokenizer (``tokenizer.json``, run by ``tokenizers`` directly), truncating to the
    trained max length; padding is done per bucket by ``pad``."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        self.tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        pad_token = "[PAD]"
        config_file = folder / "tokenizer_config.json"
        if config_file.exists():
            pad_token = json.loads(config_file.read_text()).get("pad_token") or pad_token
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.pad_id = 0 if pad_id is None else pad_id
        self.tokenizer.enable_truncation(max_length=int(max_length))
        self.tokenizer.no_padding()

    def encode(self, texts: list[str]) -> list:
        """Unpadded encodings (``tokenizers.Encoding``), one per text."""
        return self.tokenizer.encode_batch(texts)

    def pad(self, encodings: list) -> dict[str, np.ndarray]:
        """The model inputs of ``encodings``, right-padded to the longest of them."""
        width = max(len(e.ids) for e in encodings)
        features = {"input_ids": np.full((len(encodings), width), self.pad_id, dtype=np.int64),
                    "attention_mask": np.zeros((len(encodings), width), dtype=np.int64),
                    "token_type_ids": np.zeros((len(encodings), width), dtype=np.int64)}
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            features["input_ids"][row, :n] = encoding.ids
            features["attention_mask"][row, :n] = encoding.attention_mask
            features["token_type_ids"][row, :n] = encoding.type_ids
        return features

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.pad(self.encode(texts))


def read_settings(folder: Path) -> tuple[dict, list[str]]:
    folder = Path(folder)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    labels = json.loads((folder / LABEL_MAP_FILE).read_text())["labels"]
    return settings, [str(label) for label in labels]


class TextClassifier:
    """Tokenizer + ONNX Runtime + softmax over one published version folder (in-process).

    A batch is ordered by length and run in length buckets (``length_buckets``), so padding never
    makes a batch slower per text than its texts one by one; answers come back in request order.
    """

    def __init__(self, folder: Path, intra_op_threads: int = 1, max_padding: float | None = MAX_PADDING,
                 spinning: bool = False):
        import onnxruntime as ort

        folder = Path(folder)
        self.settings, self.labels = read_settings(folder)
        self.tokenizer = Tokenizer(folder, self.settings["max_length"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
        # by default no busy-waiting: the cores are shared with the other versions' instances, the router and
        # often the load generator (make demo, fp32 arm: P50 27 -> 11 ms, P99 190 -> 29 ms). ``spinning``
        # (config parameter intra_op_spinning, a `make tune` dimension) trades CPU for latency: the pool's
        # threads busy-wait between and after runs (MiniLM int8, batch 1, 2 threads, one request every 10 ms:
        # P50 5.4 -> 3.5 ms for ~3x the CPU per request)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(folder / self.settings["onnx_file"]), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.max_padding = max_padding

    def logits(self, texts: list[str]) -> np.ndarray:
        """Logits ``[len(texts), len(labels)]`` in the order of ``texts``, computed bucket by bucket."""
        encodings = self.tokenizer.encode(texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for bucket in length_buckets([len(e.ids) for e in encodings], self.max_padding):
            features = self.tokenizer.pad([encodings[i] for i in bucket])
            out[bucket] = self.session.run([self.output_name], {n: features[n] for n in self.input_names})[0]
        return out

    def predict(self, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """Probabilities ``[len(texts), len(labels)]`` and the predicted label names."""
        probabilities = softmax(self.logits(texts))
        return probabilities, [self.labels[i] for i in probabilities.argmax(axis=-1)]


class TritonPythonModel:
    """One Triton model instance; ``role`` (a config parameter) picks classify / tokenize / postprocess."""

    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        self.role = params.get("role", "classify")
        folder = Path(args["model_repository"]) / str(args["model_version"])
        if not (folder / SETTINGS_FILE).exists():
            folder = Path(__file__).resolve().parent
        self.input_names = [i["name"] for i in self.config["input"]]
        self.outputs = {o["name"]: o for o in self.config["output"]}
        threads = int(params.get("intra_op_threads", "1"))
        if self.role == "classify":
            self.classifier = TextClassifier(folder, threads, spinning=params.get(SPINNING_PARAMETER, "0") == "1")
            self.labels = self.classifier.labels
        elif self.role == "tokenize":
            settings, _ = read_settings(folder)
            self.tokenizer = Tokenizer(folder, settings["max_length"])
        elif self.role == "postprocess":
            _, self.labels = read_settings(folder)
        else:
            raise ValueError(f"unknown role {self.role!r}; expected classify, tokenize or postprocess")
        if self.role != "tokenize":  # the FP32 output holds probabilities, the BYTES one the label name
            by_type = {o["data_type"]: name for name, o in self.outputs.items()}
            self.probabilities_name, self.label_name = by_type["TYPE_FP32"], by_type["TYPE_STRING"]

    def execute(self, requests: list) -> list:
        """One response per request, in order; a bad request gets an error, the others an answer."""
        responses: list = [None] * len(requests)
        batch: list[tuple[int, int, int]] = []  # (request index, start, stop) into `items`
        items: list = []
        for index, request in enumerate(requests):
            try:
                values = self._read_input(request)
            except RequestError as e:
                responses[index] = self._error(str(e))
                continue
            except Exception as e:  # noqa: BLE001 - an unreadable request fails alone, as the caller's error
                responses[index] = self._error(f"cannot read the request: {type(e).__name__}: {e}")
                continue
            batch.append((index, len(items), len(items) + len(values)))
            items.extend(values)
        if batch:
            try:
                outputs = self._run(items)
            except Exception as e:  # noqa: BLE001 - a failed forward pass fails these requests, not the instance
                for index, _, _ in batch:
                    responses[index] = self._error(f"inference failed: {type(e).__name__}: {e}", internal=True)
            else:
                for index, start, stop in batch:
                    tensors = [pb_utils.Tensor(name, value[start:stop]) for name, value in outputs.items()]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.classifier = self.tokenizer = None

    # -- helpers -------------------------------------------------------------------------------
    def _read_input(self, request) -> list:
        name = self.input_names[0]
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise RequestError(f"missing input {name!r}; expected one of {self.input_names}")
        array = tensor.as_numpy()
        if self.role == "postprocess":
            return list(np.asarray(array, dtype=np.float32))
        return decode_texts(array, name)

    def _run(self, items: list) -> dict[str, np.ndarray]:
        if self.role == "tokenize":
            features = self.tokenizer(items)
            return {name: features[name] for name in self.outputs}
        logits = self.classifier.logits(items) if self.role == "classify" else np.stack(items)
        probabilities = softmax(logits)
        labels = np.array([self.labels[i].encode() for i in probabilities.argmax(axis=-1)], dtype=np.object_)
        return {self.probabilities_name: probabilities, self.label_name: labels.reshape(-1, 1)}

    @staticmethod
    def _error(message: str, internal: bool = False):
        code_name = "INTERNAL" if internal else "INVALID_ARG"
        code = getattr(pb_utils.TritonError, code_name, None)
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
