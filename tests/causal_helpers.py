"""A tiny random Llama (2 layers, hidden 32, 2 heads of 16) with a byte-level BPE tokenizer trained here and a ChatML chat
template: causal-lm training, merge, export and the decode loop run on it in seconds, with no download."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat template less its default system message."""
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tiny_llama(path: Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """Save a random 2-layer Llama and its tokenizer (BPE trained on the bundled reviews) in ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from training.causal_data import read_bundled_verdicts

    texts = [ex.user + " " + ex.reference for ex in read_bundled_verdicts()[:3000]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=SPECIAL[1], eos_token=SPECIAL[2],
                                        pad_token=SPECIAL[2], unk_token=SPECIAL[0])
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    # 2 heads of 16 (grouped into 1 KV head): onnxruntime-genai's CPU GroupQueryAttention takes head sizes that are
    # multiples of 16 only, and the generation bench's e2e test runs it on this model
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_causal_config(runs_dir: Path, model_dir: Path, **overrides) -> TrainConfig:
    values = dict(task="causal-lm", name="tiny-llm", runs_dir=runs_dir, model=model_dir, max_examples=400,
                  max_steps=30, eval_every=15, batch_size=16, generation_examples=12, max_new_tokens=12,
                  eval_max_examples=32, learning_rate=5e-3, seed=0)
    return TrainConfig(**(values | overrides))
