"""``config.pbtxt`` for the published model, built from ``CONTRACT`` + ``ExportConfig`` + the labels.

Configs are built as Triton's own ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``) and
written with ``text_format``, so a field name Triton does not know cannot be written. Two layouts:

- ``python`` (works with the Triton bundled in ``nvidia-pytriton``): one python-backend model MODEL whose
  ``model.py`` tokenizes and runs ONNX Runtime (parameter ``role: classify``).
- ``onnxruntime`` (a full Triton with the onnxruntime backend): an ensemble MODEL =
  MODEL_tokenize (python, TEXT -> token ids) -> MODEL_onnx (``onnxruntime_onnx``) -> MODEL_postprocess
  (python, logits -> PROBABILITIES, LABEL).

A causal LM is one decoupled python-backend model streaming tokens (``causal_model_config``).

Every classifier model config carries the labels as the JSON parameter ``labels``, which ``serving.client`` reads.
"""

from __future__ import annotations

import json

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.config import ExportConfig
from export.contract import CONTRACT, GENERATIVE
from export.triton_model.model import SPINNING_PARAMETER

LABELS_PARAMETER = "labels"
"""config.pbtxt parameter holding the label names as a JSON list (index -> name)."""
ROLE_PARAMETER = "role"
"""config.pbtxt parameter telling ``model.py`` what to do: classify, tokenize or postprocess."""


def step_names(model_name: str) -> dict[str, str]:
    """The models of the onnxruntime layout: ensemble MODEL -> MODEL_tokenize, MODEL_onnx, MODEL_postprocess."""
    return {"tokenize": f"{model_name}_tokenize", "onnx": f"{model_name}_onnx",
            "postprocess": f"{model_name}_postprocess"}


def version_policy(served_versions: int) -> mc.ModelVersionPolicy:
    """The newest ``served_versions`` versions (0: all). Rollback overrides it with ``specific``."""
    if served_versions <= 0:
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=served_versions))


def policy_versions(policy: mc.ModelVersionPolicy, versions: list[int]) -> list[int]:
    """The versions Triton serves out of ``versions`` under ``policy``: ``specific`` ones, ``all``, or the
    newest ``latest.num_versions`` (unset: the newest one, Triton's default)."""
    versions = sorted(set(versions))
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    if which == "all":
        return versions
    return versions[-(policy.latest.num_versions or 1):] if versions else []


def _params(config: mc.ModelConfig, **values: str) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _text_input(config: mc.ModelConfig) -> None:
    config.input.add(name=CONTRACT.input_text, data_type=mc.TYPE_STRING, dims=[1])


def _label_outputs(config: mc.ModelConfig, labels: list[str]) -> None:
    config.output.add(name=CONTRACT.output_probabilities, data_type=mc.TYPE_FP32, dims=[len(labels)])
    config.output.add(name=CONTRACT.output_label, data_type=mc.TYPE_STRING, dims=[1])


def _batching(config: mc.ModelConfig, cfg: ExportConfig, kind: int = mc.ModelInstanceGroup.KIND_CPU) -> None:
    config.max_batch_size = cfg.max_batch_size
    config.instance_group.add(kind=kind, count=cfg.instance_count)
    if cfg.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(cfg.preferred_batch_sizes)


def python_model_config(cfg: ExportConfig, labels: list[str]) -> mc.ModelConfig:
    """The default layout: one python-backend model, raw TEXT in, PROBABILITIES and LABEL out."""
    config = mc.ModelConfig(name=cfg.model_name, backend="python")
    config.version_policy.CopyFrom(version_policy(cfg.served_versions))
    _text_input(config)
    _label_outputs(config, labels)
    _batching(config, cfg)
    _params(config, role="classify", labels=json.dumps(labels), intra_op_threads=cfg.intra_op_threads,
            **{SPINNING_PARAMETER: int(cfg.intra_op_spinning)})
    return config


