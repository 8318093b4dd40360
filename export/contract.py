"""The served model's contract: tensor names, datatypes and file names, defined once.

The exporter writes ``config.pbtxt`` from this object, the python-backend ``model.py`` reads the
names back from the model config Triton hands it, and the clients (``serving.client``, the router,
the load tests) import the same object. Change a name here and every stage follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunestack import names


@dataclass(frozen=True)
class ModelContract:
    """Names shared by the exporter, the Triton model and every client."""

    input_text: str = "TEXT"
    """Raw UTF-8 text, one element per example (BYTES, shape [-1] with a batch dimension)."""
    output_probabilities: str = "PROBABILITIES"
    """Softmax over the labels (FP32, one value per label)."""
    output_label: str = "LABEL"
    """The predicted label's name (BYTES, one per example)."""
    onnx_logits: str = "logits"
    """The exported ONNX graph's output (Optimum's name for a sequence classifier's logits)."""
    onnx_file: str = "model.onnx"
    """The fp32 ONNX file inside ``runs/NAME/onnx/`` and inside each published version."""
    onnx_int8_file: str = "model.int8.onnx"
    """The dynamically quantized int8 ONNX file inside ``runs/NAME/onnx/``."""
    onnx_int8_static_file: str = "model.int8-static.onnx"
    """The statically quantized (calibrated QDQ) int8 ONNX file inside ``runs/NAME/onnx/``."""
    label_map_file: str = names.LABEL_MAP_FILE
    """``{"labels": [...]}``: index -> label name, written by training and carried forward."""
    parity_file: str = names.PARITY_FILE
    """The parity report written next to the ONNX files."""
    drift_reference_file: str = names.DRIFT_REFERENCE_FILE
    """Inside each published version: the held-out texts' features and that version's predictions on them,
    the training reference the router's drift monitor compares live traffic with (``experiments.drift.monitor``).
    In ``runs/NAME/onnx/`` one per variant: ``drift_reference.VARIANT.json``."""
    default_model_name: str = "sentiment"
    """The Triton model name used when none is given."""


CONTRACT = ModelContract()

VARIANT_FILES = {"fp32": CONTRACT.onnx_file, "int8": CONTRACT.onnx_int8_file,
                 "int8-static": CONTRACT.onnx_int8_static_file}
"""Export variant name -> ONNX file name inside ``runs/NAME/onnx/``."""


@dataclass(frozen=True)
class GenerativeContract:
    """Names of an exported causal LM: its files in ``runs/NAME/onnx/`` and in each published version folder,
    and the tensors of the served model (a decoupled Triton python model, ``export/triton_llm/model.py``).

    A version folder holds ``onnx_file`` (the variant's graph under one name), the tokenizer files, the
    generation settings, ``parity.json``, ``provenance.json``, the served ``model.py`` and the decode loop
    it runs (``runtime_dir``); ``export.generate.Generator.from_folder`` opens it. ``export.triton_config``
    writes ``config.pbtxt`` from the tensor names here, and ``serving.llm_client`` reads them back.
    """

    onnx_file: str = CONTRACT.onnx_file
    """The fp32 decoder with its KV cache (Optimum ``text-generation-with-past``); each version's model."""
    onnx_int8_file: str = CONTRACT.onnx_int8_file
    """The dynamically quantized int8 decoder inside ``runs/NAME/onnx/``."""
    tokenizer_file: str = "tokenizer.json"
    """The ``tokenizers`` file the decode loop encodes and decodes with (no BOS added)."""
    tokenizer_config_file: str = "tokenizer_config.json"
    """transformers' tokenizer settings; may hold the chat template."""
    special_tokens_file: str = "special_tokens_map.json"
    """The special tokens (``bos_token``, ``eos_token``, ...): variables of the chat template."""
    chat_template_file: str = "chat_template.jinja"
    """The chat template, where transformers saved it apart from ``tokenizer_config.json``."""
    generation_file: str = "generation.json"
    """``{"eos_token_ids", "pad_token_id", "max_context"}``: ``export.generate.GenerationSettings``."""
    runtime_dir: str = "runtime"
    """Inside each version: the decode loop's modules (``export/...``, ``tunestack/...``) that ``model.py`` imports."""
    default_model_name: str = "verdict-llm"
    """The model name a causal LM is published under when none is given."""

    input_text: str = "text_input"
    """The prompt as it is fed to the model (BYTES, one element; the name of Triton's generate extension)."""
    input_messages: str = "messages"
    """Chat messages as JSON text, ``[{"role", "content"}, ...]``, rendered with the chat template (BYTES, one
    element); a request gives this or ``input_text``."""
    input_stop: str = "stop"
    """Stop strings (BYTES, one element per string, optional)."""
    output_text: str = "text_output"
    """The text this response adds (BYTES, one element; '' while held back)."""
    output_completion_tokens: str = "completion_tokens"
    """Tokens generated so far (INT32): the last response's value is the completion's usage."""
    output_prompt_tokens: str = "prompt_tokens"
    """Tokens of the prompt (INT32)."""
    output_finish_reason: str = "finish_reason"
    """'' while the stream goes on; ``stop`` or ``length`` on its last response (BYTES)."""

    @property
    def tokenizer_files(self) -> tuple[str, ...]:
        """Published with the model: the tokenizer, its settings, special tokens and chat template."""
        return (self.tokenizer_file, self.tokenizer_config_file, self.special_tokens_file, self.chat_template_file)


GENERATIVE = GenerativeContract()

GENERATIVE_VARIANT_FILES = {"fp32": GENERATIVE.onnx_file, "int8": GENERATIVE.onnx_int8_file}
"""The variants a causal LM is exported as (static int8 is the classifier's only: its QDQ calibration
reader feeds encoder inputs)."""

DECODE_BATCHING = ("continuous", "none")
"""How the served causal LM decodes concurrent streams (``export.scheduler``): ``continuous`` (iteration-level
batching, one ONNX call per step for every active stream) or ``none`` (a thread per stream)."""
