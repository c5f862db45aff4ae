"""Prompt masking, packing and padding: exact labels on hand-checked examples and exact counts."""
import re

import pytest
import torch

from data import IGNORE_INDEX, build_dataset, tokenize_record
from data.packing import pack_examples, pad_examples
from data.templates import alpaca_prompt
from data.tokenize import encode_segments


class ByteTokenizer:
    """UTF-8 bytes are ids 0-255; bos 256, eos 257 (the tokenizer contract, nothing more)."""

    bos_id, eos_id, pad_id, vocab_size, chat_template = 256, 257, None, 258, "chatml"
    stop_ids = frozenset({257})

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + list(text.encode()) + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode()


TOK = ByteTokenizer()
M = IGNORE_INDEX


def masked_text(ids, labels):
    """(prompt text, trained text) of a tokenized record."""
    return TOK.decode([i for i, l in zip(ids, labels) if l == M]), TOK.decode([l for l in labels if l != M])


def test_alpaca_masking_hand_checked():
    ids, labels = tokenize_record(TOK, {"instruction": "Hi", "input": "", "output": "ok"})
    prompt = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nHi\n\n### Response:\n"
    )
    assert ids == [256] + list(prompt.encode()) + [ord("o"), ord("k"), 257]
    assert labels == [M] * (1 + len(prompt)) + [ord("o"), ord("k"), 257]


def test_alpaca_with_input_and_unmasked():
    record = {"instruction": "Add.", "input": "2 3", "output": "5"}
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 3\n\n### Response:\n"
    )
    assert alpaca_prompt("Add.", "2 3") == expected
    ids, labels = tokenize_record(TOK, record)
    assert masked_text(ids, labels) == (expected, "5")
    ids_all, labels_all = tokenize_record(TOK, record, mask_prompt=False)
    assert ids_all == ids and labels_all == ids


def test_text_and_text2text_records():
    ids, labels = tokenize_record(TOK, {"text": "abc"})
    assert ids == [256, 97, 98, 99, 257] and labels == [M, 97, 98, 99, 257]  # bos is never a target
    ids, labels = tokenize_record(TOK, {"input": "Q:", "output": "A"})
    assert ids == [256, ord("Q"), ord(":"), ord("A"), 257]
    assert labels == [M, M, M, ord("A"), 257]


def test_unknown_template_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt template 'vicuna'"):
        tokenize_record(TOK, {"text": "a"}, template="vicuna")


def test_packing_concatenates_and_labels_follow_their_tokens():
    records = [{"text": "a" * 5}, {"instruction": "x", "output": "yz"}, {"text": "b" * 7}]
    examples = [tokenize_record(TOK, r) for r in records]
    stream_ids = [t for ids, _ in examples for t in ids]
    stream_labels = [t for _, labels in examples for t in labels]
    n = len(stream_ids) // 16
    blocks = [(stream_ids[i : i + 16], stream_labels[i : i + 16]) for i in range(0, 16 * n, 16)]
    kept = [b for b in blocks if any(l != M for l in b[1][1:])]  # blocks inside the long prompt teach nothing
    assert 0 < len(kept) < n
    with pytest.warns(UserWarning, match=f"'dropped_no_target': {n - len(kept)}"):
        ds = build_dataset(records, TOK, seq_len=16)
    assert len(ds) == len(kept) and ds.stats["dropped_tail_tokens"] == len(stream_ids) - 16 * n
    assert ds.input_ids.tolist() == [ids for ids, _ in kept] and ds.labels.tolist() == [labels for _, labels in kept]
    assert ds.stats["tokens"] == len(stream_ids) and ds.stats["truncated"] == 0
    # Document boundaries: each eos is followed by the next document's bos.
    flat = ds.input_ids.flatten().tolist()
    assert all(flat[i + 1] == 256 for i, t in enumerate(flat[:-1]) if t == 257)


