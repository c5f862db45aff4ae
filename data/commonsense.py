"""Build a Commonsense170K-style training set (LLM-Adapters format) from the 8 real validation sets.

Each record: ``{"instruction", "input": "", "output": "the correct answer is <answer>", "answer",
"task", "doc_id"}`` with LLM-Adapters' per-dataset instruction wording and answer words (true/false,
solution1/2, answer1-5, ending1-4, option1/2). ``doc_id`` is the row index in the task's validation
arrow, so the evaluator can score exactly the held-out rows. The held-out rows of a task are a seeded
random sample that depends only on (seed, task).

    python -m data.commonsense --out runs/commonsense --heldout-per-task 100
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import write_json
from data.arrow import read_split, task_split_dir

TASKS = ("boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
TRAIN_FILE, HELDOUT_FILE = "commonsense_train.json", "commonsense_heldout.json"


def _options(word: str, options: list[str], sep: str) -> tuple[str, str]:
    """'Answer1: a Answer2: b' and the answer format 'answer1/answer2'."""
    listed = sep.join(f"{word.capitalize()}{i}: {text}" for i, text in enumerate(options, start=1))
    return listed, "/".join(f"{word}{i}" for i in range(1, len(options) + 1))


def _choice_question(question: str, options: list[str], gold: int) -> tuple[str, str]:
    listed, fmt = _options("answer", options, " ")
    return (
        f"Please choose the correct answer to the question: {question}\n\n{listed}\n\nAnswer format: {fmt}",
        f"answer{gold + 1}",
    )


def _index(value, valid: list, what: str) -> int:
    if value not in valid:
        raise ValueError(f"{what} {value!r} is not one of {valid}")
    return valid.index(value)


def boolq(row: dict) -> tuple[str, str]:
    if not isinstance(row["answer"], bool):
        raise ValueError(f"answer {row['answer']!r} is not a boolean")
    instruction = f"Please answer the following question with true or false, question: {row['question']}?"
    return f"{instruction}\n\nAnswer format: true/false", "true" if row["answer"] else "false"


def piqa(row: dict) -> tuple[str, str]:
    gold = _index(row["label"], [0, 1], "label")
    listed, fmt = _options("solution", [row["sol1"], row["sol2"]], "\n\n")
    return (
        f"Please choose the correct solution to the question: {row['goal']}\n\n{listed}\n\nAnswer format: {fmt}",
        f"solution{gold + 1}",
    )


def social_iqa(row: dict) -> tuple[str, str]:
    gold = _index(row["label"], ["1", "2", "3"], "label")
    options = [row["answerA"], row["answerB"], row["answerC"]]
    return _choice_question(f"{row['context']} {row['question']}", options, gold)


def hellaswag(row: dict) -> tuple[str, str]:
    gold = _index(row["label"], ["0", "1", "2", "3"], "label")
    listed, fmt = _options("ending", row["endings"], " ")
    return (
        "Please choose the correct ending to complete the given sentence: "
        f"{row['activity_label']}: {row['ctx']}\n\n{listed}\n\nAnswer format: {fmt}",
        f"ending{gold + 1}",
    )


def winogrande(row: dict) -> tuple[str, str]:
    gold = _index(row["answer"], ["1", "2"], "answer")
    listed, fmt = _options("option", [row["option1"], row["option2"]], " ")
    return (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{row['sentence']}\n\n{listed} Answer format: {fmt}",
        f"option{gold + 1}",
    )


def arc(row: dict, question_key: str = "question") -> tuple[str, str]:
    gold = _index(row["answerKey"], row["choices"]["label"], "answerKey")
    return _choice_question(row[question_key], row["choices"]["text"], gold)


FORMATTERS = {
    "boolq": boolq,
    "piqa": piqa,
    "social_iqa": social_iqa,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "arc_easy": arc,
    "arc_challenge": arc,
    "openbookqa": lambda row: arc(row, "question_stem"),
}


def commonsense_record(task: str, row: dict, doc_id: int) -> dict:
    """One LLM-Adapters record of validation row ``doc_id`` of ``task``."""
    try:
        instruction, answer = FORMATTERS[task](row)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{task_split_dir(task)}: row {doc_id}: malformed ({type(err).__name__}: {err})") from None
    return {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
        "task": task,
        "doc_id": doc_id,
    }


def split_rows(task: str, num_rows: int, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices of one task, both sorted; depends only on (task, seed, sizes)."""
    if not 0 <= heldout < num_rows:
        raise UserError(f"{task}: cannot hold out {heldout} of {num_rows} rows and keep some for training")
    order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(num_rows).tolist()
    return sorted(order[heldout:]), sorted(order[:heldout])




def build_commonsense(
    out_dir: str | Path,
    heldout_per_task: int = 100,
    max_train_per_task: int | None = None,
    seed: int = 0,
    tasks: tuple[str, ...] = TASKS,
) -> tuple[Path, Path]:
    """Write ``commonsense_train.json`` and ``commonsense_heldout.json`` into ``out_dir``; return their paths.

    ``max_train_per_task`` keeps a seeded random subset of each task's training rows.
    """
    unknown = [t for t in tasks if t not in FORMATTERS]
    if unknown:
        raise UserError(f"unknown commonsense task(s) {unknown}; known: {', '.join(TASKS)}")
    train, heldout = [], []
    for task in tasks:
        rows = read_split(task_split_dir(task))
        train_ids, heldout_ids = split_rows(task, len(rows), heldout_per_task, seed)
        if max_train_per_task is not None:
            keep = np.random.default_rng([seed, zlib.crc32(task.encode()), 1]).permutation(len(train_ids))
            train_ids = sorted(train_ids[i] for i in keep[:max_train_per_task])
        train += [commonsense_record(task, rows[i], i) for i in train_ids]
        heldout += [commonsense_record(task, rows[i], i) for i in heldout_ids]
    out_dir = Path(out_dir)
    write_json(out_dir / TRAIN_FILE, train)
    write_json(out_dir / HELDOUT_FILE, heldout)
    return out_dir / TRAIN_FILE, out_dir / HELDOUT_FILE


def heldout_doc_ids(records: list[dict]) -> dict[str, list[int]]:
    """``{task: [doc_id, ...]}`` of records that carry ``task`` and ``doc_id`` (for ``evaluate(doc_ids=...)``)."""
    doc_ids: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if "task" not in record or "doc_id" not in record:
            raise UserError(f"record {i} has no 'task'/'doc_id'; build it with data.commonsense")
        doc_ids.setdefault(record["task"], []).append(record["doc_id"])
    return doc_ids


def main(argv: list[str] | None = None) -> None:
    from common import cli

    parser = cli.ArgumentParser(prog="python -m data.commonsense", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--heldout-per-task", type=cli.number(int, at_least=0), default=100, help="rows of each task's train split kept out as held-out evaluation data")
    parser.add_argument("--max-train-per-task", type=cli.number(int, at_least=1), default=None, help="training rows per task at most (default: all)")
    parser.add_argument("--seed", type=cli.number(int, at_least=0), default=0, help="seed of the held-out draw")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of: " + ", ".join(TASKS))
    args = parser.parse_args(argv)
    paths = build_commonsense(args.out, args.heldout_per_task, args.max_train_per_task, args.seed, tuple(args.tasks.split(",")))
    for path in paths:
        print(f"{path}: {len(json.loads(path.read_text()))} records")


if __name__ == "__main__":
    from common import cli

    cli.run(main)
