"""The baseline a user would write: Hugging Face ``transformers`` ``generate`` with ``TextIteratorStreamer``.

One ``generate`` per request, run in its own thread while the request's handler reads the streamer (what
transformers' streaming docs show), on the merged fp32 model in eager PyTorch with ``threads`` intra-op
threads for the process. Concurrent requests are concurrent ``generate`` calls sharing the cores; nothing
batches them. The streamer releases text a word at a time (it holds decoded text back to the last space),
so a stream has fewer chunks than tokens: its token count comes from ``generate``'s output. ``ignore_eos``
is ``min_new_tokens = max_tokens`` (the EOS logit is masked until then).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from serving.llm_peers.engine import check_room, finish_reason
from serving.llm_peers.openai_api import ChatRequest


class TransformersGeneration:
    """One ``generate`` call streaming through a ``TextIteratorStreamer``."""

    def __init__(self, engine: TransformersEngine, request: ChatRequest):
        self.engine, self.request = engine, request
        encoded = engine.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                       return_tensors="pt", return_dict=True)
        self.inputs = {k: encoded[k] for k in ("input_ids", "attention_mask")}  # not token_type_ids: Llama has none
        self.prompt_tokens = int(self.inputs["input_ids"].shape[1])
        check_room(self.prompt_tokens, request, engine.context)
        self.completion_tokens, self.finish_reason = 0, ""
        self._output, self._error = None, None

    def _generate(self, kwargs: dict) -> None:
        try:
            self._output = self.engine.model.generate(**kwargs)
        except BaseException as e:  # noqa: BLE001 - raised in the reading thread
            self._error = e
            kwargs["streamer"].end()

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        request, tokenizer = self.request, self.engine.tokenizer
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(self.inputs, streamer=streamer, max_new_tokens=request.max_tokens,
                      do_sample=request.temperature > 0, pad_token_id=tokenizer.pad_token_id)
        if request.temperature > 0:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)  # greedy: no sampling settings to warn about
        if request.ignore_eos:
            kwargs["min_new_tokens"] = request.max_tokens
        thread = threading.Thread(target=self._generate, args=(kwargs,), daemon=True)
        thread.start()
        for text in streamer:
            if text:
                yield text
        thread.join()
        if self._error is not None:
            raise self._error
        new = self._output[0, self.prompt_tokens:].tolist()
        self.completion_tokens = len(new)
        self.finish_reason = finish_reason(new[-1] if new else None, self.engine.eos, request)


class TransformersEngine:
    """The merged Hugging Face folder in ``transformers`` (fp32, eager), ``threads`` torch intra-op threads."""

    def __init__(self, model_dir: str | Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = frozenset(eos if isinstance(eos, list) else [eos])
        self.context = int(self.model.config.max_position_embeddings)

    def start(self, request: ChatRequest) -> TransformersGeneration:
        return TransformersGeneration(self, request)
