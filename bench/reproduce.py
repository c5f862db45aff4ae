"""The paper's commonsense claims put to a test that can come out either way (BENCHMARKS.md, "Reproduction").

Protocol, fixed before any number is seen:
- data: each of the 8 commonsense validation sets split 50/50 by a seeded permutation per task (no package
  ships their train splits); every arm fine-tunes on the same training half (LLM-Adapters records, packed,
  as its recipe says) and is scored once, at the end, on every held-out row: harness-style zero-shot
  multiple choice (acc, acc_norm) and the NLL of the answer word after "the correct answer is";
- arms: the recipes in recipes/ (train.py --config ARM), the official runs as they are;
- lr: one per arm, the best answer NLL among --lr-factors x the recipe's lr, trained on 90 % of the training
  half and scored on the other 10 % (one seed), then frozen for every seed and recorded;
- seeds: seed s gives every arm the same data order, so two arms are compared row by row within a seed;
- statistics: bench/stats.py, a paired bootstrap over seeds and rows, 95 % intervals; the verdict rules are
  printed in the report above the numbers.

Runs are keyed by (kind, arm, seed, lr, recipe hash, protocol hash, code version): a run already in
--results is skipped, so an interrupted or budget-cut invocation continues where it stopped, and result files
of several machines merge (`--merge A.jsonl B.jsonl --report-only`). `--budget-minutes` starts the most
informative runs first (owlore vs full, owlore-fullrank vs lisa-equal, the other arms, then more seeds) and
starts nothing that cannot finish in time. Each run is its own process, several at once on one device.

    python -m bench.reproduce --smoke                                  # seconds: a tiny random model, CPU
    python -m bench.reproduce --device cuda --workers 8 --seeds 4 --budget-minutes 7   # one H200
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.reproduce_report import TASKS, report
from common import cli
from common.code_version import code_version
from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRIORITY = (("owlore", "full"), ("owlore-fullrank", "lisa-equal"), ("lisa", "galore", "lora", "owlore-reverse"))
ARMS = tuple(arm for group in PRIORITY for arm in group)


@dataclass(frozen=True)
class Job:
    kind: str  # "base" (the pre-trained model scored), "tune" (an lr on the fold), "main" (an arm and seed)
    arm: str
    seed: int
    lr: float | None  # main runs: None until the arm's tuning is done


def recipe_hash(arm: str) -> str:
    return hashlib.sha256((ROOT / "recipes" / f"{arm}.yaml").read_bytes()).hexdigest()[:12] if arm != "base" else "-"


def protocol(a: argparse.Namespace) -> dict:
    return dict(model=a.model, tasks=list(a.tasks), split_seed=a.split_seed, rows_per_task=a.rows_per_task,
                steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, dtype=a.dtype, fold=a.fold,
                calib=[a.calib_windows, a.calib_seq_len], train_flags=a.train_flags)


def job_key(job: Job, a: argparse.Namespace, version: str) -> str:
    proto = hashlib.sha256(json.dumps(protocol(a), sort_keys=True).encode()).hexdigest()[:12]
    return f"{job.kind}|{job.arm}|{job.seed}|{job.lr!r}|{recipe_hash(job.arm)}|{proto}|{version}"


# --- data -----------------------------------------------------------------------------------------------

def split_task(task: str, n_rows: int, seed: int, fold: float) -> tuple[list[int], list[int], list[int]]:
    """(train, fold, held-out) row indices of one task: held-out half, then `fold` of the rest for the lr."""
    order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(n_rows)
    half = n_rows // 2
    train = order[half:]
    n_fold = max(1, int(round(fold * len(train))))
    return sorted(train[n_fold:].tolist()), sorted(train[:n_fold].tolist()), sorted(order[:half].tolist())


def build_data(out: Path, tasks: tuple[str, ...], seed: int, fold: float, rows_per_task: int | None) -> dict[str, Path]:
    """train.json (both training parts), tune_train.json, tune_fold.json and heldout.json in `out`."""
    from common.io import write_json
    from data.arrow import read_split, task_split_dir
    from data.commonsense import commonsense_record

    parts: dict[str, list[dict]] = {"tune_train": [], "tune_fold": [], "heldout": []}
    for task in tasks:
        rows = read_split(task_split_dir(task))
        n = len(rows) if rows_per_task is None else min(rows_per_task, len(rows))
        for name, ids in zip(parts, split_task(task, n, seed, fold)):
            parts[name] += [commonsense_record(task, rows[i], i) for i in ids]
    parts["train"] = sorted(parts["tune_train"] + parts["tune_fold"], key=lambda r: (r["task"], r["doc_id"]))
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in parts.items():
        paths[name] = out / f"{name}.json"
        write_json(paths[name], records)
    return paths


# --- one run, in its own process ------------------------------------------------------------------------

def answer_pairs(tokenizer, records: list[dict]):
    """The answer word's tokens after the training prompt and "the correct answer is"."""
    from data.templates import alpaca_prompt
    from eval.loglikelihood import encode_pair

    return [encode_pair(tokenizer, alpaca_prompt(r["instruction"], r.get("input", "")) + "the correct answer is",
                        " " + r["answer"], add_bos=tokenizer.bos_id is not None) for r in records]


