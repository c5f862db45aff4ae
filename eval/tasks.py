"""Multiple-choice tasks as lm-evaluation-harness defines them: prompt text, choices, gold index.

A task renders one doc (a dataset row with the harness's field names) into `text` (the prompt without
the answer), `choices` (answer strings, scored as " " + choice) and `gold` (index of the right
choice). WinoGrande is "partial": its choices are alternative *contexts* (the sentence up to the
blank, filled with each option) that share one continuation, `target` (the rest of the sentence).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from eval import mmlu


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str  # key of data.arrow.DATASET_DIRS
    text: Callable[[dict], str]
    choices: Callable[[dict], list[str]]
    gold: Callable[[dict], int]
    target: Callable[[dict], str] | None = None  # shared continuation of a partial task
    eval_split: str = "validation"
    fewshot_split: str = "validation"
    description: str = ""  # printed once before the few-shot examples
    subject: str | None = None  # mmlu only

    @property
    def partial(self) -> bool:
        return self.target is not None


def _labelled_gold(doc: dict) -> int:
    """Index of answerKey among choices.label (ARC, OpenBookQA)."""
    labels, key = doc["choices"]["label"], doc["answerKey"].strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return labels.index(key)


def _boolq_gold(doc: dict) -> int:
    # HF boolq has a bool "answer"; SuperGLUE (the harness's source) an int "label".
    value = doc["label"] if "label" in doc else doc["answer"]
    if value not in (0, 1):
        raise ValueError(f"boolq answer/label must be a bool or 0/1, got {value!r}")
    return int(value)


def hellaswag_clean(text: str) -> str:
    """The harness's HellaSwag cleanup: WikiHow "[title]" becomes ". ", other [tags] vanish."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_text(doc: dict) -> str:
    return hellaswag_clean(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")


def _winogrande_blank(doc: dict) -> int:
    if "_" not in doc["sentence"]:
        raise ValueError(f"winogrande sentence has no '_' blank: {doc['sentence']!r}")
    return doc["sentence"].index("_")


def _winogrande_gold(doc: dict) -> int:
    if doc["answer"] not in ("1", "2"):
        raise ValueError(f"winogrande answer must be '1' or '2', got {doc['answer']!r}")
    return int(doc["answer"]) - 1


def _arc(name: str) -> Task:
    return Task(name, name, lambda d: f"Question: {d['question']}\nAnswer:", lambda d: list(d["choices"]["text"]), _labelled_gold)


COMMONSENSE: dict[str, Task] = {
    t.name: t
    for t in (
        Task("boolq", "boolq", lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", lambda d: ["no", "yes"], _boolq_gold),
        Task("piqa", "piqa", lambda d: f"Question: {d['goal']}\nAnswer:", lambda d: [d["sol1"], d["sol2"]], lambda d: int(d["label"])),
        Task(
            "social_iqa",
            "social_iqa",
            lambda d: f"Q: {d['context']} {d['question']}\nA:",
            lambda d: [d["answerA"], d["answerB"], d["answerC"]],
            lambda d: int(d["label"]) - 1,
        ),
        Task(
            "hellaswag",
            "hellaswag",
            _hellaswag_text,
            lambda d: [hellaswag_clean(e) for e in d["endings"]],
            lambda d: int(d["label"]),
        ),
        Task(
            "winogrande",
            "winogrande",
            lambda d: d["sentence"][: _winogrande_blank(d)],
            lambda d: [d["sentence"][: _winogrande_blank(d)] + d[k] for k in ("option1", "option2")],
            _winogrande_gold,
            target=lambda d: d["sentence"][_winogrande_blank(d) + 1 :].strip(),
        ),
        _arc("arc_easy"),
        _arc("arc_challenge"),
        Task("openbookqa", "openbookqa", lambda d: d["question_stem"], lambda d: list(d["choices"]["text"]), _labelled_gold),
    )
}


def _mmlu_gold(doc: dict) -> int:
    if doc["answer"] not in range(4):
        raise ValueError(f"mmlu answer must be 0-3, got {doc['answer']!r}")
    return int(doc["answer"])


def mmlu_task(subject: str) -> Task:
    if subject not in mmlu.CATEGORY_OF:
        raise KeyError(f"unknown mmlu subject {subject!r}")
    return Task(
        f"mmlu_{subject}", "mmlu", mmlu.render_question, lambda d: ["A", "B", "C", "D"], _mmlu_gold,
        eval_split="test", fewshot_split="dev", description=mmlu.subject_header(subject), subject=subject,
    )


GROUPS: dict[str, tuple[str, ...]] = {
    "commonsense": tuple(COMMONSENSE),
    "mmlu": tuple(f"mmlu_{s}" for s in mmlu.SUBJECTS),
    **{f"mmlu_{cat}": tuple(f"mmlu_{s}" for s in subjects) for cat, subjects in mmlu.CATEGORIES.items()},
}
ALIASES = {"siqa": "social_iqa", "social_i_qa": "social_iqa", "obqa": "openbookqa", "arc-easy": "arc_easy",
           "arc-challenge": "arc_challenge", "ai2_arc": "arc_easy,arc_challenge"}


def get_task(name: str) -> Task:
    if name in COMMONSENSE:
        return COMMONSENSE[name]
    if name.startswith("mmlu_") and name[5:] in mmlu.CATEGORY_OF:
        return mmlu_task(name[5:])
    raise KeyError(f"unknown task {name!r}; known: {', '.join(COMMONSENSE)}, mmlu, mmlu_<subject>, "
                   f"{', '.join(GROUPS)}")


def resolve_tasks(names: str | list[str]) -> list[Task]:
    """Tasks for comma-separated names or groups ("commonsense", "mmlu", "mmlu_stem", ...), in order, unique."""
    if isinstance(names, str):
        names = names.split(",")
    resolved: dict[str, Task] = {}
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        for part in ALIASES.get(name, name).split(","):
            for member in GROUPS.get(part, (part,)):
                resolved.setdefault(member, get_task(member))
    if not resolved:
        raise ValueError(f"no task names in {names!r}")
    return list(resolved.values())
