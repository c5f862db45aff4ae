"""Few-shot prompts as the harness renders them, and the (context, continuation) pairs to score.

Layout: description + (solved example + "\\n\\n") * k + doc text; each choice is scored as the
continuation " " + choice. Few-shot examples come from the task's few-shot split: MMLU takes the first
k dev rows (the harness's first_n sampler). The commonsense tasks only have a validation split here, so
their k examples are drawn from that split without the scored doc, with a generator seeded by
(seed, task, doc id): a doc's prompt never depends on which other docs are evaluated.
"""
from __future__ import annotations

import random

from common.errors import UserError
from eval.tasks import Task

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def solved_example(task: Task, doc: dict) -> str:
    """A doc with its right answer, as it appears among the few-shot examples."""
    gold = task.gold(doc)
    if task.partial:
        return task.choices(doc)[gold] + TARGET_DELIMITER + task.target(doc)
    return task.text(doc) + TARGET_DELIMITER + task.choices(doc)[gold]


def fewshot_docs(task: Task, pool: list[dict], k: int, doc_id: int, seed: int) -> list[dict]:
    """The k example docs for doc `doc_id`; `pool` is the few-shot split."""
    if k == 0:
        return []
    if task.fewshot_split != task.eval_split:
        if k > len(pool):
            raise UserError(f"{task.name}: {k} shots requested but the {task.fewshot_split} split has {len(pool)} rows")
        return pool[:k]
    if k >= len(pool):
        raise UserError(f"{task.name}: {k} shots requested from a split of {len(pool)} rows (the doc itself is excluded)")
    rng = random.Random(f"{seed}/{task.name}/{doc_id}")
    picked = [i for i in rng.sample(range(len(pool)), k + 1) if i != doc_id][:k]
    return [pool[i] for i in picked]


def fewshot_prefix(task: Task, shots: list[dict]) -> str:
    return task.description + "".join(solved_example(task, d) + FEWSHOT_DELIMITER for d in shots)


def choice_requests(task: Task, doc: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(context, continuation) per choice, in choice order."""
    if task.partial:
        target = TARGET_DELIMITER + task.target(doc)
        return [(prefix + context, target) for context in task.choices(doc)]
    context = prefix + task.text(doc)
    return [(context, TARGET_DELIMITER + choice) for choice in task.choices(doc)]


def normalisation_lengths(task: Task, doc: dict) -> list[int]:
    """Character lengths that acc_norm divides by (WinoGrande: the shared target, so acc_norm == acc)."""
    if task.partial:
        return [len(task.target(doc))] * len(task.choices(doc))
    return [len(choice) for choice in task.choices(doc)]