def score(model, tokenizer, records: list[dict], batch_size: int, harness: bool) -> dict:
    """Per held-out row, in the order of `records`: answer NLL and tokens; with `harness`, acc and acc_norm."""
    from eval import evaluate
    from eval.loglikelihood import loglikelihoods

    pairs = answer_pairs(tokenizer, records)
    lls = loglikelihoods(model, pairs, batch_size=batch_size)
    rows = dict(nll=[round(-ll, 4) for ll, _ in lls], ntok=[len(cont) for _, cont in pairs])
    if harness:
        doc_ids: dict[str, list[int]] = {}
        for r in records:
            doc_ids.setdefault(r["task"], []).append(r["doc_id"])
        found = {(x["task"], x["doc_id"]): x for x in evaluate(model, tokenizer, sorted(doc_ids), num_fewshot=0,
                                                              doc_ids=doc_ids, batch_size=batch_size,
                                                              progress=False)["records"]}
        rows["acc"] = [int(found[r["task"], r["doc_id"]]["acc"]) for r in records]
        rows["acc_norm"] = [int(found[r["task"], r["doc_id"]]["acc_norm"]) for r in records]
    return rows


def train_flags(job: Job, spec: dict, data: Path, out: Path) -> list[str]:
    flags = ["--config", job.arm, "--model", spec["model"], "--data", str(data), "--out", str(out),
             "--seed", str(job.seed), "--lr", repr(job.lr), "--batch-size", str(spec["batch_size"]),
             "--seq-len", str(spec["seq_len"]), "--save-format", "hf", "--overwrite", "--no-memory-report",
             "--device", spec["device"], "--dtype", spec["dtype"]]
    windows, length = spec["calib"]
    flags += ["--calib-windows", str(windows)] if windows else []
    flags += ["--calib-seq-len", str(length)] if length else []
    flags += ["--max-steps", str(spec["steps"])] if spec["steps"] else []
    return flags + shlex.split(spec["train_flags"])


def run_job(spec: dict) -> dict:
    """Train (unless `base`), then score; the result line of bench.reproduce (per-row values included)."""
    import torch

    import train
    from model import load_model
    from model.cli import DTYPES

    job, work = Job(**spec["job"]), Path(spec["work"])
    started = time.perf_counter()
    records = json.loads(Path(spec["data"]["tune_fold" if job.kind == "tune" else "heldout"]).read_text())
    metrics = []
    source = spec["model"]
    if job.kind != "base":
        train.main(train_flags(job, spec, Path(spec["data"]["tune_train" if job.kind == "tune" else "train"]), work))
        metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        source = work / "final-hf"
    device = torch.device(spec["device"])
    model, tokenizer = load_model(source, device=device, dtype=DTYPES[spec["dtype"]])
    rows = score(model, tokenizer, records, spec["eval_batch_size"], harness=job.kind != "tune")
    steps = [m for m in metrics if "step_s" in m]
    return dict(key=spec["key"], **asdict(job), recipe=recipe_hash(job.arm), protocol=protocol_of(spec),
                code=spec["code"], rows=rows, tasks=[r["task"] for r in records], doc_ids=[r["doc_id"] for r in records],
                steps=len(steps), final_loss=steps[-1]["loss"] if steps else None,
                peak_memory=max((m["peak_memory"] for m in steps), default=None),
                tokens_per_s=float(np.median([m["tokens_per_s"] for m in steps])) if steps else None,
                wall_s=time.perf_counter() - started)


def protocol_of(spec: dict) -> dict:
    return {k: spec[k] for k in ("model", "tasks", "split_seed", "rows_per_task", "steps", "batch_size", "seq_len",
                                 "dtype", "fold", "calib", "train_flags")}


# --- the schedule ---------------------------------------------------------------------------------------

