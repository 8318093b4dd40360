"""Chat messages -> the prompt text, with the model's own chat template, without transformers.

The template is the tokenizer's (``chat_template.jinja`` beside the model, else ``tokenizer_config.json``'s
``chat_template``), rendered the way ``transformers``' ``apply_chat_template(..., add_generation_prompt=True)``
renders it: a sandboxed Jinja environment with ``trim_blocks``/``lstrip_blocks``, the loop controls, a
``tojson`` that keeps non-ASCII text, ``raise_exception`` and ``strftime_now``, and the tokenizer's special
tokens (``bos_token``, ``eos_token``, ...) as variables. Training rendered its prompts the same way, so a
served chat request sees the prompt format the model was fine-tuned on.

Messages arrive as JSON text (a list of ``{"role", "content"}``); ``parse_messages`` names the first
thing wrong with them in a ``GenerationError`` (the sender's mistake: a 400).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from export.contract import GENERATIVE
from export.errors import GenerationError, InputError

ROLES = ("system", "user", "assistant")
"""The message roles a request may use."""


def parse_messages(text: str, field: str = GENERATIVE.input_messages) -> list[dict[str, str]]:
    """``[{"role", "content"}, ...]`` from JSON text; GenerationError naming ``field`` and what is wrong."""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenerationError(f"{field} is not valid JSON ({e.msg} at character {e.pos}); expected a JSON list "
                              'of {"role": ..., "content": ...} objects') from None
    if not isinstance(messages, list) or not messages:
        raise GenerationError(f"{field} must be a non-empty JSON list of {{\"role\", \"content\"}} objects, "
                              f"got {text[:80]!r}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise GenerationError(f"{field}[{i}] must be an object with role and content, got {message!r}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise GenerationError(f"{field}[{i}].role is {role!r}; expected one of: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise GenerationError(f"{field}[{i}].content must be a string, got {content!r}")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise GenerationError(f"{field}[{i}] has unknown keys {extra}; expected only role and content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _special_tokens(folder: Path) -> dict[str, str]:
    path = folder / GENERATIVE.special_tokens_file
    if not path.is_file():
        return {}
    tokens = json.loads(path.read_text())
    return {k: v["content"] if isinstance(v, dict) else v for k, v in tokens.items() if isinstance(v, str | dict)}


class ChatTemplate:
    """A model's chat template, compiled once; ``render(messages)`` is the prompt text."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(source)
        self.special_tokens = dict(special_tokens or {})
        self.error = jinja2.exceptions.TemplateError

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate | None:
        """The template of the tokenizer files in ``folder``; None when it has none."""
        folder = Path(folder)
        source = None
        if (folder / GENERATIVE.chat_template_file).is_file():
            source = (folder / GENERATIVE.chat_template_file).read_text()
        elif (folder / GENERATIVE.tokenizer_config_file).is_file():
            source = json.loads((folder / GENERATIVE.tokenizer_config_file).read_text()).get("chat_template")
        if source is not None and not isinstance(source, str):
            raise InputError(f"{folder}: only a single chat template (a string) is supported, got {type(source).__name__}")
        return cls(source, _special_tokens(folder)) if source else None

    def render(self, messages: list[dict[str, str]], field: str = GENERATIVE.input_messages) -> str:
        """The prompt for ``messages`` with the assistant's turn opened; a template's own refusal (e.g. roles
        out of order) is a GenerationError naming ``field``."""
        try:
            return self.template.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                        **self.special_tokens)
        except self.error as e:
            raise GenerationError(f"{field}: the model's chat template refused them: {e}") from None
