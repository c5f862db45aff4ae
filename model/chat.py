"""Chat prompts: the model's own Jinja chat template, or one of four built-in formats when it has none.

``render_chat`` returns the prompt as text with the special tokens written out (``<s>``,
``<|begin_of_text|>``, ...); ``encode_chat`` turns it into ids with ``tokenizer.encode_special``, so the
BOS of each format comes from the text, never added twice.

A checkpoint's template (``chat_template`` in tokenizer_config.json / chat_template.jinja, or
``tokenizer.chat_template`` in a GGUF) is a :class:`ChatTemplate`: it is rendered in a sandboxed Jinja
environment set up as ``transformers``' ``apply_chat_template`` sets up its own (trimmed blocks, loop
controls, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII), with the tokenizer's
special-token strings as variables, so prompts are byte-identical to ``apply_chat_template``'s.

The built-in formats (LLaMA-2, LLaMA-3, Mistral v1, ChatML) are Jinja sources too, so an export can write
them to tokenizer_config.json. Their choices: message contents are stripped for llama2 (as Meta's
reference does) and llama3 (as Meta's and the HF template do), kept verbatim for mistral and chatml. Mistral
v1 has no system role: it is prepended to the first user message followed by a blank line (as
mistral-common does). For llama2 and mistral the prompt ending in ``[/INST]`` already asks for the
answer, so ``add_generation_prompt`` changes nothing there. Built-in ChatML has no default system prompt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant")

BUILTIN: dict[str, str] = {
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% endif %}"
        "{% for m in messages %}{% set content = m['content'] %}"
        "{% if loop.first and system is defined %}"
        "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{% endif %}"
        "{% if m['role'] == 'user' %}{{ '<s>[INST] ' + content | trim + ' [/INST]' }}"
        "{% else %}{{ ' ' + content | trim + ' </s>' }}{% endif %}{% endfor %}"
    ),
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% endif %}"
        "{{ '<s>' }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{% set content = m['content'] %}"
        "{% if loop.first and system %}{% set content = system + '\\n\\n' + content %}{% endif %}"
        "{{ '[INST] ' + content + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + '</s>' }}{% endif %}{% endfor %}"
    ),
    "llama3": (
        "{{ '<|begin_of_text|>' }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}
TEMPLATES = tuple(BUILTIN)
_ALTERNATING = ("llama2", "mistral")  # formats that can only say user/assistant turns in strict alternation


class ChatTokenizer(Protocol):  # what encode_chat needs of a model.tokenizer_base.Tokenizer
    chat_template: str | ChatTemplate

    def encode_special(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's Jinja chat template and the special-token strings it may refer to (``bos_token``, ...)."""

    source: str
    tokens: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.source, tuple(sorted(self.tokens.items()))))


def template_source(template: str | ChatTemplate) -> str:
    """The Jinja source of a built-in name or a ChatTemplate."""
    if isinstance(template, ChatTemplate):
        return template.source
    if template not in BUILTIN:
        raise ValueError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")
    return BUILTIN[template]


def builtin_name(source: str) -> str | None:
    """The built-in format whose Jinja source this is (so our own exports reload as the same format)."""
    return next((name for name, s in BUILTIN.items() if s == source), None)


def _check(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("a chat needs at least one message")
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {n} must be a dict with a string 'content', got {m!r}")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {n} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if m["role"] == "system" and n > 0:
            raise ValueError(f"message {n}: a system message may only come first")


def _check_alternation(messages: list[dict[str, str]]) -> None:
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for n, m in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"turn {n} has role {m['role']!r}; this format needs alternating user/assistant")
    if not turns:
        raise ValueError("a chat needs at least one user message")


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template does not compile: {e}") from None


def render_chat(messages: list[dict[str, str]], template: str | ChatTemplate, add_generation_prompt: bool = True) -> str:
    """The prompt text of a conversation: a built-in name of :data:`TEMPLATES` or a checkpoint's ChatTemplate."""
    source = template_source(template)
    _check(messages)
    if template in _ALTERNATING:
        _check_alternation(messages)
    tokens = template.tokens if isinstance(template, ChatTemplate) else {}
    variables = {"bos_token": "", "eos_token": "", "unk_token": "", "pad_token": "", **tokens}
    try:
        return _compile(source).render(
            messages=[dict(m) for m in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **variables,
        )  # fmt: skip
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template refused the conversation: {e}") from None


def encode_chat(tokenizer: ChatTokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation in the tokenizer's own chat format."""
    text = render_chat(messages, tokenizer.chat_template, add_generation_prompt)
    return tokenizer.encode_special(text)
