"""onnxruntime-genai's generate loop (``og.Generator``) on a model its builder made from the merged folder.

One ``og.Generator`` per request (the library's own KV cache, GroupQueryAttention graph and search), its
steps run by the request's handler thread; concurrent requests are concurrent generators sharing one
``og.Model`` and the cores. onnxruntime-genai's continuous-batching ``Engine`` needs a paged-attention model,
which its builder makes only for CUDA (fp16/bf16) or WebGPU, so it is not used on CPU. The prompt is rendered
with the model's chat template (``export.chat``) and encoded, and tokens are decoded, with ``tokenizers``
from the folder's ``tokenizer.json``, as the decode loop does: the same prompt ids as every other path.
(onnxruntime-genai 0.18's own tokenizer maps this tokenizer's newline to id -1.) ``ignore_eos`` is
``min_length = prompt + max_tokens``; the intra-op thread count is set with a config overlay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from export.chat import ChatTemplate
from export.contract import GENERATIVE
from export.errors import InputError
from serving.llm_peers.engine import check_room, finish_reason
from serving.llm_peers.openai_api import ChatRequest

GENAI_CONFIG = "genai_config.json"
"""onnxruntime-genai's model config, written by its builder."""


class OrtGenaiGeneration:
    """One ``og.Generator``, stepped as the iteration asks for text."""

    def __init__(self, engine: OrtGenaiEngine, request: ChatRequest):
        self.engine, self.request = engine, request
        prompt = engine.template.render(request.messages, "messages")
        self.ids = engine.tokenizer.encode(prompt, add_special_tokens=False).ids
        self.prompt_tokens = len(self.ids)
        check_room(self.prompt_tokens, request, engine.context)
        self.completion_tokens, self.finish_reason = 0, ""

    def __iter__(self) -> Iterator[str]:
        og, request = self.engine.og, self.request
        end = self.prompt_tokens + request.max_tokens
        options: dict = {"max_length": end, "do_sample": request.temperature > 0}
        if request.temperature > 0:
            options.update(temperature=request.temperature, top_p=request.top_p)
        if request.ignore_eos:
            options["min_length"] = end
        params = og.GeneratorParams(self.engine.model)
        params.set_search_options(**options)
        generator = og.Generator(self.engine.model, params)
        generator.append_tokens(np.asarray([self.ids], dtype=np.int32))
        decode, token = DecodeStream(skip_special_tokens=True), None
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            self.completion_tokens += 1
            text = decode.step(self.engine.tokenizer, token)
            if text:
                yield text
        self.finish_reason = finish_reason(token, self.engine.eos, request)


class OrtGenaiEngine:
    """An onnxruntime-genai model folder (``genai_config.json``, ``model.onnx``, tokenizer files)."""

    def __init__(self, model_dir: str | Path, threads: int):
        import onnxruntime_genai as og

        model_dir = Path(model_dir)
        if not (model_dir / GENAI_CONFIG).is_file():
            raise InputError(f"{model_dir} has no {GENAI_CONFIG}: not an onnxruntime-genai model folder "
                             "(build one with python -m serving.llm_peers.ortgenai_build)")
        settings = json.loads((model_dir / GENAI_CONFIG).read_text())["model"]
        config = og.Config(str(model_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.og, self.model = og, og.Model(config)
        self.tokenizer = Tokenizer.from_file(str(model_dir / GENERATIVE.tokenizer_file))
        template = ChatTemplate.from_folder(model_dir)
        if template is None:
            raise InputError(f"{model_dir} has no chat template ({GENERATIVE.chat_template_file} or "
                             f"{GENERATIVE.tokenizer_config_file}'s chat_template)")
        self.template = template
        eos = settings["eos_token_id"]
        self.eos = frozenset(eos if isinstance(eos, list) else [eos])
        self.context = int(settings["context_length"])

    def start(self, request: ChatRequest) -> OrtGenaiGeneration:
        return OrtGenaiGeneration(self, request)
