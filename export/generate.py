"""The decode loop: an exported causal LM with its KV cache in ONNX Runtime, greedy or sampled, streamed.

The model is Optimum's ``text-generation-with-past`` export: one ``model.onnx`` taking ``input_ids``,
``attention_mask``, ``position_ids`` and ``past_key_values.N.key/value`` (empty at the start) and
returning ``logits`` and ``present.N.key/value``. A request is run as prefill (the whole prompt in one
call, the cache empty) and then one call per new token (that token alone, the cache grown by one).

Several sequences advance together: prompts are padded on the left to one length (``attention_mask`` 0
on padding, positions counted from each prompt's first token, so a sequence gets the same tokens as when
run alone), every step runs one batched call, and a finished sequence leaves the batch (its rows are
dropped from the cache). ``Generator.stream`` is one sequence; ``stream_batch`` yields
``(index, Token)`` for several. No torch: the Triton python model and the benchmarks import this.

    gen = Generator.from_folder("model_repository/verdict-llm/1")
    for token in gen.stream(gen.encode(prompt), SamplingParams(max_tokens=32, stop=("\\n",))):
        print(token.text, end="", flush=True)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from export.contract import GENERATIVE
from export.decoding import FINISH_LENGTH, FINISH_STOP, SamplingParams, TextRelease, choose
from export.errors import GenerationError, InputError

GREEDY = SamplingParams()
"""The default: greedy decoding of up to ``SamplingParams.max_tokens`` tokens."""
PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
"""Optimum's names of the cache inputs (the outputs are ``present.N.key/value``)."""


@dataclass(frozen=True)
class Token:
    """One generated token and what it releases."""

    id: int
    text: str
    """The text this token makes final ('' while a character is incomplete or a stop string may be starting)."""
    logits: np.ndarray
    """The raw next-token logits [vocab] this token was chosen from."""
    finish_reason: str | None = None
    """None while the sequence goes on; ``stop`` (EOS token or a stop string) or ``length`` on its last token."""


@dataclass(frozen=True)
class Completion:
    """A whole generated sequence (``Generator.generate``)."""

    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass(frozen=True)
class GenerationSettings:
    """``generation.json`` beside the exported model: what the loop needs besides the graph and the tokenizer."""

    eos_token_ids: tuple[int, ...]
    """Tokens that end a sequence (finish reason ``stop``; their text is not returned)."""
    pad_token_id: int
    """Token id on the left padding of a batch (masked out; any id works)."""
    max_context: int
    """Positions the model was trained for: prompt + generated tokens never exceed it."""

    @classmethod
    def read(cls, path: Path) -> GenerationSettings:
        if not path.is_file():
            raise InputError(f"{path} does not exist; the export writes it beside the ONNX model")
        data = json.loads(path.read_text())
        return cls(tuple(int(i) for i in data["eos_token_ids"]), int(data["pad_token_id"]), int(data["max_context"]))

    def to_dict(self) -> dict:
        return {"eos_token_ids": list(self.eos_token_ids), "pad_token_id": self.pad_token_id, "max_context": self.max_context}


class OnnxDecoder:
    """One ONNX Runtime session of a decoder with past key/values; ``run`` is one prefill or decode step."""

    def __init__(self, onnx_file: Path, threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        past = sorted((int(m.group(1)), m.group(2) == "value", name) for name in inputs if (m := PAST.match(name)))
        missing = {"input_ids", "attention_mask", "position_ids"} - set(inputs)
        if not past or missing:
            raise InputError(f"{onnx_file} is not a decoder exported with its KV cache (text-generation-with-past): "
                             f"inputs {sorted(inputs)}")
        self.past_names = [name for _, _, name in past]
        self.present_names = [name.replace("past_key_values", "present") for name in self.past_names]
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past_length, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype) for _ in self.past_names]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits [batch, new, vocab] as float32, the cache with the new positions)."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                **dict(zip(self.past_names, past, strict=True))}
        logits, *present = self.session.run(["logits", *self.present_names], feed)
        return logits.astype(np.float32, copy=False), present


class _Sequence:
    """One sequence's sampling state and text."""

    def __init__(self, params: SamplingParams, budget: int, tokenizer: Tokenizer, eos: frozenset[int]):
        self.params, self.budget, self.eos = params, budget, eos
        self.rng = np.random.default_rng(params.seed)
        self.release = TextRelease(tokenizer, params.stop)
        self.ids: list[int] = []
        self.finished = False

    def step(self, logits: np.ndarray) -> Token:
        token_id = choose(logits, self.params, self.rng)
        self.ids.append(token_id)
        if token_id in self.eos and not self.params.ignore_eos:
            self.finished = True
            return Token(token_id, self.release.flush(), logits, FINISH_STOP)
        text, stopped = self.release.push(token_id)
        if stopped:
            self.finished = True
            return Token(token_id, text, logits, FINISH_STOP)
        if len(self.ids) >= self.budget:
            self.finished = True
            return Token(token_id, text + self.release.flush(), logits, FINISH_LENGTH)
        return Token(token_id, text, logits)


