"""Chat prompt formats: LLaMA-2, LLaMA-3, Mistral v1 and ChatML (SmolLM2-Instruct).

``render_chat`` returns the prompt as text with the special tokens written out (``<s>``,
``<|begin_of_text|>``, ...); ``encode_chat`` turns it into ids with ``tokenizer.encode_special``, so the
BOS of each format comes from the text, never added twice.

Choices: message contents are stripped for llama2 (as Meta's reference does) and llama3 (as Meta's and
the HF template do), kept verbatim for mistral and chatml. A system message may only come first. Mistral
v1 has no system role: it is prepended to the first user message followed by a blank line (as
mistral-common does). For llama2 and mistral the prompt ending in ``[/INST]`` already asks for the
answer, so ``add_generation_prompt`` changes nothing there. ChatML gets no default system prompt (SmolLM2's
Jinja template would insert "You are a helpful AI assistant named SmolLM, ..."; pass it explicitly).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


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


def _turns(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    """Split off the system prompt and check that the rest alternates user/assistant from a user turn."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    for n, m in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"turn {n} has role {m['role']!r}; this format needs alternating user/assistant")
    if not turns:
        raise ValueError("a chat needs at least one user message")
    return system, turns


def _llama2(messages: list[dict[str, str]]) -> str:
    system, turns = _turns(messages)
    contents = [m["content"] for m in turns]
    if system is not None:
        contents[0] = f"<<SYS>>\n{system}\n<</SYS>>\n\n{contents[0]}"
    out = ""
    for i in range(0, len(contents), 2):
        out += f"<s>[INST] {contents[i].strip()} [/INST]"
        if i + 1 < len(contents):
            out += f" {contents[i + 1].strip()} </s>"
    return out


def _mistral(messages: list[dict[str, str]]) -> str:
    system, turns = _turns(messages)
    out = "<s>"
    for n, m in enumerate(turns):
        if m["role"] == "user":
            content = f"{system}\n\n{m['content']}" if n == 0 and system else m["content"]
            out += f"[INST] {content} [/INST]"
        else:
            out += f" {m['content']}</s>"
    return out


def _llama3(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    out = "<|begin_of_text|>"
    for m in messages:
        out += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    if add_generation_prompt:
        out += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return out


def _chatml(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


TEMPLATES = ("llama2", "llama3", "mistral", "chatml")


def render_chat(messages: list[dict[str, str]], template: str, add_generation_prompt: bool = True) -> str:
    """The prompt text of a conversation in one of :data:`TEMPLATES`, special tokens written out."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")
    _check(messages)
    if template == "llama2":
        return _llama2(messages)
    if template == "mistral":
        return _mistral(messages)
    if template == "llama3":
        return _llama3(messages, add_generation_prompt)
    return _chatml(messages, add_generation_prompt)


def encode_chat(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation in the tokenizer's own chat format."""
    text = render_chat(messages, tokenizer.chat_template, add_generation_prompt)
    return tokenizer.encode_special(text)
