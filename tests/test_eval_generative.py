"""LLM-Adapters protocol: prompt, answer extraction, beam search with the KV cache."""
import dataclasses
import json

import pytest
import torch

from common.errors import UserError
from eval.generative import alpaca_prompt, extract_answer, read_llm_adapters, run_generative
from model import Transformer, get_config
from model.generate import beam_search, generate


class ByteTokenizer:
    bos_id, eos_id, pad_id, vocab_size, stop_ids = None, 0, None, 256, frozenset({0})

    def encode(self, text, bos=False, eos=False):
        return list(text.encode()) + [0] * eos

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Transformer(get_config("tiny")).eval()


def test_alpaca_prompt_text():
    assert alpaca_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert alpaca_prompt("Add.", "2 3").endswith("### Instruction:\nAdd.\n\n### Input:\n2 3\n\n### Response:\n")
    assert alpaca_prompt("Say hi.", indent="  ").endswith("\n\n  ### Instruction:\n  Say hi.\n\n  ### Response:\n  ")


@pytest.mark.parametrize("dataset, text, expected", [
    ("boolq", "the correct answer is false, not true", "false"),
    ("piqa", "Solution: solution2 because solution1 fails", "solution2"),
    ("social_i_qa", "answer3", "answer3"),
    ("ARC-Easy", "the answer is answer4.", "answer4"),
    ("arc_challenge", "answer5 then answer1", "answer5"),
    ("openbookqa", "the correct answer is answer1", "answer1"),
    ("hellaswag", "ending3", "ending3"),
    ("winogrande", "option2 is correct", "option2"),
    ("winogrande", "Option 2", ""),
    ("boolq", "True", ""),
])
def test_answer_extraction_takes_the_first_match(dataset, text, expected):
    assert extract_answer(dataset, text) == expected


def test_unknown_dataset_and_bad_records_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="--dataset gsm8k: no answer pattern for it"):
        extract_answer("gsm8k", "42")
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"instruction": "x", "answer": "true"}, {"instruction": "y", "output": "z"}]))
    with pytest.raises(ValueError, match=r"test.json: record 1: lacks string field\(s\) \['answer'\]"):
        read_llm_adapters(str(path))


def _naive_beam(model, prompt, steps, k):
    """Beam search that recomputes every sequence from scratch (no cache)."""
    beams = [([], 0.0)]
    with torch.no_grad():
        for _ in range(steps):
            candidates = []
            for seq, score in beams:
                lp = model(torch.tensor([prompt + seq]))[0, -1].log_softmax(-1)
                top = lp.topk(k)
                candidates += [(seq + [t], score + v) for v, t in zip(top.values.tolist(), top.indices.tolist())]
            beams = sorted(candidates, key=lambda c: -c[1])[:k]
    return beams[0][0]


@pytest.mark.slow
def test_beam_search_with_kv_cache_matches_a_cache_free_search(tiny):
    prompt = list(b"Question: why?\n")
    for k in (2, 3):
        assert beam_search(tiny, prompt, 6, num_beams=k) == _naive_beam(tiny, prompt, 6, k)
    assert beam_search(tiny, prompt, 6, num_beams=1) == generate(tiny, prompt, 6)


def test_beam_search_stops_at_a_stop_token(tiny):
    prompt = list(b"hi")
    greedy = generate(tiny, prompt, 4)
    out = beam_search(tiny, prompt, 10, num_beams=1, stop_ids={greedy[1]})
    assert out == greedy[:2]


def test_run_generative_scores_extracted_answers():
    torch.manual_seed(0)
    tiny = Transformer(dataclasses.replace(get_config("tiny"), max_seq_len=256)).eval()
    rows = [{"instruction": "Is it? Answer true or false.", "answer": "true"}] * 2
    result = run_generative(tiny, ByteTokenizer(), "boolq", rows, num_beams=2, max_new_tokens=4)
    assert result["n"] == 2 and len(result["records"]) == 2
    for r in result["records"]:
        assert r["prediction"] == extract_answer("boolq", r["output"]) and r["correct"] == (r["prediction"] == "true")
    assert result["acc"] == sum(r["correct"] for r in result["records"]) / 2
    assert not tiny.training
