"""What the served causal LM reads from a request (export.llm_request, export.chat), the config it is served
with (export.triton_config) and the self-contained version folder it runs from (export.publish_causal)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from export import triton_config
from export.chat import ChatTemplate
from export.config import ExportConfig
from export.contract import GENERATIVE
from export.errors import ConfigError, GenerationError
from export.generate import Generator
from export.llm_request import PARAMETERS, REJECTION_PREFIX, parse_request
from export.publish_causal import PROJECT_ROOT, publish_causal, runtime_files
from export.triton_llm.model import BATCHING_PARAMETER, MAX_SEQUENCES_PARAMETER, THREADS_PARAMETER

RICH_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('the system message must come first') }}{% endif %}"
    "{% if m['content'] == 'skip' %}{% continue %}{% endif %}"
    "<{{ m['role'] }}>\n  {{ m['content'] | tojson }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
"""Uses what transformers' renderer provides: special tokens, loop controls, tojson, raise_exception, trim_blocks."""


@pytest.fixture(scope="module")
def generator(tiny_causal_onnx_dir) -> Generator:
    return Generator.from_folder(tiny_causal_onnx_dir)


@pytest.fixture(scope="module")
def chat(tiny_causal_onnx_dir) -> ChatTemplate:
    return ChatTemplate.from_folder(tiny_causal_onnx_dir)


@pytest.fixture(scope="module")
def heldout(tiny_causal_onnx_dir) -> list[dict]:
    return [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]


def parse(generator, chat, text=None, messages=None, stop=None, **parameters):
    return parse_request(text, messages, stop, parameters, generator, chat)


def test_messages_render_as_training_rendered_them(generator, chat, heldout):
    row = heldout[0]
    messages = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]
    request = parse(generator, chat, messages=json.dumps(messages).encode())
    assert request.prompt_ids == generator.encode(row["prompt"])  # the prompt training scored
    by_text = parse(generator, chat, text=row["prompt"].encode(), stop=[b"\n"], max_tokens=5, temperature=0.5, seed=3,
                    stream=False, id="abc", triton_enable_empty_final_response=True)
    assert by_text.prompt_ids == request.prompt_ids and not by_text.stream and request.stream
    assert (by_text.params.max_tokens, by_text.params.temperature, by_text.params.seed, by_text.params.stop) == \
        (5, 0.5, 3, ("\n",))


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ünïcode \"quoted\""}],
    [{"role": "user", "content": "skip"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
])
def test_chat_template_renders_as_transformers_does(tiny_llama_dir, messages):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = RICH_TEMPLATE
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = ChatTemplate(RICH_TEMPLATE, {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token})
    assert ours.render(messages) == expected and expected.startswith(tokenizer.bos_token)


def test_a_template_refusal_names_the_messages():
    with pytest.raises(GenerationError, match="messages: the model's chat template refused them: the system message"):
        ChatTemplate(RICH_TEMPLATE).render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