def _left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask, np.maximum(mask.cumsum(axis=1) - 1, 0)


class Generator:
    """Prompts in, tokens out, over one ``OnnxDecoder`` (see the module docstring)."""

    def __init__(self, decoder: OnnxDecoder, tokenizer: Tokenizer, settings: GenerationSettings):
        self.decoder, self.tokenizer, self.settings = decoder, tokenizer, settings
        self.eos = frozenset(settings.eos_token_ids)

    @classmethod
    def from_folder(cls, folder: Path, onnx_file: str = GENERATIVE.onnx_file, threads: int = 0) -> Generator:
        """The model ``folder/onnx_file`` with ``tokenizer.json`` and ``generation.json`` beside it."""
        folder = Path(folder)
        tokenizer_file = folder / GENERATIVE.tokenizer_file
        if not tokenizer_file.is_file():
            raise InputError(f"{tokenizer_file} does not exist (found: {sorted(p.name for p in folder.iterdir())})")
        return cls(OnnxDecoder(folder / onnx_file, threads), Tokenizer.from_file(str(tokenizer_file)),
                   GenerationSettings.read(folder / GENERATIVE.generation_file))

    def encode(self, prompt: str) -> list[int]:
        """Token ids of an already rendered prompt (special tokens such as ``<|im_start|>`` are recognised)."""
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def _budget(self, index: int, prompt: Sequence[int], params: SamplingParams) -> int:
        room = self.settings.max_context - len(prompt)
        if not prompt:
            raise GenerationError(f"prompt {index} is empty; expected at least one token")
        if room < 1:
            raise GenerationError(f"prompt {index} has {len(prompt)} tokens; the model's context holds "
                                  f"{self.settings.max_context}, leaving no room to generate")
        return min(params.max_tokens, room)

    def stream(self, prompt: Sequence[int], params: SamplingParams = GREEDY) -> Iterator[Token]:
        """One sequence's tokens as they are chosen."""
        for _, token in self.stream_batch([prompt], [params]):
            yield token

    def stream_batch(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> Iterator[tuple[int, Token]]:
        """Several sequences at once: ``(index into prompts, Token)`` in step order, each sequence ending on
        a token with a ``finish_reason``. Every prompt is checked before any work starts."""
        if len(params) != len(prompts) or not prompts:
            raise GenerationError(f"expected one SamplingParams per prompt, got {len(params)} for {len(prompts)} prompts")
        budgets = [self._budget(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]
        seqs = [_Sequence(sp, b, self.tokenizer, self.eos) for sp, b in zip(params, budgets, strict=True)]
        ids, mask, positions = _left_padded(prompts, self.settings.pad_token_id)
        logits, past = self.decoder.run(ids, mask, positions, self.decoder.empty_past(len(prompts)))
        active = list(range(len(prompts)))
        last = logits[:, -1, :]
        while True:
            chosen = []
            for row, index in enumerate(active):
                token = seqs[index].step(last[row])
                chosen.append(token.id)
                yield index, token
            rows = [row for row, index in enumerate(active) if not seqs[index].finished]
            if not rows:
                return
            if len(rows) < len(active):  # finished sequences leave the batch
                active = [active[r] for r in rows]
                past = [p[rows] for p in past]
                mask, positions = mask[rows], positions[rows]
                chosen = [chosen[r] for r in rows]
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits, past = self.decoder.run(np.asarray(chosen, dtype=np.int64)[:, None], mask, positions, past)
            last = logits[:, -1, :]

    def generate(self, prompt: Sequence[int], params: SamplingParams = GREEDY) -> Completion:
        """A whole sequence: the stream collected."""
        tokens = list(self.stream(prompt, params))
        return Completion("".join(t.text for t in tokens), [t.id for t in tokens], tokens[-1].finish_reason)

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Whole sequences for several prompts decoded together (the same parameters for each)."""
        collected: list[list[Token]] = [[] for _ in prompts]
        for index, token in self.stream_batch(prompts, [params] * len(prompts)):
            collected[index].append(token)
        return [Completion("".join(t.text for t in ts), [t.id for t in ts], ts[-1].finish_reason) for ts in collected]