def plan(a: argparse.Namespace) -> list[Job]:
    """Every job in the order that answers the most per minute: the base model, then per seed chunk the
    contrast groups in PRIORITY order (each arm's lr tuning before its first main run)."""
    jobs, tuned = [Job("base", "base", 0, None)], set()
    arms = [arm for arm in ARMS if arm in a.arms]
    seeds = list(range(1, a.seeds + 1))
    for chunk in (seeds[:2], seeds[2:]):
        for group in PRIORITY:
            for arm in (x for x in group if x in arms):
                if arm not in tuned and len(a.lr_factors) > 1:
                    jobs += [Job("tune", arm, 0, lr) for lr in lr_grid(arm, a.lr_factors)]
                    tuned.add(arm)
                jobs += [Job("main", arm, s, None) for s in chunk]
    return jobs


def recipe_lr(arm: str) -> float:
    import yaml

    return float(yaml.safe_load((ROOT / "recipes" / f"{arm}.yaml").read_text())["lr"])


def lr_grid(arm: str, factors: list[float]) -> list[float]:
    return [float(f"{recipe_lr(arm) * f:.3g}") for f in factors]


def chosen_lr(arm: str, results: list[dict], factors: list[float]) -> float | None:
    """The lr with the lowest fold answer NLL per token, once every lr of the grid has its result; else None."""
    if len(factors) == 1:
        return lr_grid(arm, factors)[0]
    tuned = {r["lr"]: r for r in results if r["kind"] == "tune" and r["arm"] == arm}
    if set(lr_grid(arm, factors)) - set(tuned):
        return None
    nll = lambda r: sum(r["rows"]["nll"]) / sum(r["rows"]["ntok"])  # noqa: E731
    return min(tuned.values(), key=lambda r: (not np.isfinite(nll(r)), nll(r)))["lr"]


def read_results(paths: list[Path]) -> list[dict]:
    """Result lines of every file, one per key (the first seen wins); a torn last line is skipped."""
    seen: dict[str, dict] = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            seen.setdefault(result["key"], result)
    return list(seen.values())


