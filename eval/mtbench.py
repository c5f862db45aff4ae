"""MT-Bench: two-turn answers in FastChat's formats, single-answer grading by an OpenAI-compatible judge.

Questions: FastChat `question.jsonl` rows {"question_id", "category", "turns": [q1, q2], "reference"?}.
Answers: {"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [a1, a2]}], "tstamp"}.
Turn 1 is judged with the single-answer prompt, turn 2 with the multi-turn one; math, reasoning and
coding use the reference-answer prompts (reference from the question's "reference" field or a
reference-answers file in the answer format). The rating is the number in "[[x]]" (else "[x]");
a judgment with neither is excluded from the means.

The default judge prompts (`JUDGE_PROMPTS`: single-v1, single-math-v1 and their multi-turn forms) are our
own wording of the same four roles, so their scores are NOT comparable with published MT-Bench numbers.
For comparable scores pass FastChat's official `judge_prompts.jsonl` (`read_judge_prompts`, CLI
`--judge-prompts`).
"""
from __future__ import annotations

import json
import re
import string
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import torch

from common.io import RecordError, read_objects, read_records

TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7
NEED_REFERENCE = ("math", "reasoning", "coding")

_SCALE = ("Write a short justification first. Then, on the last line, give your score as a number from 1 (useless) "
          'to 10 (excellent) inside double square brackets, exactly in the form "[[rating]]", e.g. "Score: [[6]]".')
_QUALITIES = ("Weigh how useful, on topic, factually right, thorough, original and detailed the reply is; "
              "length or style alone earns nothing.")
_CHECK = ("A reference solution is supplied: compare the assistant's work with it, name every error you find, "
          "and weigh correctness first and usefulness second.")
_TURNS = ("[User, turn 1]\n{question_1}\n\n[Assistant, turn 1]\n{answer_1}\n\n"
          "[User, turn 2]\n{question_2}\n\n[Assistant, turn 2]\n{answer_2}")
_REFERENCE_TURNS = ("[User, turn 1]\n{question_1}\n\n[Reference, turn 1]\n{ref_answer_1}\n\n"
                    "[User, turn 2]\n{question_2}\n\n[Reference, turn 2]\n{ref_answer_2}")
