"""The LLM-Adapters protocol: Alpaca prompt, greedy or beam decoding, first-match answer extraction.

Data are LLM-Adapters `test.json` files: a list of {"instruction", "input"?, "answer"} records. The
prompt is the standard Alpaca one (LLM-Adapters' evaluation script indents the prompt lines by 16
spaces, an artefact of a triple-quoted string; pass `indent=" " * 16` to reproduce it exactly).
"""
from __future__ import annotations

import re

from common.errors import UserError
from common.io import RecordError, read_objects
from model.generate import beam_search, generate

ANSWER_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
# Our task names for the same datasets.
ANSWER_PATTERNS |= {"social_iqa": ANSWER_PATTERNS["social_i_qa"], "arc_challenge": ANSWER_PATTERNS["ARC-Challenge"],
                    "arc_easy": ANSWER_PATTERNS["ARC-Easy"]}


def alpaca_prompt(instruction: str, input: str = "", indent: str = "") -> str:
    if input:
        head = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.")
        body = ["### Instruction:", instruction, "", "### Input:", input, "", "### Response:", ""]
    else:
        head = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        body = ["### Instruction:", instruction, "", "### Response:", ""]
    return head + "\n\n" + "\n".join(indent + line if line else "" for line in body).rstrip("\n") + "\n" + indent


def extract_answer(dataset: str, text: str) -> str:
    """First answer keyword in the generated text ("" when there is none)."""
    if dataset not in ANSWER_PATTERNS:
        raise UserError(f"--dataset {dataset}: no answer pattern for it; known: {', '.join(ANSWER_PATTERNS)}")
    found = re.findall(ANSWER_PATTERNS[dataset], text.strip())
    return found[0] if found else ""


def read_llm_adapters(path: str) -> list[dict]:
    rows = read_objects(path)
    for i, row in enumerate(rows):
        missing = [k for k in ("instruction", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise RecordError(path, f"lacks string field(s) {missing} of the LLM-Adapters test.json format", record=i)
    return rows


def run_generative(model, tokenizer, dataset: str, rows: list[dict], num_beams: int = 1,
                   max_new_tokens: int = 32, indent: str = "") -> dict:
    """Accuracy of LLM-Adapters-style generation on `rows`, with one record per row."""
    was_training = model.training
    model.eval()
    records = []
    try:
        for i, row in enumerate(rows):
            prompt = tokenizer.encode(alpaca_prompt(row["instruction"], row.get("input", ""), indent), bos=True)
            if num_beams > 1:
                new = beam_search(model, prompt, max_new_tokens, num_beams, tokenizer.stop_ids)
            else:
                new = generate(model, prompt, max_new_tokens, stop_ids=tokenizer.stop_ids)
            output = tokenizer.decode([t for t in new if t not in tokenizer.stop_ids]).strip()
            pred = extract_answer(dataset, output)
            records.append({"doc_id": i, "output": output, "prediction": pred, "gold": row["answer"],
                            "correct": pred == row["answer"]})
    finally:
        model.train(was_training)
    n = len(records)
    return {"dataset": dataset, "n": n, "acc": sum(r["correct"] for r in records) / n if n else None, "records": records}
