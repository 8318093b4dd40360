"""causal-lm training on a tiny random Llama: the data and prompts, the loss masking, the adapter, the scores."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from tests.causal_helpers import tiny_causal_config
from training.causal_data import load_gen_splits, read_gen_jsonl, render_prompt, title_of, verdict_example
from training.causal_eval import IGNORE, lm_batch, lm_logits
from training.causal_model import fix_tokenizer, load_causal_lm, load_causal_tokenizer
from training.config import TrainConfig
from training.errors import ConfigError
from training.gen_metrics import text_scores
from training.train import train


def test_verdict_task_builds_prompt_and_reference_from_the_corpus_row():
    ex = verdict_example(" A dull, long film. ", "mr_deeds", "negative")
    assert title_of("about_a_boy") == "About A Boy"
    assert ex.user == "Review of Mr Deeds: A dull, long film.\nGive a one-line verdict."
    assert ex.reference == "Rotten: the critic does not recommend Mr Deeds."
    assert verdict_example("Fun.", "up", "positive").reference == "Fresh: the critic recommends Up."


def test_config_defaults_follow_the_task():
    causal, classifier = TrainConfig(task="causal-lm"), TrainConfig()
    assert (causal.max_length, causal.early_stopping_metric, causal.eval_max_examples) == (128, "val_loss", 64)
    assert (classifier.max_length, classifier.early_stopping_metric, classifier.eval_max_examples) == (64, "accuracy", 512)
    with pytest.raises(ConfigError) as info:
        TrainConfig(task="causal", early_stopping_metric="accuracy", generation_examples=0)
    assert "unknown task 'causal'; expected one of: classification, causal-lm" in str(info.value)
    assert "generation_examples must be >= 1, got 0" in str(info.value)
    with pytest.raises(ConfigError, match="unknown early_stopping_metric 'accuracy'; expected one of: val_loss"):
        TrainConfig(task="causal-lm", early_stopping_metric="accuracy")


def test_splits_drop_what_exceeds_max_length_and_stay_disjoint(tiny_llama_dir, tmp_path):
    tokenizer = load_causal_tokenizer(tiny_llama_dir)
    cfg = tiny_causal_config(tmp_path, tiny_llama_dir, max_examples=300, max_length=100)
    splits = load_gen_splits(cfg, tokenizer)
    prompts = [set(ex.user for ex in s) for s in (splits.train, splits.validation, splits.test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    lengths = [len(tokenizer(render_prompt(tokenizer, ex) + ex.reference + tokenizer.eos_token,
                             add_special_tokens=False)["input_ids"]) for ex in splits.train]
    assert max(lengths) <= 100 and sum(map(len, (splits.train, splits.validation, splits.test))) < 300
    assert render_prompt(tokenizer, splits.test[0]).endswith("<|im_start|>assistant\n")


def test_loss_sees_only_reference_tokens_and_padding_changes_nothing(tiny_llama_dir):
    tokenizer = load_causal_tokenizer(tiny_llama_dir)
    model = load_causal_lm(tiny_llama_dir).eval()
    prompts, targets = ["short prompt", "a much longer prompt than the other one"], ["Fresh: yes<|im_end|>", "No<|im_end|>"]
    batch = lm_batch(tokenizer, prompts, targets)
    t_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    assert [[x for x in row if x != IGNORE] for row in batch.labels.tolist()] == t_ids
    assert batch.attention_mask[1].all() and not batch.attention_mask[0].all()  # left padding on the short one
    with torch.inference_mode():
        together = lm_logits(model, batch)
        alone = lm_logits(model, lm_batch(tokenizer, prompts[:1], targets[:1]))
    n = len(t_ids[0])
    assert torch.allclose(together[0, -n:], alone[0, -n:], atol=1e-5)


def test_adapter_folder_metrics_and_heldout(tiny_causal_adapter_dir, tiny_llama_dir):
    names = {p.name for p in tiny_causal_adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_config.json",
            "metrics.json", "heldout.jsonl"} <= names and "label_map.json" not in names
    saved = json.loads((tiny_causal_adapter_dir / "training_config.json").read_text())
    assert saved["task"] == "causal-lm" and saved["max_length"] == 128
    metrics = json.loads((tiny_causal_adapter_dir / "metrics.json").read_text())
    for split in ("test_before", "test_after"):
        scores = metrics[split]
        assert scores["examples"] == 12 and 0 <= scores["rouge_l"] <= 100 and scores["perplexity"] > 1
    assert metrics["steps"] == 30 and [h["step"] for h in metrics["history"]] == [15, 30]
    rows = read_gen_jsonl(tiny_causal_adapter_dir / "heldout.jsonl")
    assert len(rows) == 12 and rows[0]["prompt"].startswith("<|im_start|>system\nYou judge movie reviews.")
    model = PeftModel.from_pretrained(load_causal_lm(tiny_llama_dir), tiny_causal_adapter_dir)
    assert any("lora_" in k for k, _ in model.named_parameters())


def test_fine_tuning_lowers_the_references_perplexity(tmp_path, tiny_llama_dir):
    cfg = tiny_causal_config(tmp_path, tiny_llama_dir, method="full", learning_rate=3e-3, max_steps=40, eval_every=40)
    metrics = train(cfg).metrics
    before, after = metrics["test_before"]["perplexity"], metrics["test_after"]["perplexity"]
    assert after < 0.5 * before, (before, after)
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


def test_gguf_tokenizer_is_fixed_to_the_models_eos(tiny_llama_dir):
    tokenizer = load_causal_tokenizer(tiny_llama_dir)
    tokenizer.eos_token = "<|im_start|>"  # as transformers reads SmolLM2's GGUF metadata
    fix_tokenizer(tokenizer, 2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2


def test_text_scores_read_as_expected():
    refs = ["Fresh: the critic recommends Up.", "Rotten: the critic does not recommend Cats."]
    perfect = text_scores(refs, refs)
    assert perfect["rouge_l"] == pytest.approx(100) and perfect["bleu4"] == pytest.approx(100)
    assert perfect["exact_match"] == 1.0 and perfect["first_word_match"] == 1.0
    swapped = text_scores(["Rotten: the critic does not recommend Up.", "Fresh: the critic recommends Cats."], refs)
    assert swapped["first_word_match"] == 0.0 and 50 < swapped["rouge_l"] < 100 and swapped["exact_match"] == 0.0
    assert text_scores(["", "nothing alike"], refs)["rouge_l"] == 0.0