JUDGE_PROMPTS: dict[str, tuple[str, str]] = {  # name -> (system prompt, user prompt template); our wording
    "single-v1": (f"You grade a reply that an AI assistant wrote to a user's question. {_QUALITIES} {_SCALE}",
                  "## Question\n{question}\n\n## Assistant's reply\n{answer}"),
    "single-math-v1": (f"You grade a reply that an AI assistant wrote to a question with a correct solution. {_CHECK} {_SCALE}",
                       "## Question\n{question}\n\n## Reference solution\n{ref_answer_1}\n\n## Assistant's reply\n{answer}"),
    "single-v1-multi-turn": ("You grade an AI assistant in a two-turn conversation with a user. Grade only the "
                             "assistant's reply to the user's second message; the first exchange is context. "
                             f"{_QUALITIES} {_SCALE}", f"## Conversation\n\n{_TURNS}"),
    "single-math-v1-multi-turn": ("You grade an AI assistant in a two-turn conversation with a user about questions "
                                  "with correct solutions. Grade only the assistant's reply to the user's second "
                                  f"message; the first exchange is context. {_CHECK} {_SCALE}",
                                  f"## Reference solutions\n\n{_REFERENCE_TURNS}\n\n## Conversation\n\n{_TURNS}"),
}
PLACEHOLDERS = {  # the fields each prompt template must show, and may only use
    "single-v1": {"question", "answer"},
    "single-math-v1": {"question", "ref_answer_1", "answer"},
    "single-v1-multi-turn": {"question_1", "answer_1", "question_2", "answer_2"},
    "single-math-v1-multi-turn": {"question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2"},
}

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> float | None:
    """The judge's rating from "[[8]]" / "[[8.5]]", else "[8]"; None when there is none."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return float(match.group(1)) if match else None


def read_judge_prompts(path: str | Path) -> dict[str, tuple[str, str]]:
    """The four single-answer prompts (name -> (system, template)) from a FastChat `judge_prompts.jsonl`."""
    prompts = {}
    for line_no, row in read_records(path):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise RecordError(path, "not a judge prompt (needs a JSON object with a name)", line=line_no)
        name = row["name"]
        if name not in PLACEHOLDERS:
            continue
        if name in prompts:
            raise RecordError(path, f"repeats judge prompt {name}", line=line_no)
        system, template = row.get("system_prompt"), row.get("prompt_template")
        if not isinstance(system, str) or not isinstance(template, str):
            raise RecordError(path, f"{name} needs string system_prompt and prompt_template", line=line_no)
        fields = _template_fields(template, f"{path}: line {line_no}: {name}")
        if fields != PLACEHOLDERS[name]:
            raise RecordError(path, f"{name} template has placeholders {sorted(fields)}, "
                              f"expected {sorted(PLACEHOLDERS[name])}", line=line_no)
        prompts[name] = (system, template)
    missing = [name for name in PLACEHOLDERS if name not in prompts]
    if missing:
        raise RecordError(path, f"no judge prompt named {', '.join(missing)}")
    return prompts


def _template_fields(template: str, where: str) -> set[str]:
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as err:
        raise ValueError(f"{where} template is not a valid format string ({err})") from err


def read_questions(path: str | Path) -> list[dict]:
    rows = read_objects(path)
    for i, q in enumerate(rows):
        turns = q.get("turns")
        if not isinstance(q.get("question_id"), (int, str)) or not isinstance(q.get("category"), str) or not (
            isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)
        ):
            raise RecordError(path, "not an MT-Bench question (needs question_id, category, turns: [str, str])", record=i)
    return rows


def generate_answers(model, tokenizer, questions: list[dict], model_id: str, max_new_tokens: int = 1024,
                     seed: int = 0) -> list[dict]:
    """FastChat-format answers: each turn generated on the conversation so far, at its category temperature."""
    from model.chat import encode_chat
    from model.generate import generate

    generator = torch.Generator().manual_seed(seed)
    answers = []
    for q in questions:
        temperature = TEMPERATURE.get(q["category"], DEFAULT_TEMPERATURE)
        messages, turns = [], []
        for question in q["turns"]:
            messages.append({"role": "user", "content": question})
            prompt = encode_chat(tokenizer, messages)
            budget = min(max_new_tokens, model.config.max_seq_len - len(prompt))
            new = generate(model, prompt, budget, temperature=temperature, stop_ids=tokenizer.stop_ids, generator=generator)
            text = tokenizer.decode([t for t in new if t not in tokenizer.stop_ids]).strip()
            messages.append({"role": "assistant", "content": text})
            turns.append(text)
        answers.append({"question_id": q["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                        "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()})
    return answers


class JudgeClient:
    """Chat completions on an OpenAI-compatible endpoint (`url` is the API base, e.g. http://host:8000/v1)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 3):
        self.url, self.model, self.api_key, self.timeout, self.retries = url.rstrip("/"), model, api_key, timeout, retries

    def complete(self, system: str, user: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 2048, "n": 1,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}/chat/completions", body.encode(), headers, method="POST")
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
                return reply["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError) as err:
                if attempt == self.retries - 1:
                    raise ConnectionError(f"judge at {self.url} failed after {self.retries} tries: {err}") from err
                time.sleep(2**attempt)
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                raise ValueError(f"judge at {self.url} sent a reply that is not a chat completion: {err}") from err
        raise AssertionError("unreachable")


def _judge_prompt(question: dict, turns: list[str], turn: int, reference: list[str] | None,
                  prompts: dict[str, tuple[str, str]]) -> tuple[str, str, str]:
    name = ("single-math-v1" if reference else "single-v1") + ("-multi-turn" if turn == 2 else "")
    system, template = prompts[name]
    fields = {"question": question["turns"][0], "answer": turns[0], "question_1": question["turns"][0],
              "question_2": question["turns"][1], "answer_1": turns[0], "answer_2": turns[1]}
    if reference:
        fields |= {"ref_answer_1": reference[0], "ref_answer_2": reference[1] if len(reference) > 1 else ""}
    return name, system, template.format(**fields)


def judge_answers(questions: list[dict], answers: list[dict], client: JudgeClient,
                  references: dict | None = None, prompts: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """One judgment per (question, turn); references: question_id -> [ref turn 1, ref turn 2];
    prompts: name -> (system, template), e.g. from `read_judge_prompts` (default: `JUDGE_PROMPTS`)."""
    prompts = JUDGE_PROMPTS if prompts is None else prompts
    by_id = {a["question_id"]: a for a in answers}
    judgments = []
    for q in questions:
        if q["question_id"] not in by_id:
            raise KeyError(f"no answer for MT-Bench question {q['question_id']}")
        turns = by_id[q["question_id"]]["choices"][0]["turns"]
        reference = None
        if q["category"] in NEED_REFERENCE:
            reference = (references or {}).get(q["question_id"]) or q.get("reference")
        for turn in (1, 2):
            name, system, user = _judge_prompt(q, turns, turn, reference, prompts)
            judgment = client.complete(system, user)
            judgments.append({"question_id": q["question_id"], "category": q["category"], "turn": turn,
                              "judge": [client.model, name], "user_prompt": user, "judgment": judgment,
                              "score": parse_rating(judgment), "tstamp": time.time()})
    return judgments


def summarize_scores(judgments: list[dict]) -> dict:
    """Mean rating per turn and overall; judgments without a rating are counted and excluded."""
    def mean(scores):
        return sum(scores) / len(scores) if scores else None

    rated = [j for j in judgments if j["score"] is not None]
    return {"turn_1": mean([j["score"] for j in rated if j["turn"] == 1]),
            "turn_2": mean([j["score"] for j in rated if j["turn"] == 2]),
            "overall": mean([j["score"] for j in rated]), "n_rated": len(rated),
            "n_excluded": len(judgments) - len(rated)}


def read_references(path: str | Path) -> dict:
    """question_id -> reference turns, from a FastChat answer file (e.g. the GPT-4 reference answers)."""
    return {r["question_id"]: r["choices"][0]["turns"] for r in read_objects(path)}
