"""Scores of generated text against references: ROUGE-L, BLEU-4, exact and first-word match, perplexity.

ROUGE-L is ``rouge-score``'s F-measure (Porter stemming) averaged over examples, BLEU-4 is ``sacrebleu``'s
corpus BLEU (its default 13a tokenisation), both on a 0-100 scale; perplexity is exp of the mean negative
log-likelihood per reference token (the EOS included), pooled over all references. No torch here: the
export gates score ONNX Runtime's outputs with the same functions training scores torch's with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure x 100."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100)."""
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,:;!?").lower() if words else ""


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-L, BLEU-4, exact match and first-word match (the verdict: Fresh or Rotten) of stripped outputs."""
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    pairs = list(zip(preds, refs, strict=True))
    return {
        "rouge_l": rouge_l(preds, refs),
        "bleu4": bleu4(preds, refs),
        "exact_match": float(np.mean([p == r for p, r in pairs])) if pairs else float("nan"),
        "first_word_match": float(np.mean([first_word(p) == first_word(r) for p, r in pairs])) if pairs else float("nan"),
        "examples": len(pairs),
    }


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` [n] under ``logits`` [n, vocab] (float64, stable log-softmax)."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return log_norm - logits[np.arange(len(targets)), targets]