def schedule(a: argparse.Namespace, data: dict[str, Path], results_path: Path, work: Path) -> None:
    """Run the planned jobs, `a.workers` at a time, within the budget; append each result as it lands."""
    version, started = code_version(), time.monotonic()
    budget = a.budget_minutes * 60 if a.budget_minutes else float("inf")
    results = read_results([results_path])
    done = {r["key"] for r in results}
    pending = list(plan(a))
    running: dict[str, tuple[subprocess.Popen, Job, float]] = {}
    durations: list[float] = []
    log = lambda text: print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)  # noqa: E731
    while pending or running:
        for key, (proc, job, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode == 0:
                durations.append(time.monotonic() - t0)
                results = read_results([results_path])
                log(f"done {job.kind} {job.arm} seed {job.seed} lr {job.lr} in {durations[-1]:.0f} s")
            else:
                log(f"FAILED {job.kind} {job.arm} seed {job.seed} lr {job.lr}: see {work / key_name(key)}.log")
        expected = max(durations) if durations else 0.0
        left = budget - (time.monotonic() - started)
        for planned in list(pending):
            if len(running) >= a.workers:
                break
            job = planned
            if job.kind == "main" and job.lr is None:
                lr = chosen_lr(job.arm, results, a.lr_factors)
                if lr is None:
                    continue  # its tuning is still running (or failed: see below)
                job = Job("main", job.arm, job.seed, lr)
            pending.remove(planned)
            key = job_key(job, a, version)
            if key in done:
                continue
            if expected > left:
                log(f"budget: {left:.0f} s left, a run takes {expected:.0f} s; {len(pending) + 1} runs not started")
                pending = []
                break
            running[key] = (start(job, key, a, data, results_path, work, version), job, time.monotonic())
        if pending and not running:  # nothing runs and nothing can start: an arm's lr tuning failed
            log(f"cannot start {len(pending)} runs: their arm's lr tuning has no result (a failed run above)")
            break
        if running and time.monotonic() - started > budget + a.grace_s:
            for key, (proc, job, _) in running.items():
                proc.terminate()
                log(f"budget: stopped {job.kind} {job.arm} seed {job.seed} (not counted)")
            for proc, _, _ in running.values():
                proc.wait()
            running = {}
        time.sleep(0.2 if running else 0)


def key_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def start(job: Job, key: str, a: argparse.Namespace, data: dict[str, Path], results_path: Path, work: Path,
          version: str) -> subprocess.Popen:
    spec = dict(job=asdict(job), key=key, code=version, work=str(work / key_name(key)), results=str(results_path),
                data={k: str(v) for k, v in data.items()}, device=a.device, eval_batch_size=a.eval_batch_size,
                **protocol(a))
    log = open(work / f"{key_name(key)}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "bench.reproduce", "--run-job", json.dumps(spec)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def append_result(path: Path, result: dict) -> None:
    """One line, written with one write call in append mode: concurrent workers never interleave lines."""
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")


# --- command line ---------------------------------------------------------------------------------------

def smoke_model(out: Path) -> Path:
    """A tiny random LLaMA with the Mistral v1 tokenizer, saved as an HF folder (the --smoke model)."""
    import torch

    from common.assets import asset_path
    from model import Transformer, get_config, save_model

    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        save_model(Transformer(get_config("tiny", vocab_size=32000, n_layers=6, max_seq_len=512)), out, format="hf",
                   tokenizer=asset_path("mistral-v1-tokenizer"))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m bench.reproduce", description=__doc__.splitlines()[0],
                           epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    floats = lambda v: [float(x) for x in v.split(",")]  # noqa: E731
    p.add_argument("--model", default="smollm2-135m", help="base model every arm fine-tunes")
    p.add_argument("--arms", type=lambda v: v.split(","), default=list(ARMS), help=",".join(ARMS))
    p.add_argument("--tasks", type=lambda v: tuple(v.split(",")), default=TASKS, help="comma-separated commonsense tasks to train and score")
    p.add_argument("--seeds", type=cli.number(int, at_least=1), default=4, help="seeds 1..S per arm")
    p.add_argument("--steps", type=cli.number(int, at_least=0), default=0, help="optimizer steps (0: one epoch)")
    p.add_argument("--batch-size", type=cli.number(int, at_least=1), default=16, help="global batch of every run")
    p.add_argument("--seq-len", type=cli.number(int, at_least=8), default=512, help="tokens per training row")
    p.add_argument("--lr-factors", type=floats, default=[0.3, 1.0, 3.0], help="x the recipe's lr; one value: no tuning")
    p.add_argument("--fold", type=float, default=0.1, help="share of the training half that scores the lr grid")
    p.add_argument("--split-seed", type=cli.number(int, at_least=0), default=0, help="seed of the train / test split of each task")
    p.add_argument("--rows-per-task", type=cli.number(int, at_least=4), help="the first N rows of each task only")
    p.add_argument("--calib-windows", type=cli.number(int, at_least=1), help="default: the recipe's")
    p.add_argument("--calib-seq-len", type=cli.number(int, at_least=8), help="default: the recipe's")
    p.add_argument("--train-flags", default="", help="more train.py flags for every run (they win over recipes)")
    p.add_argument("--device", default="cpu", help="torch device the runs use")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--workers", type=cli.number(int, at_least=1), default=1, help="runs at once")
    p.add_argument("--eval-batch-size", type=cli.number(int, at_least=1), default=32, help="requests scored per forward pass")
    p.add_argument("--budget-minutes", type=float, help="start no run that cannot finish in time; stop the rest")
    p.add_argument("--grace-s", type=float, default=20.0, help="past the budget, runs still going are stopped")
    p.add_argument("--n-boot", type=cli.number(int, at_least=100), default=2000, help="bootstrap resamples of each interval")
    p.add_argument("--out", default="runs/reproduce", help="folder of the runs, results and report")
    p.add_argument("--merge", nargs="*", default=[], help="other result files to report with this one")
    p.add_argument("--report-only", action="store_true", help="no runs: the report of the results so far")
    p.add_argument("--smoke", action="store_true", help="a tiny random model, 2 arms x 2 seeds x 2 steps, CPU")
    p.add_argument("--run-job", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.arms, a.seeds, a.steps, a.batch_size, a.seq_len = ["owlore", "full"], 2, 2, 2, 64
        a.rows_per_task, a.calib_windows, a.calib_seq_len, a.lr_factors, a.n_boot = 8, 2, 32, [1.0], 200
        a.tasks, a.train_flags = a.tasks[:3], "--M 3"  # a random model has few outliers at the official M 13
    a.dtype = a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")
    unknown = sorted(set(a.arms) - set(ARMS))
    if unknown:
        raise UserError(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(ARMS)}")
    return a


def main(argv: list[str] | None = None) -> str | None:
    a = parse(argv)
    if a.run_job:
        spec = json.loads(a.run_job)
        append_result(Path(spec["results"]), run_job(spec))
        return None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    if a.smoke:
        a.model = str(smoke_model(out / "smoke-model"))
    if not a.report_only:
        data = build_data(out / "data", a.tasks, a.split_seed, a.fold, a.rows_per_task)
        (out / "work").mkdir(exist_ok=True)
        schedule(a, data, results_path, out / "work")
    text = report(read_results([results_path, *map(Path, a.merge)]), out, a.n_boot)
    print(text)
    return text


if __name__ == "__main__":
    cli.run(main)
