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
        ("broken.json", "[{", r"broken\.json: line 1: not valid JSON"),
        ("broken.jsonl", '{"text": "a"}\n{oops\n', r"broken\.jsonl: line 2: not valid JSON"),
        ("missing.json", [{"instruction": "a", "output": "b"}, {"instruction": "c"}], r"missing\.json: line 1 \(record 1\): missing field\(s\) \['output'\]"),
        ("type.json", [{"instruction": "a", "output": 5}], r"type\.json: line 1 \(record 0\): field 'output' must be a string"),
        ("mixed.json", [{"text": "a"}, {"instruction": "a", "output": "b"}], r"mixed\.json: line 1 \(record 1\): .*kind 'instruction' but the file holds 'text'"),
        ("nokind.json", [{"question": "a"}], r"nokind\.json: line 1 \(record 0\): fields \['question'\] match no record kind"),
        ("scalar.json", ["just a string"], r"scalar\.json: line 1 \(record 0\): expected an object"),
        ("dict.json", {"text": "a"}, r"dict\.json: expected a JSON list"),
        ("lmflow.json", {"type": "conversation", "instances": []}, r"lmflow\.json: LMFlow type 'conversation' is not supported"),
        ("lmflow2.json", {"type": "text_only", "instances": [{"input": "a", "output": "b"}]}, r"lmflow2\.json: LMFlow type 'text_only' holds 'text2text'"),
        ("role.json", [{"messages": [{"role": "bot", "content": "x"}]}], r"role\.json: line 1 \(record 0\): message 0 has role 'bot'"),
        ("noasst.json", [{"messages": [{"role": "user", "content": "x"}]}], r"noasst\.json: line 1 \(record 0\): conversation has no assistant"),
        ("order.json", [{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}],
         r"order\.json: line 1 \(record 0\): message 1 has role 'system', expected 'assistant'"),
        ("docid.json", [{"instruction": "a", "output": "b", "doc_id": -1}], r"docid\.json: line 1 \(record 0\): field 'doc_id'"),
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


def test_sharegpt_conversations_read_as_messages(tmp_path):
    sharegpt = {"id": "x1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello.", "weight": 1}]}  # fmt: skip
    with pytest.warns(UserWarning, match=r"'id'"):
        assert load_records(write(tmp_path, "sg.jsonl", json.dumps(sharegpt))) == CHAT
    bad = {"conversations": [{"from": "robot", "value": "x"}]}
    with pytest.raises(ValueError, match=r"bad\.json: line 1 \(record 0\): conversation turn 0 is from 'robot'"):
        load_records(write(tmp_path, "bad.json", [bad]))


def test_extra_keys_in_a_message_are_ignored(tmp_path):
    messages = [dict(m, name="n", tool_calls=None) for m in CHAT[0]["messages"]]
    assert load_records(write(tmp_path, "extra.jsonl", json.dumps({"messages": messages}))) == CHAT


def test_parquet_arrow_and_shard_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = INSTRUCTIONS + [{"instruction": "No input column value.", "output": "ok"}]
    table = pa.Table.from_pylist([dict(r, input=r.get("input"), answer=r.get("answer")) for r in rows])  # absent: null
    expected = load_records(write(tmp_path, "a.json", rows))
    pq.write_table(table, tmp_path / "train.parquet")
    assert load_records(tmp_path / "train.parquet") == expected
    with pa.OSFile(str(tmp_path / "train.arrow"), "wb") as sink:  # HF datasets: the IPC stream format
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    assert load_records(tmp_path / "train.arrow") == expected
    shards = tmp_path / "saved"  # datasets.save_to_disk: data-0000N-of-0000M.arrow shards + json files
    shards.mkdir()
    for i, part in enumerate((table.slice(0, 2), table.slice(2))):
        with pa.ipc.new_stream(str(shards / f"data-{i:05d}-of-00002.arrow"), part.schema) as writer:
            writer.write_table(part)
    (shards / "state.json").write_text("{}")
    assert load_records(shards) == expected
    chat = pa.Table.from_pylist(CHAT)
    pq.write_table(chat, tmp_path / "chat.parquet")
    assert load_records(tmp_path / "chat.parquet") == CHAT
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": 5}]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: record 0: field 'output' must be a string"):
        load_records(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable Parquet file"):
        load_records(tmp_path / "junk.parquet")
