"""Commonsense builder on the real validation arrows: LLM-Adapters wording, right answers, disjoint seeded split."""
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from data import load_records
from data.arrow import read_split, task_split_dir
from data.commonsense import TASKS, build_commonsense, commonsense_record, heldout_doc_ids

ANSWER_WORDS = {
    "boolq": r"true|false",
    "piqa": r"solution[12]",
    "social_iqa": r"answer[1-3]",
    "hellaswag": r"ending[1-4]",
    "winogrande": r"option[12]",
    "arc_easy": r"answer[1-5]",
    "arc_challenge": r"answer[1-5]",
    "openbookqa": r"answer[1-4]",
}


@pytest.fixture(scope="module")
def rows():
    return {task: read_split(task_split_dir(task)) for task in TASKS}


@pytest.fixture(scope="module")
def built(tmp_path_factory, rows):
    out = tmp_path_factory.mktemp("cs")
    train_path, heldout_path = build_commonsense(out, heldout_per_task=30, seed=0)
    return out, load_records(train_path), load_records(heldout_path)


def gold_option_text(task: str, row: dict, answer: str) -> str:
    """The text of the option the answer word points to, read straight from the source row."""
    k = int(answer[-1]) - 1
    if task == "piqa":
        return [row["sol1"], row["sol2"]][k]
    if task == "social_iqa":
        return [row["answerA"], row["answerB"], row["answerC"]][k]
    if task == "hellaswag":
        return row["endings"][k]
    if task == "winogrande":
        return [row["option1"], row["option2"]][k]
    return row["choices"]["text"][k]


def test_split_is_disjoint_complete_and_sized(built, rows):
    _, train, heldout = built
    for task in TASKS:
        train_ids = [r["doc_id"] for r in train if r["task"] == task]
        heldout_ids = [r["doc_id"] for r in heldout if r["task"] == task]
        assert len(heldout_ids) == 30
        assert not set(train_ids) & set(heldout_ids)
        assert sorted(train_ids + heldout_ids) == list(range(len(rows[task])))
    assert heldout_doc_ids(heldout) == {t: sorted(r["doc_id"] for r in heldout if r["task"] == t) for t in TASKS}


def test_answers_match_the_source_rows(built, rows):
    _, train, heldout = built
    for record in train + heldout:
        task, row = record["task"], rows[record["task"]][record["doc_id"]]
        answer = record["answer"]
        assert re.fullmatch(ANSWER_WORDS[task], answer), (task, answer)
        assert record["output"] == f"the correct answer is {answer}" and record["input"] == ""
        if task == "boolq":
            assert answer == str(row["answer"]).lower()
            assert record["instruction"].endswith(f"{row['question']}?\n\nAnswer format: true/false")
            continue
        word = re.sub(r"\d", "", answer)
        n_options = {"piqa": 2, "winogrande": 2, "social_iqa": 3, "hellaswag": 4}.get(task) or len(row["choices"]["text"])
        assert record["instruction"].endswith("Answer format: " + "/".join(f"{word}{i}" for i in range(1, n_options + 1)))
        gold_index = {
            "piqa": lambda: row["label"],
            "social_iqa": lambda: int(row["label"]) - 1,
            "hellaswag": lambda: int(row["label"]),
            "winogrande": lambda: int(row["answer"]) - 1,
        }.get(task, lambda: row["choices"]["label"].index(row["answerKey"]))()
        assert int(answer[-1]) == gold_index + 1
        assert f"{word.capitalize()}{answer[-1]}: {gold_option_text(task, row, answer)}" in record["instruction"]


