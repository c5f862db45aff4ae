"""This project's model inside lm-evaluation-harness (integrations/lm_eval_model.py).

Ran against lm-eval 0.4.13 (each assertion message names the versions in use); offline: the task is
lm-eval's own arc_easy definition, its rows read from the local ARC-Easy split.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's rows are a local JSON file: nothing to fetch
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from eval.docs import load_docs  # noqa: E402
from eval.harness import evaluate  # noqa: E402
from eval.tasks import resolve_tasks  # noqa: E402
from integrations.lm_eval_model import OwLoreLM  # noqa: E402
from model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.interop
VERSIONS = f"lm-eval {lm_eval.__version__}, torch {torch.__version__}"
ROWS = 20


@pytest.fixture(scope="module")
def arc_task(tmp_path_factory) -> Path:
    """An include folder with lm-eval's arc_easy task, its rows the first ROWS of the local ARC-Easy split."""
    folder = tmp_path_factory.mktemp("tasks")
    task = resolve_tasks("arc_easy")[0]
    rows = folder / "arc_easy.jsonl"
    rows.write_text("".join(json.dumps(d) + "\n" for d in load_docs(task, task.eval_split)[:ROWS]))
    official = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    (folder / "arc_easy_local.yaml").write_text(
        f"include: {official}\ntask: arc_easy_local\ntag: []\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {rows}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n")
    return folder


def test_lm_eval_accuracy_equals_python_m_eval(arc_task, tiny_dir):
    """A tiny random model: the real SmolLM2 gave equal acc and acc_norm on these 20 rows too, in 246 s under load."""
    out = lm_eval.simple_evaluate(model="owlore", model_args=f"pretrained={tiny_dir},dtype=float32,batch_size=16",
                                  tasks=["arc_easy_local"], num_fewshot=0, log_samples=True,
                                  task_manager=TaskManager(include_path=str(arc_task), include_defaults=False))
    theirs = out["results"]["arc_easy_local"]
    model, tokenizer = load_model(str(tiny_dir), dtype=torch.float32)
    ours = evaluate(model, tokenizer, "arc_easy", limit=ROWS, progress=False)
    assert theirs["acc,none"] == ours["results"]["arc_easy"]["acc"], (theirs, ours["results"], VERSIONS)
    assert theirs["acc_norm,none"] == ours["results"]["arc_easy"]["acc_norm"], (theirs, ours["results"], VERSIONS)
    samples = sorted(out["samples"]["arc_easy_local"], key=lambda s: s["doc_id"])
    assert len(samples) == ROWS
    for sample, record in zip(samples, ours["records"]):
        lls = [resp[0][0] for resp in sample["resps"]]
        torch.testing.assert_close(torch.tensor(lls, dtype=torch.float64), torch.tensor(record["loglikelihoods"], dtype=torch.float64),
                                   atol=1e-5, rtol=0, msg=lambda m: m + VERSIONS)


def test_lm_eval_command_line_runs_the_registered_model(arc_task, tiny_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "integrations.lm_eval_model", "run", "--model", "owlore",
                             "--model_args", f"pretrained={tiny_dir}", "--tasks", "arc_easy_local", "--include_path",
                             str(arc_task), "--limit", "4", "--output_path", str(tmp_path / "results")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert written["results"]["arc_easy_local"]["acc,none"] in (0.0, 0.25, 0.5, 0.75, 1.0), VERSIONS
    assert written["config"]["model"] == "owlore"


def instance(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_rolling_and_generate_until_equal_direct_computations(tiny_dir):
    lm = OwLoreLM(pretrained=str(tiny_dir), batch_size=4)
    model, tokenizer = lm.model, lm.tokenizer
    text = "The quick brown fox jumps over the lazy dog, again and again."
    tokens = [lm.prefix_token_id] + tokenizer.encode(text)
    with torch.no_grad():
        logprobs = model(torch.tensor([tokens[:-1]])).log_softmax(-1)[0]
    direct = float(logprobs.gather(1, torch.tensor(tokens[1:])[:, None]).sum())
    (rolling,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))])
    assert rolling == pytest.approx(direct, abs=1e-4), VERSIONS
    lm.max_length = 8  # windows of 8 tokens: every token still predicted once, with less context
    (windowed,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))])
    assert windowed != pytest.approx(direct, abs=1e-3)
    lm.max_length = model.config.max_seq_len

    prompt = tokenizer.encode("Once upon a time")
    greedy = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # full forward each step: no KV cache
            greedy.append(int(model(torch.tensor([greedy]))[0, -1].argmax()))
    full = tokenizer.decode(greedy[len(prompt):])
    options = {"until": [], "max_gen_toks": 12, "do_sample": False}
    (text_out,) = lm.generate_until([instance("generate_until", ("Once upon a time", options))])
    assert text_out == full, VERSIONS
    stop = full.strip()[3:6]
    (cut,) = lm.generate_until([instance("generate_until", ("Once upon a time", {**options, "until": [stop]}))])
    assert cut == full.split(stop)[0] and len(cut) < len(full)
    with pytest.raises(ValueError, match="top_k"):
        lm.generate_until([instance("generate_until", ("Once", {**options, "top_k": 5}))])
