"""Readers: every format and record kind, and a clear error (file + record) for every kind of bad data."""
import json

import pytest

from data.records import load_records

INSTRUCTIONS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate.", "input": "chat", "output": "cat", "answer": "cat"},
    {"instruction": "Say hi.", "output": "hi"},  # LLM-Adapters files may omit input
]
CHAT = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}]}
]


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_alpaca_json_and_jsonl_give_the_same_records(tmp_path):
    from_json = load_records(write(tmp_path, "a.json", INSTRUCTIONS))
    jsonl = "\n".join(json.dumps(r) for r in INSTRUCTIONS) + "\n\n"
    from_jsonl = load_records(write(tmp_path, "a.jsonl", jsonl))
    assert from_json == from_jsonl
    assert from_json[0] == INSTRUCTIONS[0]
    assert from_json[1]["answer"] == "cat"
    assert from_json[2] == {"instruction": "Say hi.", "input": "", "output": "hi"}


def test_commonsense_metadata_is_kept(tmp_path):
    record = {"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true",
              "task": "boolq", "doc_id": 7}
    assert load_records(write(tmp_path, "c.json", [record])) == [record]


def test_lmflow_text_only_and_text2text(tmp_path):
    text_only = {"type": "text_only", "instances": [{"text": "one"}, {"text": "two"}]}
    assert load_records(write(tmp_path, "t.json", text_only)) == [{"text": "one"}, {"text": "two"}]
    t2t = {"type": "text2text", "instances": [{"input": "2+2=", "output": "4"}]}
    assert load_records(write(tmp_path, "tt.json", t2t)) == [{"input": "2+2=", "output": "4"}]


def test_chat_messages(tmp_path):
    assert load_records(write(tmp_path, "chat.jsonl", json.dumps(CHAT[0]))) == CHAT


def test_plain_text_is_split_into_paragraphs(tmp_path):
    text = "First paragraph\nstill first.\n\n\n  \nSecond one.\n\nThird.\n"
    records = load_records(write(tmp_path, "doc.txt", text))
    assert records == [{"text": "First paragraph\nstill first."}, {"text": "Second one."}, {"text": "Third."}]
    assert load_records(write(tmp_path, "one.txt", "no blank\nlines here")) == [{"text": "no blank\nlines here"}]


def test_unknown_fields_warn_once_with_their_names_and_are_dropped(tmp_path):
    raw = [{"instruction": "a", "output": "b", "id": 1}, {"instruction": "c", "output": "d", "source": "x", "id": 2}]
    with pytest.warns(UserWarning, match=r"'id' \(first in record 0\), 'source' \(first in record 1\)") as caught:
        records = load_records(write(tmp_path, "extra.json", raw))
    assert len(caught) == 1
    assert records[1] == {"instruction": "c", "input": "", "output": "d"}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.json", "", r"empty\.json: empty file"),
        ("blank.txt", "\n \n\n", r"blank\.txt: no records"),
        ("list.json", [], r"list\.json: no records"),
        ("broken.json", "[{", r"broken\.json: not valid JSON"),
        ("broken.jsonl", '{"text": "a"}\n{oops\n', r"broken\.jsonl: line 2 \(record 1\): not valid JSON"),
        ("missing.json", [{"instruction": "a", "output": "b"}, {"instruction": "c"}], r"missing\.json: record 1: missing field\(s\) \['output'\]"),
        ("type.json", [{"instruction": "a", "output": 5}], r"type\.json: record 0: field 'output' must be a string"),
        ("mixed.json", [{"text": "a"}, {"instruction": "a", "output": "b"}], r"mixed\.json: record 1: .*kind 'instruction' but the file holds 'text'"),
        ("nokind.json", [{"question": "a"}], r"nokind\.json: record 0: fields \['question'\] match no record kind"),
        ("scalar.json", ["just a string"], r"scalar\.json: record 0: expected an object"),
        ("dict.json", {"text": "a"}, r"dict\.json: expected a JSON list"),
        ("lmflow.json", {"type": "conversation", "instances": []}, r"lmflow\.json: LMFlow type 'conversation' is not supported"),
        ("lmflow2.json", {"type": "text_only", "instances": [{"input": "a", "output": "b"}]}, r"lmflow2\.json: LMFlow type 'text_only' holds 'text2text'"),
        ("role.json", [{"messages": [{"role": "bot", "content": "x"}]}], r"role\.json: record 0: message 0 has role 'bot'"),
        ("noasst.json", [{"messages": [{"role": "user", "content": "x"}]}], r"noasst\.json: record 0: conversation has no assistant"),
        ("order.json", [{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}],
         r"order\.json: record 0: message 1 has role 'system', expected 'assistant'"),
        ("docid.json", [{"instruction": "a", "output": "b", "doc_id": -1}], r"docid\.json: record 0: field 'doc_id'"),
        ("data.csv", "a,b\n", r"data\.csv: unknown data file extension '\.csv'"),
    ],
)
def test_bad_data_names_file_and_record(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        load_records(write(tmp_path, name, content))


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: no such data file"):
        load_records(tmp_path / "nope.json")
    path = tmp_path / "latin.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8"):
        load_records(path)
