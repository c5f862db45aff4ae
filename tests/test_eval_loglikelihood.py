"""Context/continuation tokenisation, log-likelihood scoring against a direct sum, acc vs acc_norm."""
import pytest
import torch

from common.assets import asset_path
from eval import evaluate
from eval.fewshot import choice_requests
from eval.harness import _record, mean_stderr
from eval.loglikelihood import encode_pair, loglikelihoods, split_context
from eval.tasks import get_task
from model import Transformer, get_config
from model.tokenizer import load_tokenizer


class ByteTokenizer:
    """UTF-8 bytes as ids, so any text fits the tiny model's 256-token vocabulary."""

    bos_id, eos_id, pad_id, vocab_size = 1, 2, None, 256

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + list(text.encode()) + [self.eos_id] * eos


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(asset_path("llama3-tokenizer"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Transformer(get_config("tiny")).eval()


def test_trailing_space_moves_to_the_continuation(llama3):
    assert split_context("Answer: ", "yes") == ("Answer:", " yes")
    assert split_context("Q\n\n", "x") == ("Q", "\n\nx")
    # "Answer:" = [16533, 25]; " yes" = [10035] (not "Answer: " + "yes" = [..., 220] + [9891]).
    assert encode_pair(llama3, "Answer: ", "yes") == ([16533, 25], [10035])
    assert encode_pair(llama3, "Answer:", " yes", add_bos=True) == ([128000, 16533, 25], [10035])


def test_continuation_is_the_tail_of_the_joint_tokenisation(llama3):
    # "The number is 12" -> [..., 220, 717 ("12")]; "The number is 1234" -> [..., 220, 4513 ("123"), 19 ("4")]:
    # the continuation is what follows len(context tokens) in the joint tokens, i.e. just "4".
    context, continuation = encode_pair(llama3, "The number is 12", "34")
    assert context == [791, 1396, 374, 220, 717] and continuation == [19]
    with pytest.raises(ValueError, match="adds no token"):
        encode_pair(llama3, "x = 1", "00")  # "x = 100" has as many tokens as "x = 1"


def test_empty_context_is_conditioned_on_bos():
    assert encode_pair(ByteTokenizer(), "", " a") == ([1], [32, 97])


@torch.no_grad()
def _direct_loglikelihood(model, context, continuation):
    tokens = torch.tensor([(context + continuation)[:-1]])
    logprobs = model(tokens).log_softmax(-1)[0]
    n = len(context)
    return sum(float(logprobs[n - 1 + i, t]) for i, t in enumerate(continuation))


def _random_pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        ctx = torch.randint(3, 256, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
        cont = torch.randint(3, 256, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        pairs.append((ctx, cont))
    shared = pairs[0][0]
    pairs += [(shared, [7]), (shared, [9]), (shared, [7]), (shared + [7], [11, 12])]  # prefix-sharing rows
    return pairs


def test_loglikelihood_equals_direct_log_softmax_sum(tiny):
    pairs = _random_pairs(12, seed=1)
    scored = loglikelihoods(tiny, pairs, batch_size=5)
    for (ctx, cont), (ll, greedy) in zip(pairs, scored):
        assert ll == pytest.approx(_direct_loglikelihood(tiny, ctx, cont), abs=1e-4)
        with torch.no_grad():
            logits = tiny(torch.tensor([ctx + cont]))[0, len(ctx) - 1 : -1]
        assert greedy == (logits.argmax(-1).tolist() == cont)


def test_batching_and_sorting_do_not_change_any_number(tiny):
    pairs = _random_pairs(20, seed=2)
    reference = [loglikelihoods(tiny, [p], batch_size=1)[0] for p in pairs]
    for batch_size in (1, 3, 64):
        for order in (list(range(len(pairs))), list(reversed(range(len(pairs))))):
            scored = loglikelihoods(tiny, [pairs[i] for i in order], batch_size=batch_size)
            for i, (ll, greedy) in zip(order, scored):
                assert ll == pytest.approx(reference[i][0], abs=1e-5) and greedy == reference[i][1]


def test_shared_context_kv_path_gives_the_same_numbers(tiny):
    g = torch.Generator().manual_seed(3)
    pairs = []
    for _ in range(4):
        ctx = torch.randint(3, 256, (int(torch.randint(5, 60, (1,), generator=g)),), generator=g).tolist()
        pairs += [(ctx, torch.randint(3, 256, (n,), generator=g).tolist()) for n in (1, 3, 6, 2)]
    rows = loglikelihoods(tiny, pairs, batch_size=4)
    shared = loglikelihoods(tiny, pairs, batch_size=4, share_context=True)
    for (ctx, cont), (ll_row, greedy_row), (ll, greedy) in zip(pairs, rows, shared):
        assert ll == pytest.approx(ll_row, abs=1e-4) and greedy == greedy_row
        assert ll == pytest.approx(_direct_loglikelihood(tiny, ctx, cont), abs=1e-4)


def test_left_truncation_keeps_the_last_max_len_tokens(tiny):
    ctx, cont = list(range(3, 200)), [5, 6]  # 199 tokens > max_seq_len 128
    (ll, _), = loglikelihoods(tiny, [(ctx, cont)])
    kept = (ctx + cont)[-129:]
    assert ll == pytest.approx(_direct_loglikelihood(tiny, kept[:-2], kept[-2:]), abs=1e-4)


def test_acc_and_acc_norm_disagree_on_a_crafted_case():
    task = get_task("arc_easy")
    doc = {"question": "q", "choices": {"text": ["a", "a much longer answer"], "label": ["A", "B"]}, "answerKey": "B"}
    # Short choice: -2 total (-2 per char); long choice: -4 total (-0.2 per char).
    record = _record(task, 0, doc, [(-2.0, False), (-4.0, False)])
    assert (record["prediction"], record["prediction_norm"]) == (0, 1)
    assert (record["acc"], record["acc_norm"]) == (0.0, 1.0)


def test_winogrande_partial_scoring_compares_the_shared_suffix(tiny):
    task = get_task("winogrande")
    doc = {"sentence": "Ann hugged Bea because _ was sad.", "option1": "Ann", "option2": "Bea", "answer": "2"}
    requests = choice_requests(task, doc)
    assert requests == [("Ann hugged Bea because Ann", " was sad."), ("Ann hugged Bea because Bea", " was sad.")]
    tok = ByteTokenizer()
    pairs = [encode_pair(tok, c, x) for c, x in requests]
    scored = loglikelihoods(tiny, pairs)
    suffix = list(b" was sad.")
    for (ctx, cont), (ll, _) in zip(pairs, scored):
        assert cont == suffix  # only the suffix is scored, conditioned on each filled-in context
        assert ll == pytest.approx(_direct_loglikelihood(tiny, ctx, suffix), abs=1e-4)
    record = _record(task, 0, doc, scored)
    assert record["prediction"] == max(range(2), key=lambda i: scored[i][0])


def test_evaluate_records_metrics_and_restores_training_mode(tiny, tmp_path):
    import json

    docs = [{"goal": f"goal {i}", "sol1": f"first {i}", "sol2": f"second one {i}", "label": i % 2} for i in range(6)]
    path = tmp_path / "piqa.json"
    path.write_text(json.dumps(docs))
    tiny.train()
    out = evaluate(tiny, ByteTokenizer(), "piqa", num_fewshot=2, doc_ids={"piqa": [5, 1, 3]}, batch_size=4,
                   progress=False, data_files={"piqa": path})
    assert tiny.training
    records = out["records"]
    assert [r["doc_id"] for r in records] == [5, 1, 3] and all(len(r["loglikelihoods"]) == 2 for r in records)
    acc = [r["acc"] for r in records]
    res = out["results"]["piqa"]
    assert res["n"] == 3 and res["acc"] == pytest.approx(sum(acc) / 3)
    assert res["acc_stderr"] == pytest.approx(mean_stderr(acc))
    assert out["groups"]["commonsense"]["acc"] == res["acc"]
    again = evaluate(tiny, ByteTokenizer(), "piqa", num_fewshot=2, limit=6, batch_size=1, progress=False,
                     data_files={"piqa": path})
    by_id = {r["doc_id"]: r["loglikelihoods"] for r in again["records"]}
    for r in records:  # a doc's score does not depend on which other docs are evaluated
        assert r["loglikelihoods"] == pytest.approx(by_id[r["doc_id"]], abs=1e-5)


def test_mean_stderr_matches_the_sample_formula():
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx((0.75 / 3 / 4) ** 0.5)
    assert mean_stderr([1.0]) is None
