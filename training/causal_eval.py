"""A torch causal LM on prompts with references: batches for the loss, greedy generation, the scores.

Batches are left-padded with explicit position ids (each sequence counts from 0 at its first real
token), so a prompt is encoded the same way alone, in a batch, in training and at generation; and only
the last positions' logits are computed (``logits_to_keep``), which skips most of the vocabulary
projection (a sixth of SmolLM2's compute) for prompt tokens that have no target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.gen_metrics import perplexity, text_scores

IGNORE = -100
"""The label of a position with no target (prompt and padding)."""


@dataclass
class LmBatch:
    """Left-padded prompt + target ids; ``labels`` [batch, kept] aligns with the last ``kept`` positions' next tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> LmBatch:
        return LmBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.labels)))


def lm_batch(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> LmBatch:
    """Tokenize each prompt and target apart (as at generation time), join them and pad on the left."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    rows = [p + t for p, t in zip(p_ids, t_ids, strict=True)]
    width, kept = max(map(len, rows)), max(map(len, t_ids))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), kept), IGNORE, dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, t_ids, strict=True)):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
        labels[i, kept - len(target):] = torch.tensor(target)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return LmBatch(ids, mask, positions, labels)


def lm_logits(model, batch: LmBatch) -> torch.Tensor:
    """Logits [batch, kept, vocab] of the positions that predict ``batch.labels`` (fp32)."""
    kept = batch.labels.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=kept + 1, use_cache=False)
    return out.logits[:, :-1].float()


def lm_loss(model, batch: LmBatch, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the targets (mean per target token, or their sum)."""
    logits = lm_logits(model, batch)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


@torch.inference_mode()
def reference_nll(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int) -> tuple[float, int]:
    """(sum of the targets' negative log-likelihood, target tokens) under ``model``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch = lm_batch(tokenizer, prompts[start:start + batch_size], targets[start:start + batch_size]).to(device)
        total += float(lm_loss(model, batch, reduction="sum"))
        tokens += int((batch.labels != IGNORE).sum())
    model.train(was_training)
    return total, tokens


@dataclass
class Generated:
    """Greedy continuations: the new token ids per prompt, their text, and (if asked) each step's logits."""

    token_ids: list[list[int]]
    texts: list[str]
    logits: list[np.ndarray] | None = None
    """Per prompt: [steps, vocab] raw logits, step i the distribution token i was chosen from."""


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                    keep_logits: bool = False) -> Generated:
    """Greedy decoding with transformers' ``generate`` (KV cache, left padding), stopping at the EOS token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    result = Generated([], [], [] if keep_logits else None)
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), add_special_tokens=False, padding=True,
                        return_token_type_ids=False, return_tensors="pt").to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                             output_logits=keep_logits, temperature=None, top_p=None, top_k=None)
        new = out.sequences[:, enc["input_ids"].shape[1]:].tolist()
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        for row, ids in enumerate(new):
            end = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), len(ids))  # keep the EOS, drop padding
            result.token_ids.append(ids[:end])
            result.texts.append(tokenizer.decode(ids[:end], skip_special_tokens=True))
            if keep_logits:
                result.logits.append(torch.stack([step[row] for step in out.logits[:end]]).float().cpu().numpy())
    model.train(was_training)
    return result


def score(model, tokenizer, prompts: Sequence[str], references: Sequence[str], max_new_tokens: int,
          batch_size: int) -> dict:
    """Greedy outputs scored against the references (``text_scores``) plus the references' perplexity."""
    generated = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    eos = tokenizer.eos_token
    nll, tokens = reference_nll(model, tokenizer, prompts, [r + eos for r in references], batch_size)
    return {**text_scores(generated.texts, references), "perplexity": perplexity(nll, tokens),
            "samples": [{"output": text, "reference": ref} for text, ref in zip(generated.texts[:5], references[:5], strict=True)]}
