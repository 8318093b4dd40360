"""The decode loop: an exported causal LM with its KV cache in ONNX Runtime, greedy or sampled, streamed.

The model is Optimum's ``text-generation-with-past`` export: one ``model.onnx`` taking ``input_ids``,
``attention_mask``, ``position_ids`` and ``past_key_values.N.key/value`` (empty at the start) and
returning ``logits`` and ``present.N.key/value``. A request is run as prefill (the whole prompt in one
call, the cache empty) and then one call per new token (that token alone, the cache grown by one).

Several sequences advance together in a ``Batch``: prompts are padded on the left to one length
(``attention_mask`` 0 on padding, positions counted from each prompt's first token, so a sequence gets
the same tokens as when run alone), every step runs one batched call, a finished sequence leaves the
batch (its rows are dropped from the cache) and a new one may join between steps (prefilled, its cache
merged in). ``Generator.stream`` is one sequence; ``stream_batch`` yields ``(index, Token)`` for a fixed
set; ``export.scheduler`` admits requests into a running batch. No torch: the Triton python model
(``export/triton_llm/model.py``) and the benchmarks import this.

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


def _pad_left(array: np.ndarray, axis: int, width: int) -> np.ndarray:
    """``array`` with ``width`` zeros added before its start along ``axis``."""
    if width == 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (width, 0)
    return np.pad(array, pad)


class Batch:
    """Sequences decoded together, one ONNX call per step; sequences join and leave between steps.

    Each row holds one sequence: its cache columns (left-padded to the batch's cache length, mask 0 on
    the padding), the position of its next token and the logits its next token is chosen from. A step is
    ``choose`` (every row picks a token from its logits) then ``advance`` (finished or dropped rows leave,
    the rest run one decode call with the tokens they chose). ``join`` prefills newcomers in one call
    (left-padded among themselves) and merges their cache into the batch's, padding the shorter side on
    the left, so a sequence gets the tokens it gets alone whenever it joins. Cache columns that no
    remaining row uses are cut off when rows leave.
    """

    def __init__(self, generator: Generator):
        self.generator = generator
        self.keys: list = []
        """The caller's key of each row (``stream_batch``: the prompt's index)."""
        self.seqs: list[_Sequence] = []
        self.past: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.next_positions = np.zeros((0, 1), dtype=np.int64)
        self.logits = np.zeros((0, 0), dtype=np.float32)
        self.chosen: list[int] = []
        self.dropped: set[int] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def join(self, keys: Sequence, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> None:
        """Prefill ``prompts`` (checked by ``Generator.check``) and add them as rows; their first token is
        chosen at the next ``choose``."""
        gen = self.generator
        budgets = [gen.check(p, sp, f"prompt {i}") for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]
        ids, mask, positions = _left_padded(prompts, gen.settings.pad_token_id)
        logits, past = gen.decoder.run(ids, mask, positions, gen.decoder.empty_past(len(prompts)))
        if self.keys:
            width = max(self.mask.shape[1], mask.shape[1])
            past = [np.concatenate([_pad_left(old, 2, width - old.shape[2]), _pad_left(new, 2, width - new.shape[2])])
                    for old, new in zip(self.past, past, strict=True)]
            mask = np.concatenate([_pad_left(self.mask, 1, width - self.mask.shape[1]),
                                   _pad_left(mask, 1, width - mask.shape[1])])
        self.past, self.mask = past, mask
        self.next_positions = np.concatenate([self.next_positions, positions[:, -1:] + 1])
        self.logits = np.concatenate([self.logits, logits[:, -1, :]]) if self.keys else logits[:, -1, :]
        self.keys += list(keys)
        self.seqs += [_Sequence(sp, b, gen.tokenizer, gen.eos) for sp, b in zip(params, budgets, strict=True)]

    def choose(self) -> list[tuple[object, Token]]:
        """Every row's next token, ``(key, Token)`` in row order (a finished sequence's token has its finish_reason)."""
        tokens = [(key, seq.step(self.logits[row])) for row, (key, seq) in enumerate(zip(self.keys, self.seqs, strict=True))]
        self.chosen = [token.id for _, token in tokens]
        return tokens

    def drop(self, keys: Sequence) -> None:
        """Take these rows out at the next ``advance`` (a cancelled stream), whether finished or not."""
        self.dropped.update(row for row, key in enumerate(self.keys) if key in keys)

    def advance(self) -> None:
        """Finished and dropped rows leave; the others run one decode call on the tokens ``choose`` picked."""
        rows = [r for r, seq in enumerate(self.seqs) if not seq.finished and r not in self.dropped]
        self.dropped = set()
        if len(rows) < len(self.keys):
            self._keep(rows)
        if not rows:
            return
        mask = np.concatenate([self.mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        chosen = np.asarray(self.chosen, dtype=np.int64)[:, None]
        logits, self.past = self.generator.decoder.run(chosen, mask, self.next_positions, self.past)
        self.mask, self.logits = mask, logits[:, -1, :]
        self.next_positions = self.next_positions + 1

    def _keep(self, rows: list[int]) -> None:
        self.keys = [self.keys[r] for r in rows]
        self.seqs = [self.seqs[r] for r in rows]
        self.chosen = [self.chosen[r] for r in rows]
        self.mask, self.next_positions, self.logits = self.mask[rows], self.next_positions[rows], self.logits[rows]
        used = np.flatnonzero(self.mask.any(axis=0))
        start = int(used[0]) if used.size else self.mask.shape[1]  # columns before it are padding in every row
        self.mask = np.ascontiguousarray(self.mask[:, start:])
        self.past = [np.ascontiguousarray(p[rows][:, :, start:]) for p in self.past]


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

    def check(self, prompt: Sequence[int], params: SamplingParams, name: str = "the prompt") -> int:
        """The most tokens ``prompt`` may get (``max_tokens``, or fewer where the context ends); GenerationError
        naming the prompt (``name``) when it is empty or fills the context."""
        room = self.settings.max_context - len(prompt)
        if not prompt:
            raise GenerationError(f"{name} is empty; expected at least one token")
        if room < 1:
            raise GenerationError(f"{name} has {len(prompt)} tokens; the model's context holds "
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
        batch = Batch(self)
        batch.join(range(len(prompts)), prompts, params)
        while batch:
            yield from batch.choose()
            batch.advance()

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