def test_pack_examples_exact_blocks():
    examples = [([1, 2, 3], [M, 2, 3]), ([4, 5, 6, 7, 8], [4, 5, 6, 7, 8])]
    ids, labels, tail = pack_examples(examples, 3)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 6]] and labels.tolist() == [[M, 2, 3], [4, 5, 6]] and tail == 2
    with pytest.raises(ValueError, match="example 1: input_ids and labels differ in length"):
        pack_examples([([1], [1]), ([1, 2], [1])], 2)


def test_padding_truncation_counts_and_pad_labels():
    examples = [([1, 2], [M, 2]), ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), ([9, 9, 9, 9], [M, M, 9, 9])]
    ids, labels, truncated = pad_examples(examples, 4, pad_id=0)
    assert ids.tolist() == [[1, 2, 0, 0], [1, 2, 3, 4], [9, 9, 9, 9]]
    assert labels.tolist() == [[M, 2, M, M], [1, 2, 3, 4], [M, M, 9, 9]]
    assert truncated == 1


def test_padded_dataset_uses_eos_without_pad_id_and_drops_rows_without_target():
    long_prompt = {"instruction": "x" * 200, "output": "answer"}  # the response is cut off entirely
    long_text = {"text": "t" * 200}
    short = {"instruction": "q", "output": "a"}
    with pytest.warns(UserWarning, match=r"'truncated': 2, 'dropped_no_target': 1"):
        ds = build_dataset([short, long_text, long_prompt], TOK, seq_len=150, pack=False)
    assert len(ds) == 2 and ds.stats["truncated"] == 2 and ds.stats["dropped_no_target"] == 1
    ids, labels = tokenize_record(TOK, short)
    assert ds.input_ids[0, : len(ids)].tolist() == ids and ds.labels[0, : len(ids)].tolist() == labels
    assert (ds.input_ids[0, len(ids):] == TOK.eos_id).all() and (ds.labels[0, len(ids):] == M).all()
    assert ds.input_ids[1].tolist() == [256] + [ord("t")] * 149  # truncated: no eos
    assert ds.labels[1].tolist() == [M] + [ord("t")] * 149


def test_empty_records_are_dropped_and_counted():
    records = [{"text": "  "}, {"instruction": "q", "output": ""}, {"text": "real text " * 4}]
    with pytest.warns(UserWarning, match="'dropped_empty': 2"):
        ds = build_dataset(records, TOK, seq_len=8)
    assert ds.stats["dropped_empty"] == 2 and ds.stats["records"] == 3


def test_build_dataset_errors():
    with pytest.raises(ValueError, match="no training rows of 512 tokens from 1 records"):
        build_dataset([{"text": "short"}], TOK, seq_len=512)
    with pytest.raises(ValueError, match="record 1: unknown prompt template 'x'"):
        build_dataset([{"text": ""}, {"text": "b"}], TOK, seq_len=8, template="x")
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        build_dataset([{"text": "short"}], TOK, seq_len=1)

    class Small(ByteTokenizer):
        vocab_size = 100

    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary of 100"):
        build_dataset([{"text": "zzzz"}], Small(), seq_len=4)


def test_dataset_rows_are_long_tensors():
    ds = build_dataset([{"text": "abcdefgh"}], TOK, seq_len=5)
    assert ds.input_ids.dtype == ds.labels.dtype == torch.long and ds.seq_len == 5
    ids, labels = ds[0]
    assert ids.tolist() == [256, 97, 98, 99, 100]


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]


def test_chat_trains_only_on_assistant_turns():
    ids, labels = tokenize_record(TOK, {"messages": CONVERSATION})
    prompt, trained = masked_text(ids, labels)
    # No stop token inside the byte tokenizer's turns, so eos is appended after the last one.
    assert trained == "Hello.<|im_end|>\nBye!<|im_end|>\n" and labels[-1] == TOK.eos_id
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    # The trained spans sit where the conversation puts them: ids are the rendered text in order.
    assert TOK.decode(ids) == prompt[:-len("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")] + \
        "Hello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye!<|im_end|>\n"


