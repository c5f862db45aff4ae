"""Prompt templates: Alpaca / LLM-Adapters instruction prompts and chat conversations.

Every template turns a record into segments ``(text, trainable)``: the prompt parts are not trainable
(masked from the loss when prompt masking is on), the responses are.

The Alpaca wording is the one LLM-Adapters fine-tunes and evaluates Commonsense170K with; their source
indents the template lines, we use the plain Alpaca layout (no indentation).
"""
from __future__ import annotations

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat")

Segments = list[tuple[str, bool]]


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt up to and including ``### Response:\\n`` (the variant without input if empty)."""
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def chat_segments(messages: list[dict[str, str]], chat_template: str) -> Segments:
    """Split a rendered conversation into prompt and assistant-turn segments.

    Assistant turn i is ``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt)``;
    so the turn's closing marker is trainable and the header that opens it is not.
    """
    from model.chat import render_chat  # here, so that `import data` does not load the model package

    segments: Segments = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(messages[:i], chat_template, add_generation_prompt=True)
        full = render_chat(messages[: i + 1], chat_template, add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError(
                f"chat template {chat_template!r} does not render conversations prefix-consistently; "
                "cannot locate the assistant turns"
            )
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return [(text, trainable) for text, trainable in segments if text]


def instruction_segments(record: dict, template: str, chat_template: str | None = None) -> Segments:
    """Prompt and response segments of an instruction record under ``template`` ("alpaca" or "chat")."""
    if template == "alpaca":
        return [(alpaca_prompt(record["instruction"], record.get("input", "")), False), (record["output"], True)]
    if template == "chat":
        if chat_template is None:
            raise ValueError("template 'chat' needs a tokenizer with a chat_template")
        user = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        return chat_segments(messages, chat_template)
    raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")