def test_exact_llm_adapters_wording(rows):
    boolq = commonsense_record("boolq", rows["boolq"][0], 0)
    assert boolq["instruction"] == (
        "Please answer the following question with true or false, question: "
        "does ethanol take more energy make that produces?\n\nAnswer format: true/false"
    )
    assert boolq["output"] == "the correct answer is false"
    wino = commonsense_record("winogrande", rows["winogrande"][0], 0)
    assert wino["instruction"] == (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n\n"
        "Option1: Sarah Option2: Maria Answer format: option1/option2"
    )
    assert wino["answer"] == "option2"
    arc = commonsense_record("arc_easy", rows["arc_easy"][0], 0)
    assert arc["instruction"] == (
        "Please choose the correct answer to the question: Which technology was developed most recently?\n\n"
        "Answer1: cellular telephone Answer2: television Answer3: refrigerator Answer4: airplane\n\n"
        "Answer format: answer1/answer2/answer3/answer4"
    )
    piqa = commonsense_record("piqa", rows["piqa"][0], 0)["instruction"]
    assert piqa.startswith("Please choose the correct solution to the question: How do I ready a guinea pig cage")
    assert "\n\nSolution1: Provide" in piqa and "\n\nSolution2: Provide" in piqa
    siqa = commonsense_record("social_iqa", rows["social_iqa"][0], 0)
    assert siqa["instruction"].startswith(
        "Please choose the correct answer to the question: Tracy didn't go home that evening and resisted "
        "Riley's attacks. What does Tracy need to do before this?\n\nAnswer1: make a new plan Answer2:"
    )
    assert siqa["answer"] == "answer3"
    hella = commonsense_record("hellaswag", rows["hellaswag"][0], 0)
    assert hella["instruction"].startswith(
        "Please choose the correct ending to complete the given sentence: Roof shingle removal: "
        "A man is sitting on a roof. he\n\nEnding1: is using wrap"
    )
    assert hella["answer"] == "ending4"


def test_deterministic_and_seeded(built, tmp_path):
    out, _, _ = built
    again = build_commonsense(tmp_path / "again", heldout_per_task=30, seed=0)
    assert [p.read_bytes() for p in again] == [(out / p.name).read_bytes() for p in again]
    other = load_records(build_commonsense(tmp_path / "other", heldout_per_task=30, seed=1)[1])
    assert heldout_doc_ids(other) != heldout_doc_ids(load_records(out / again[1].name))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_max_train_per_task_and_task_subset(tmp_path):
    train, heldout = build_commonsense(tmp_path, heldout_per_task=5, max_train_per_task=7, tasks=("piqa", "boolq"))
    train_records = load_records(train)
    assert Counter(r["task"] for r in train_records) == {"piqa": 7, "boolq": 7}
    assert Counter(r["task"] for r in load_records(heldout)) == {"piqa": 5, "boolq": 5}


def test_errors(rows, tmp_path):
    with pytest.raises(ValueError, match="unknown commonsense task"):
        build_commonsense(tmp_path, tasks=("mmlu",))
    with pytest.raises(ValueError, match="arc_challenge: cannot hold out 299 of 299 rows"):
        build_commonsense(tmp_path, heldout_per_task=299, tasks=("arc_challenge",))
    bad = dict(rows["winogrande"][3], answer="")
    with pytest.raises(ValueError, match=r"winogrande_xl/validation: row 3: malformed .*answer '' is not one of"):
        commonsense_record("winogrande", bad, 3)
    with pytest.raises(ValueError, match="record 0 has no 'task'/'doc_id'"):
        heldout_doc_ids([{"instruction": "a", "input": "", "output": "b"}])


@pytest.mark.slow
def test_command_line(tmp_path):
    cmd = [sys.executable, "-m", "data.commonsense", "--out", str(tmp_path), "--heldout-per-task", "3",
           "--max-train-per-task", "4", "--tasks", "winogrande,openbookqa"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "commonsense_train.json: 8 records" in done.stdout and "commonsense_heldout.json: 6 records" in done.stdout
    assert json.loads((tmp_path / "commonsense_heldout.json").read_text())[0]["task"] == "winogrande"
    bad = subprocess.run(cmd[:-1] + ["nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: unknown commonsense task(s) ['nope']; known: " + ", ".join(TASKS)
    ]
