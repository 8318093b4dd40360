"""Per-sequence decoding state of ``export.generate``: sampling parameters, token choice, and the text released.

- ``SamplingParams``: ``max_tokens``, ``temperature`` (0: greedy), ``top_p`` (nucleus), ``seed``, ``stop``
  strings, validated up front (every problem named, one ``GenerationError``).
- ``choose``: the next token from one row of logits: argmax, or a draw from the temperature-scaled
  softmax restricted to the smallest set of tokens whose probability reaches ``top_p``.
- ``TextRelease``: turns token ids into text as it becomes final: ``tokenizers``' ``DecodeStream`` holds a
  token back while its UTF-8 character is incomplete (invalid bytes come out as U+FFFD), and text that may be the start of a stop string
  is held until it is known not to be one; a stop string found ends the text before it (the stop string
  itself is never returned, as in the OpenAI API).

No torch and no ONNX Runtime here: numpy and ``tokenizers`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from export.errors import GenerationError
from tunestack.problems import is_number, raise_problems

FINISH_STOP = "stop"
"""Finish reason: the EOS token or a stop string."""
FINISH_LENGTH = "length"
"""Finish reason: ``max_tokens`` generated, or the model's context is full."""
MAX_STOP_STRINGS = 4
"""Stop strings a request may give (the OpenAI API's limit)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded."""

    max_tokens: int = 64
    """The most new tokens (fewer when the EOS token or a stop string comes first, or the context fills up)."""
    temperature: float = 0.0
    """0: greedy (argmax); > 0: sample from softmax(logits / temperature). At most 2."""
    top_p: float = 1.0
    """Nucleus sampling: draw only from the most likely tokens whose probabilities add up to top_p (0 < top_p <= 1)."""
    seed: int | None = None
    """Seed of this sequence's draws (None: fresh entropy); the same seed and prompt give the same text."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Strings that end the text (not included in it); at most ``MAX_STOP_STRINGS``, none empty."""
    ignore_eos: bool = False
    """Keep generating past the EOS token, to ``max_tokens`` (benchmarks: a fixed number of decode steps)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list | tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        raise_problems(sampling_problems(vars(self)), GenerationError, "sampling parameters")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem with ``SamplingParams`` field values (``stop`` already a tuple), each naming its field and
    value; ``[]`` when they are fine. ``SamplingParams`` raises them; a server adds them to a request's."""
    problems = []
    max_tokens, temperature, top_p = values["max_tokens"], values["temperature"], values["top_p"]
    seed, stop, ignore_eos = values["seed"], values["stop"], values["ignore_eos"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        problems.append(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not is_number(temperature) or not 0.0 <= temperature <= 2.0:
        problems.append(f"temperature must be a number in [0, 2] (0: greedy), got {temperature!r}")
    if not is_number(top_p) or not 0.0 < top_p <= 1.0:
        problems.append(f"top_p must be a number in (0, 1], got {top_p!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        problems.append(f"seed must be an integer >= 0 or null, got {seed!r}")
    if not isinstance(stop, tuple) or not all(isinstance(s, str) and s for s in stop):
        problems.append(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    elif len(stop) > MAX_STOP_STRINGS:
        problems.append(f"stop holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
    if not isinstance(ignore_eos, bool):
        problems.append(f"ignore_eos must be true or false, got {ignore_eos!r}")
    return problems


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from one row of raw logits [vocab]."""
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]  # the smallest set reaching top_p
        return int(keep[rng.choice(len(keep), p=probs[keep] / probs[keep].sum())])
    return int(rng.choice(len(probs), p=probs))


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (it may still become one)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextRelease:
    """Token ids in, final text out, one token at a time (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.stream = DecodeStream(skip_special_tokens=True)
        self.undecoded: list[int] = []
        """Tokens the stream holds (an incomplete UTF-8 character so far)."""
        self.pending = ""
        """Decoded text not yet released: it might be the start of a stop string."""
        self.text = ""
        """All text released so far."""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (the text it releases, whether a stop string ended the text)."""
        piece = self.stream.step(self.tokenizer, token_id)
        self.undecoded = [] if piece is not None else [*self.undecoded, token_id]
        self.pending += piece or ""
        if not self.stops:
            return self._release(len(self.pending)), False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self._release(min(hits))
            self.pending = ""
            return out, True
        return self._release(len(self.pending) - _held_suffix(self.pending, self.stops)), False

    def flush(self) -> str:
        """Release what was held back (the sequence ended without completing a stop string); bytes that never
        completed a character come out as U+FFFD, as ``Tokenizer.decode`` gives them."""
        if self.undecoded:
            self.pending += self.tokenizer.decode(self.undecoded, skip_special_tokens=True)
            self.undecoded = []
        return self._release(len(self.pending))

    def _release(self, n: int) -> str:
        out, self.pending = self.pending[:n], self.pending[n:]
        self.text += out
        return out
