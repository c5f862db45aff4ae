"""Harness task templates, few-shot layout, WinoGrande partial requests, data checks (no model needed)."""
import json

import pytest

from data.arrow import DATASET_DIRS
from eval import mmlu
from common.io import read_objects
from eval.docs import load_docs
from eval.fewshot import choice_requests, fewshot_docs, fewshot_prefix, normalisation_lengths
from eval.tasks import COMMONSENSE, get_task, resolve_tasks

ARC_DOC = {"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}, "answerKey": "B"}
DOCS = {
    "boolq": [
        {"passage": "Cats are mammals.", "question": "are cats mammals", "answer": True},
        {"passage": "The sun is cold.", "question": "is the sun cold", "answer": False},
    ],
    "piqa": [
        {"goal": "Boil water", "sol1": "Use a pot.", "sol2": "Use a sieve.", "label": 0},
        {"goal": "Dry hair", "sol1": "Use water.", "sol2": "Use a towel.", "label": 1},
    ],
    "social_iqa": [
        {"context": "Ann won.", "question": "How does Ann feel?", "answerA": "sad", "answerB": "happy", "answerC": "bored", "label": "2"},
        {"context": "Bo fell.", "question": "What will Bo do?", "answerA": "get up", "answerB": "fly", "answerC": "sing", "label": "1"},
    ],
    "hellaswag": [
        {"activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he", "label": "1",
         "endings": ["sings [title] loudly.", "puts them in a pan."]},
        {"activity_label": "Running", "ctx_a": "A girl runs.", "ctx_b": "she", "label": "0",
         "endings": ["stops at the line.", "swims."]},
    ],
    "winogrande": [
        {"sentence": "The cup fell off the table because _ was slippery.", "option1": "the cup", "option2": "the table", "answer": "1"},
        {"sentence": "Tom gave Sam a gift because _ was kind.", "option1": "Tom", "option2": "Sam", "answer": "1"},
    ],
    "arc_easy": [ARC_DOC, {**ARC_DOC, "question": "Which is solid?", "answerKey": "C"}],
    "arc_challenge": [ARC_DOC, {**ARC_DOC, "question": "Which is solid?", "answerKey": "C"}],
    "openbookqa": [
        {"question_stem": "The moon orbits", "choices": {"text": ["the earth", "mars"], "label": ["A", "B"]}, "answerKey": "A"},
        {"question_stem": "Plants need", "choices": {"text": ["sunlight", "sand"], "label": ["A", "B"]}, "answerKey": "A"},
    ],
}

# One-shot prompt of doc 1 with doc 0 as the example, written out from the templates in docs/method.md, "Evaluation protocols".
EXPECTED = {
    "boolq": ("Cats are mammals.\nQuestion: are cats mammals?\nAnswer: yes\n\n"
              "The sun is cold.\nQuestion: is the sun cold?\nAnswer:", [" no", " yes"], 0),
    "piqa": ("Question: Boil water\nAnswer: Use a pot.\n\nQuestion: Dry hair\nAnswer:", [" Use water.", " Use a towel."], 1),
    "social_iqa": ("Q: Ann won. How does Ann feel?\nA: happy\n\nQ: Bo fell. What will Bo do?\nA:", [" get up", " fly", " sing"], 0),
    "hellaswag": ("Cooking: A man cuts onions. He puts them in a pan.\n\nRunning: A girl runs. She",
                  [" stops at the line.", " swims."], 0),
    "arc_easy": ("Question: Which is a gas?\nAnswer: steam\n\nQuestion: Which is solid?\nAnswer:", [" ice", " steam", " rock"], 2),
    "openbookqa": ("The moon orbits the earth\n\nPlants need", [" sunlight", " sand"], 0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_shot_prompt_matches_harness_layout(name):
    task = get_task(name)
    docs = DOCS[name]
    context, continuations, gold = EXPECTED[name]
    requests = choice_requests(task, docs[1], fewshot_prefix(task, [docs[0]]))
    assert requests == [(context, c) for c in continuations]
    assert task.gold(docs[1]) == gold


def test_winogrande_partial_requests_share_the_suffix():
    task = get_task("winogrande")
    docs = DOCS["winogrande"]
    requests = choice_requests(task, docs[1], fewshot_prefix(task, [docs[0]]))
    shot = "The cup fell off the table because the cup was slippery.\n\n"
    assert requests == [(shot + "Tom gave Sam a gift because Tom", " was kind."),
                        (shot + "Tom gave Sam a gift because Sam", " was kind.")]
    assert normalisation_lengths(task, docs[1]) == [len("was kind.")] * 2


def test_hellaswag_cleanup_of_wikihow_tags():
    task = get_task("hellaswag")
    doc = {"activity_label": "Home [header]", "ctx_a": "Clean it. [title] Wipe", "ctx_b": "the  sink", "label": "0", "endings": ["now.", "x"]}
    assert task.text(doc) == "Home : Clean it.. Wipe The sink"


def test_mmlu_five_shot_uses_subject_header_and_first_dev_rows():
    task = get_task("mmlu_high_school_us_history")
    dev = [{"question": f" Q{i}? ", "choices": ["a", "b", "c", "d"], "answer": i % 4, "subject": "x"} for i in range(6)]
    doc = {"question": "Who?", "choices": ["w", "x", "y", "z"], "answer": 3, "subject": "x"}
    shots = fewshot_docs(task, dev, 5, doc_id=0, seed=1)
    assert shots == dev[:5]
    context, continuation = choice_requests(task, doc, fewshot_prefix(task, shots))[2]
    header = "The following are multiple choice questions (with answers) about high school us history.\n\n"
    example0 = "Q0?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
    assert context.startswith(header + example0 + "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n")
    assert context.endswith("Q4?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\nWho?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert continuation == " C"


def test_same_split_fewshot_excludes_the_doc_and_is_seeded_per_doc():
    task = get_task("arc_easy")
    pool = [{"i": i} for i in range(10)]
    for doc_id in range(10):
        shots = fewshot_docs(task, pool, 9, doc_id, seed=3)
        assert pool[doc_id] not in shots and len(shots) == 9
    assert fewshot_docs(task, pool, 3, 4, seed=3) == fewshot_docs(task, pool, 3, 4, seed=3)
    assert any(fewshot_docs(task, pool, 3, 4, seed=s) != fewshot_docs(task, pool, 3, 4, seed=3) for s in range(4, 9))
    with pytest.raises(ValueError, match="10 rows"):
        fewshot_docs(task, pool, 10, 0, seed=3)


def test_names_and_groups_resolve():
    assert [t.name for t in resolve_tasks("commonsense")] == list(COMMONSENSE) and len(COMMONSENSE) == 8
    names = [t.name for t in resolve_tasks("ARC-Easy, siqa,mmlu")]
    assert names[:2] == ["arc_easy", "social_iqa"] and len(names) == 2 + 57
    assert len(resolve_tasks("mmlu_stem")) == len(mmlu.CATEGORIES["stem"]) == 19
    assert sum(len(s) for s in mmlu.CATEGORIES.values()) == 57 == len(set(mmlu.SUBJECTS))


def test_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown task 'arc_medium'"):
        resolve_tasks("arc_easy,arc_medium")


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_docs(get_task("piqa"), "validation", tmp_path / "nope.jsonl")


@pytest.mark.parametrize("row, cause", [
    ({"goal": "g", "sol1": "a", "label": 0}, "sol2"),
    ({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "gold index 2"),
])
def test_record_with_wrong_fields_is_a_clear_error(tmp_path, row, cause):
    path = tmp_path / "piqa.jsonl"
    path.write_text(json.dumps(DOCS["piqa"][0]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"piqa.jsonl: record 1: .*{cause}"):
        load_docs(get_task("piqa"), "validation", path)


def test_json_and_jsonl_readers_agree(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(DOCS["boolq"]))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS["boolq"]))
    assert read_objects(tmp_path / "a.json") == read_objects(tmp_path / "a.jsonl") == DOCS["boolq"]
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="bad.json: line 1: not valid JSON"):
        read_objects(tmp_path / "bad.json")


@pytest.mark.parametrize("name", list(COMMONSENSE))
def test_real_validation_split_loads_and_renders(name):
    task = get_task(name)
    docs = load_docs(task, "validation")  # checks every row renders
    assert len(docs) >= 299
    context, continuation = choice_requests(task, docs[0], fewshot_prefix(task, fewshot_docs(task, docs, 5, 0, 1234)))[0]
    assert context.count("\n\n") >= 5 and continuation.startswith(" ")


def test_real_mmlu_every_subject_loads_and_renders():
    assert set(DATASET_DIRS) >= set(COMMONSENSE) | {"mmlu"}
    n_test = 0
    for task in resolve_tasks("mmlu"):
        dev, test = load_docs(task, "dev"), load_docs(task, "test")
        context, _ = choice_requests(task, test[0], fewshot_prefix(task, fewshot_docs(task, dev, 5, 0, 0)))[0]
        assert context.startswith(mmlu.subject_header(task.subject)) and context.count("\nAnswer:") == 6
        n_test += len(test)
    assert n_test == 14042