@pytest.mark.parametrize(("kwargs", "problems"), [
    ({}, ["give the prompt as 'text_input' or chat messages as 'messages'"]),
    ({"text": b"hi", "messages": b"[]"}, ["give 'text_input' or 'messages', not both"]),
    ({"text": b"\xff\xfe", "max_tokens": 0, "max_token": 5, "stream": "yes"},
     ["text_input is not valid UTF-8 (invalid start byte at byte 0)", "unknown parameter(s) 'max_token'",
      "stream must be true or false, got 'yes'", "max_tokens must be an integer >= 1, got 0"]),
    ({"text": b"hi", "temperature": "0.5", "top_p": 0.0, "seed": -1},
     ["temperature must be a number in [0, 2] (0: greedy), got '0.5'", "top_p must be a number in (0, 1], got 0.0",
      "seed must be an integer >= 0 or null, got -1"]),
    ({"text": b"hi", "stop": [b"a", b""], "ignore_eos": 1}, ["stop[1] is empty", "ignore_eos must be true or false, got 1"]),
    ({"text": b"hi", "parameters_stop": 1, "stop_param": "x"}, ["unknown parameter(s) 'parameters_stop', 'stop_param'"]),
    ({"messages": b"[{\"role\": \"user\""}, ["messages is not valid JSON (Expecting ',' delimiter at character 16)"]),
    ({"messages": b"[{\"role\": \"robot\", \"content\": \"x\"}]"}, ["messages[0].role is 'robot'; expected one of"]),
    ({"messages": b"[{\"role\": \"user\", \"content\": [1]}]"}, ["messages[0].content must be a string, got [1]"]),
    ({"messages": b"{}"}, ["messages must be a non-empty JSON list"]),
    ({"text": b"hi " * 600}, ["text_input has 1201 tokens; the model's context holds 512, leaving no room"]),
])
def test_every_problem_of_a_request_is_named_at_once(generator, chat, kwargs, problems):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(GenerationError) as info:
        parse(generator, chat, **kwargs)
    message = str(info.value)
    assert message.startswith(REJECTION_PREFIX)  # how a gRPC client recognises a refusal
    for problem in problems:
        assert problem in message


def test_stop_as_a_parameter_says_where_it_belongs(generator, chat):
    with pytest.raises(GenerationError, match="send stop strings as the input 'stop'"):
        parse_request(b"hi", None, None, {"stop": "x"}, generator, chat)


def test_the_served_config_comes_from_the_contract():
    cfg = ExportConfig(task="causal-lm", cpu_count=4, max_sequences=6, decode_batching="none", served_versions=2)
    config = triton_config.parse_pbtxt(triton_config.to_pbtxt(triton_config.causal_model_config(cfg)))
    assert config.model_transaction_policy.decoupled and config.max_batch_size == 0 and config.backend == "python"
    assert [(i.name, i.optional) for i in config.input] == [(GENERATIVE.input_text, True),
                                                           (GENERATIVE.input_messages, True), (GENERATIVE.input_stop, True)]
    assert [o.name for o in config.output] == [GENERATIVE.output_text, GENERATIVE.output_completion_tokens,
                                               GENERATIVE.output_prompt_tokens, GENERATIVE.output_finish_reason]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {BATCHING_PARAMETER: "none", MAX_SEQUENCES_PARAMETER: "6", THREADS_PARAMETER: "4"}
    assert config.version_policy.latest.num_versions == 2
    assert not set(PARAMETERS) & {i.name for i in config.input}  # a parameter is never also an input
    with pytest.raises(ConfigError) as info:
        ExportConfig(task="causal-lm", decode_batching="paged", max_sequences=0)
    assert "unknown decode_batching 'paged'" in str(info.value) and "max_sequences must be >= 1" in str(info.value)


def test_a_version_runs_its_own_copy_of_the_decode_loop(tiny_causal_onnx_dir, tmp_path):
    version = publish_causal(tiny_causal_onnx_dir, "fp32", ExportConfig(task="causal-lm", repository=tmp_path / "repo"))
    runtime = version / GENERATIVE.runtime_dir
    copied = sorted(p.relative_to(runtime) for p in runtime.rglob("*.py"))
    assert copied == runtime_files() and {"export/generate.py", "export/scheduler.py"} <= {str(p) for p in copied}
    assert all((runtime / rel).read_bytes() == (PROJECT_ROOT / rel).read_bytes() for rel in copied)
    # an isolated interpreter elsewhere imports model.py as Triton's stub does; every project module it
    # loads must come from the version's runtime/ (the installed project is on sys.path too, as in the stub)
    code = ("import sys, json; sys.path.append(sys.argv[1]); import model; "
            "print(json.dumps({n: getattr(m, '__file__', '') for n, m in sys.modules.items() "
            "if n.split('.')[0] in ('export', 'tunestack', 'training', 'serving')}))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(version)], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "export.generate" in loaded and "export.scheduler" in loaded
    assert all(path.startswith(str(runtime)) for path in loaded.values()), loaded
