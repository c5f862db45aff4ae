"""The LLM-Adapters protocol: Alpaca prompt, greedy or beam decoding, first-match answer extraction.

Data are LLM-Adapters `test.json` files: a list of {"instruction", "input"?, "answer"} records. The
prompt is the standard Alpaca one (LLM-Adapters' evaluation script indents the prompt lines by 16
spaces, an artefact of a triple-quoted string; pass `indent=" " * 16` to reproduce it exactly).
"""
from __future__ import annotations

import re

import torch

from common.io import RecordError, read_objects
from model.generate import generate

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
        raise KeyError(f"no answer pattern for dataset {dataset!r}; known: {', '.join(ANSWER_PATTERNS)}")
    found = re.findall(ANSWER_PATTERNS[dataset], text.strip())
    return found[0] if found else ""


def read_llm_adapters(path: str) -> list[dict]:
    rows = read_objects(path)
    for i, row in enumerate(rows):
        missing = [k for k in ("instruction", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise RecordError(path, f"lacks string field(s) {missing} of the LLM-Adapters test.json format", record=i)
    return rows


def _reorder_kv_cache(model, parents: torch.Tensor) -> None:
    for block in model.layers:
        cache = block.attention.kv_cache
        cache.k.copy_(cache.k[parents])
        cache.v.copy_(cache.v[parents])


@torch.inference_mode()
def beam_search(model, prompt: list[int], max_new_tokens: int, num_beams: int = 4, stop_ids=(),
                length_penalty: float = 1.0) -> list[int]:
    """New tokens of the best beam; finished beams are ranked by sum log-prob / length**length_penalty."""
    if not prompt:
        raise ValueError("beam_search: the prompt must contain at least one token")
    stop = set(stop_ids)
    device = next(model.parameters()).device
    model.setup_kv_cache(num_beams, len(prompt) + max_new_tokens)
    try:
        tokens = torch.tensor([prompt] * num_beams, device=device)
        pos = torch.arange(len(prompt), device=device)
        scores = torch.full((num_beams,), float("-inf"), device=device)
        scores[0] = 0.0  # all beams start identical: expand only the first
        beams: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(max_new_tokens):
            logprobs = model(tokens, pos)[:, -1].float().log_softmax(-1)
            total = (scores[:, None] + logprobs).flatten()
            top, flat = total.topk(2 * num_beams)
            vocab = logprobs.shape[-1]
            keep_parents, keep_tokens, keep_scores = [], [], []
            for score, idx in zip(top.tolist(), flat.tolist()):
                parent, token = divmod(idx, vocab)
                seq = beams[parent] + [token]
                if token in stop:
                    finished.append((score / len(seq) ** length_penalty, seq))
                elif len(keep_parents) < num_beams:
                    keep_parents.append(parent), keep_tokens.append(token), keep_scores.append(score)
            if not keep_parents:
                break
            best_live = max(keep_scores) / (step + 1) ** length_penalty
            if len(finished) >= num_beams and max(f[0] for f in finished) >= best_live:
                break
            while len(keep_parents) < num_beams:  # pad with dead beams so the cache keeps its batch size
                keep_parents.append(keep_parents[0]), keep_tokens.append(keep_tokens[0]), keep_scores.append(float("-inf"))
            parents = torch.tensor(keep_parents, device=device)
            _reorder_kv_cache(model, parents)
            beams = [beams[p] + [t] for p, t in zip(keep_parents, keep_tokens)]
            scores = torch.tensor(keep_scores, device=device)
            tokens, pos = torch.tensor(keep_tokens, device=device)[:, None], pos[-1:] + 1
        else:
            finished += [(s / len(b) ** length_penalty, b) for s, b in zip(scores.tolist(), beams)]
        return max(finished, key=lambda f: f[0])[1]
    finally:
        model.clear_kv_cache()


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
