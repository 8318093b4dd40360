"""Classify text with the served model over HTTP or gRPC (``tritonclient``), as a library or a CLI.

    from serving.client import TritonClassifier
    with TritonClassifier("127.0.0.1:8000") as clf:
        clf.predict(["a fine film"])   # [Prediction(text='a fine film', label='positive', probabilities={...})]

    python -m serving.client "a fine film" "a dull mess"
    python -m serving.client --protocol grpc --file reviews.txt --model sentiment --version 2

Tensor names come from ``export.contract.CONTRACT``; the label names from the model config's ``labels``
parameter, written by the exporter (``export.triton_config``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tritonclient.utils import InferenceServerException

from export.contract import CONTRACT
from export.triton_config import LABELS_PARAMETER
from serving.errors import InferenceError
from tunestack import names
from tunestack.cli import option, parse_dataclass
from tunestack.problems import raise_problems

DEFAULT_URLS = {"http": names.TRITON_HTTP_ADDRESS, "grpc": names.TRITON_GRPC_ADDRESS}
PROTOCOLS = tuple(DEFAULT_URLS)


def client_module(protocol: str):
    """``tritonclient.http`` or ``tritonclient.grpc``."""
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
    return module


def text_input(module, texts: Sequence[str | bytes]):
    """The TEXT input, shape ``[len(texts), 1]`` BYTES; str is UTF-8 encoded, bytes are sent as they are."""
    data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=np.object_)
    tensor = module.InferInput(CONTRACT.input_text, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: dict[str, float] = field(default_factory=dict)
    version: str = ""
    """The model version Triton answered with."""


class TritonClassifier:
    """A client for the served text classifier.

    Args:
        url: ``host:port`` without scheme; default 127.0.0.1:8000 (http) / 127.0.0.1:8001 (grpc).
        protocol: http or grpc.
        model: the Triton model name.
        version: a version number as a string; empty lets Triton choose (the newest ready version).
        timeout: seconds per request.
    """

    def __init__(self, url: str | None = None, protocol: str = "http", model: str = CONTRACT.default_model_name,
                 version: str = "", timeout: float = 30.0):
        self.module = client_module(protocol)
        self.protocol, self.model, self.version, self.timeout = protocol, model, str(version or ""), timeout
        self.url = url or DEFAULT_URLS[protocol]
        self.client = self.module.InferenceServerClient(self.url)
        self._labels: list[str] | None = None
        self._outputs = [self.module.InferRequestedOutput(CONTRACT.output_probabilities),
                         self.module.InferRequestedOutput(CONTRACT.output_label)]

    @property
    def labels(self) -> list[str]:
        """Label names (index -> name) from the model config's ``labels`` parameter."""
        if self._labels is None:
            try:
                if self.protocol == "grpc":
                    config = self.client.get_model_config(self.model, self.version, as_json=True)["config"]
                else:
                    config = self.client.get_model_config(self.model, self.version)
            except InferenceServerException as e:
                raise InferenceError(f"cannot read the config of model {self.model!r}: {e.message()}") from e
            value = config.get("parameters", {}).get(LABELS_PARAMETER, {}).get("string_value")
            if not value:
                raise InferenceError(f"model {self.model!r} has no {LABELS_PARAMETER!r} parameter in its config")
            self._labels = json.loads(value)
        return self._labels

    def infer(self, texts: Sequence[str | bytes]) -> tuple[np.ndarray, list[str], str]:
        """Probabilities ``[n, labels]``, label names and the version that answered; InferenceError on error."""
        try:
            result = self.client.infer(self.model, [text_input(self.module, texts)], model_version=self.version,
                                       outputs=self._outputs, **self._timeout_kwargs())
        except InferenceServerException as e:
            raise InferenceError(e.message()) from e
        probabilities = result.as_numpy(CONTRACT.output_probabilities)
        labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy(CONTRACT.output_label).reshape(-1)]
        response = result.get_response(as_json=True) if self.protocol == "grpc" else result.get_response()
        return probabilities, labels, str(response.get("model_version", ""))

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probabilities, labels, version = self.infer(texts)
        names = self.labels
        return [Prediction(text, label, {n: float(p) for n, p in zip(names, row, strict=True)}, version)
                for text, label, row in zip(texts, labels, probabilities, strict=True)]

    def _timeout_kwargs(self) -> dict:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ClientArgs:
    """Classify text with the served model over HTTP or gRPC."""

    texts: tuple[str, ...] = option((), positional=True)
    """Texts to classify (one request, a batch of all of them)."""
    file: str | None = None
    """Read more texts from this file, one per line ('-': stdin)."""
    protocol: str = "http"
    """Triton protocol: http or grpc."""
    url: str | None = None
    """host:port; default 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc."""
    model: str = CONTRACT.default_model_name
    """Triton model name."""
    version: str = ""
    """Model version (default: the newest ready one)."""
    batch_size: int = 32
    """Texts per request when reading --file."""
    json: bool = False
    """Print one JSON object per text."""

    def __post_init__(self) -> None:
        problems = [] if self.texts or self.file else ["give at least one text, or --file FILE"]
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.protocol not in PROTOCOLS:
            problems.append(f"unknown protocol {self.protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        raise_problems(problems, ValueError, "client arguments")

    def all_texts(self) -> list[str]:
        """The texts given, then those of ``--file`` (blank lines skipped)."""
        texts = list(self.texts)
        if self.file:
            stream = sys.stdin if self.file == "-" else open(self.file, encoding="utf-8")
            with stream:
                texts += [line.rstrip("\n") for line in stream if line.strip()]
        return texts


def unreachable(url: str | None, protocol: str, error: Exception) -> int:
    """A client command's one line when Triton cannot be reached (stderr, not a traceback); its exit code, 1."""
    print(f"error: cannot reach Triton at {url or DEFAULT_URLS[protocol]} ({protocol}): {error}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_dataclass(ClientArgs, argv, prog="python -m serving.client", description=__doc__.split("\n\n")[0])
    texts = args.all_texts()
    try:
        with TritonClassifier(args.url, args.protocol, args.model, args.version) as classifier:
            for start in range(0, len(texts), args.batch_size):
                for p in classifier.predict(texts[start:start + args.batch_size]):
                    if args.json:
                        print(json.dumps({"text": p.text, "label": p.label, "probabilities": p.probabilities,
                                          "model": args.model, "version": p.version}))
                    else:
                        probs = "  ".join(f"{n}={v:.4f}" for n, v in p.probabilities.items())
                        print(f"{p.label:<10} {probs}  v{p.version}  {p.text[:60]!r}")
    except InferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a connection refused etc.: one line, not a traceback
        return unreachable(args.url, args.protocol, e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