def test_instruction_with_chat_template():
    ids, labels = tokenize_record(TOK, {"instruction": "Q?", "input": "ctx", "output": "A"}, template="chat")
    assert masked_text(ids, labels) == ("<|im_start|>user\nQ?\n\nctx<|im_end|>\n<|im_start|>assistant\n", "A<|im_end|>\n")


def test_segments_are_encoded_as_one_text_and_a_straddling_token_is_trained():
    words = lambda text: re.findall(r"\w+|\W", text)  # a tokenizer whose tokens can span a segment boundary
    ids, trainable = encode_segments(words, [("Q: The", False), ("re it", True), (" is. ", True), ("Q2", False)])
    assert ids == ["Q", ":", " ", "There", " ", "it", " ", "is", ".", " ", "Q2"]
    assert trainable == [False] * 3 + [True] * 7 + [False]


@pytest.fixture(scope="module")
def mistral_tokenizer():
    from common.assets import asset_path
    from model.tokenizer import load_tokenizer

    return load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral")


def test_real_mistral_ids_are_the_whole_text_encoding(mistral_tokenizer):
    from model.chat import encode_chat

    tok = mistral_tokenizer
    # Encoding " a</s>" on its own would add a lone "▁" (28705) before "▁a" (264).
    ids, labels = tokenize_record(tok, {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})
    assert ids == tok.encode_special("<s>[INST] u [/INST] a</s>") and ids[-3:] == [28793, 264, 2]
    assert labels == [M] * (len(ids) - 2) + [264, 2]  # </s> closes the turn: no second eos
    ids, labels = tokenize_record(tok, {"messages": CONVERSATION})
    assert ids == encode_chat(tok, CONVERSATION, add_generation_prompt=False)
    assert tok.decode([l for l in labels if l != M]) == "Hello. Bye!"
    assert labels.count(tok.eos_id) == 2 and ids[-1] == tok.eos_id
    # Alpaca: "Response:\nThe" is one text, so "The" has no "▁" of its own.
    record = {"instruction": "Name a colour.", "input": "", "output": "The sky is blue."}
    ids, labels = tokenize_record(tok, record)
    assert ids == tok.encode(alpaca_prompt(record["instruction"]) + record["output"], bos=True, eos=True)
    trained = [l for l in labels if l != M]
    assert tok.decode(trained) == "The sky is blue." and ids[-len(trained):] == trained


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from common.assets import asset_path
    from model.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(asset_path("smollm2-135m"))


@pytest.mark.slow
def test_real_smollm2_tokenizer(smollm2_tokenizer):
    from model.chat import encode_chat

    tok = smollm2_tokenizer
    record = {"instruction": "Please answer ... question: is it?\n\nAnswer format: true/false", "input": "",
              "output": "the correct answer is true"}
    ids, labels = tokenize_record(tok, record)
    trained = [l for l in labels if l != M]
    assert tok.bos_id is None and ids[0] != M  # SmolLM2 adds no bos
    assert trained[-1] == tok.eos_id and tok.decode(trained[:-1]) == "the correct answer is true"
    assert tok.decode([i for i, l in zip(ids, labels) if l == M]) == alpaca_prompt(record["instruction"])
    assert ids == tok.encode(alpaca_prompt(record["instruction"]) + record["output"], eos=True)
    # Chat: the ids are exactly the model's own chat encoding; its turn end <|im_end|> stops, so no extra eos.
    ids, labels = tokenize_record(tok, {"messages": CONVERSATION})
    assert ids == encode_chat(tok, CONVERSATION, add_generation_prompt=False)
    trained = [l for l in labels if l != M]
    assert tok.decode(trained, skip_special=False) == "Hello.<|im_end|>\nBye!<|im_end|>\n"
    ds = build_dataset([record, {"messages": CONVERSATION}], tok, seq_len=128, pack=False)
    assert len(ds) == 2 and ds.stats["truncated"] == 0
    assert ds.input_ids[1, : len(ids)].tolist() == ids and (ds.input_ids[1, len(ids):] == tok.pad_id).all()