def causal_model_config(cfg: ExportConfig) -> mc.ModelConfig:
    """A causal LM: one decoupled python-backend model streaming a response per token (``export/triton_llm``).

    No Triton batching (``max_batch_size: 0``): the model batches concurrent streams itself at every decode
    step (``decode_batching``). Every input is optional to Triton; the model asks for ``text_input`` or
    ``messages`` and names what is missing.
    """
    from export.triton_llm.model import BATCHING_PARAMETER, MAX_SEQUENCES_PARAMETER, THREADS_PARAMETER

    g = GENERATIVE
    config = mc.ModelConfig(name=cfg.model_name, backend="python", max_batch_size=0)
    config.version_policy.CopyFrom(version_policy(cfg.served_versions))
    config.model_transaction_policy.decoupled = True
    for name, dims in ((g.input_text, [1]), (g.input_messages, [1]), (g.input_stop, [-1])):
        config.input.add(name=name, data_type=mc.TYPE_STRING, dims=dims, optional=True)
    for name, kind in ((g.output_text, mc.TYPE_STRING), (g.output_completion_tokens, mc.TYPE_INT32),
                       (g.output_prompt_tokens, mc.TYPE_INT32), (g.output_finish_reason, mc.TYPE_STRING)):
        config.output.add(name=name, data_type=kind, dims=[1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=cfg.instance_count)
    _params(config, **{BATCHING_PARAMETER: cfg.decode_batching, MAX_SEQUENCES_PARAMETER: cfg.max_sequences,
                       THREADS_PARAMETER: cfg.intra_op_threads})
    return config


def ensemble_model_configs(cfg: ExportConfig, labels: list[str], onnx_inputs: list[str],
                           onnx_output: str) -> dict[str, mc.ModelConfig]:
    """The full-Triton layout: model name -> config of the ensemble and its three steps.

    ``onnx_inputs`` / ``onnx_output`` are the ONNX graph's names (``input_ids``, ... / ``logits``).
    The steps serve their newest version; the ensemble calls them with ``model_version: -1``.
    """
    names = step_names(cfg.model_name)
    latest = version_policy(1)
    tokenize = mc.ModelConfig(name=names["tokenize"], backend="python")
    _text_input(tokenize)
    for name in onnx_inputs:
        tokenize.output.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    _batching(tokenize, cfg)
    _params(tokenize, role="tokenize", labels=json.dumps(labels))

    onnx = mc.ModelConfig(name=names["onnx"], platform="onnxruntime_onnx")
    for name in onnx_inputs:
        onnx.input.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    onnx.output.add(name=onnx_output, data_type=mc.TYPE_FP32, dims=[len(labels)])
    _batching(onnx, cfg, kind=mc.ModelInstanceGroup.KIND_AUTO)
    _params(onnx, intra_op_thread_count=cfg.intra_op_threads, labels=json.dumps(labels))

    post = mc.ModelConfig(name=names["postprocess"], backend="python")
    post.input.add(name=onnx_output, data_type=mc.TYPE_FP32, dims=[len(labels)])
    _label_outputs(post, labels)
    _batching(post, cfg)
    _params(post, role="postprocess", labels=json.dumps(labels))

    ensemble = mc.ModelConfig(name=cfg.model_name, platform="ensemble", max_batch_size=cfg.max_batch_size)
    _text_input(ensemble)
    _label_outputs(ensemble, labels)
    _params(ensemble, labels=json.dumps(labels))
    steps = ensemble.ensemble_scheduling.step
    steps.add(model_name=names["tokenize"], model_version=-1, input_map={CONTRACT.input_text: CONTRACT.input_text},
              output_map={n: n for n in onnx_inputs})
    steps.add(model_name=names["onnx"], model_version=-1, input_map={n: n for n in onnx_inputs},
              output_map={onnx_output: onnx_output})
    outputs = {CONTRACT.output_probabilities: CONTRACT.output_probabilities, CONTRACT.output_label: CONTRACT.output_label}
    steps.add(model_name=names["postprocess"], model_version=-1, input_map={onnx_output: onnx_output},
              output_map=outputs)
    for config in (tokenize, onnx, post, ensemble):
        config.version_policy.CopyFrom(latest)
    return {c.name: c for c in (ensemble, tokenize, onnx, post)}


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's model-config protobuf (raises ``ParseError``)."""
    return text_format.Parse(text, mc.ModelConfig())


def to_json(config: mc.ModelConfig) -> str:
    """The JSON form Triton accepts as a config override on a load request."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


def config_labels(config: mc.ModelConfig) -> list[str] | None:
    if LABELS_PARAMETER not in config.parameters:
        return None
    return json.loads(config.parameters[LABELS_PARAMETER].string_value)


def config_layout(config: mc.ModelConfig) -> str:
    """Which layout wrote this config: python or onnxruntime (an ensemble)."""
    return "onnxruntime" if config.platform == "ensemble" else "python"
