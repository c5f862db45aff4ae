"""`evaluate`: few-shot log-likelihood multiple choice over tasks, with metrics, groups and records."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from common.errors import UserError
from eval import mmlu
from eval.docs import load_docs
from eval.fewshot import choice_requests, fewshot_docs, fewshot_prefix, normalisation_lengths
from eval.loglikelihood import encode_pair, loglikelihoods
from eval.tasks import COMMONSENSE, Task, resolve_tasks


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of the mean with the sample (n - 1) standard deviation, as the harness."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def select_doc_ids(task: Task, n_docs: int, limit: int | None, doc_ids: dict[str, list[int]] | None) -> list[int]:
    """Rows to score: the given ids for this task, else the first `limit` rows (all when None)."""
    if doc_ids is not None and task.name in doc_ids:
        ids = list(doc_ids[task.name])
        bad = [i for i in ids if not 0 <= i < n_docs]
        if bad:
            raise UserError(f"{task.name}: doc ids {bad[:5]} outside the {n_docs} rows of the {task.eval_split} split")
        return ids
    return list(range(n_docs if limit is None else min(limit, n_docs)))


def _task_requests(task, docs, pool, ids, num_fewshot, seed):
    for doc_id in ids:
        doc = docs[doc_id]
        prefix = fewshot_prefix(task, fewshot_docs(task, pool, num_fewshot, doc_id, seed))
        yield doc_id, doc, choice_requests(task, doc, prefix)


def _record(task: Task, doc_id: int, doc: dict, scored: list[tuple[float, bool]]) -> dict:
    lls = [ll for ll, _ in scored]
    normed = [ll / n for ll, n in zip(lls, normalisation_lengths(task, doc))]
    gold = task.gold(doc)
    pred, pred_norm = _argmax(lls), _argmax(normed)
    return {
        "task": task.name, "doc_id": doc_id, "loglikelihoods": lls, "is_greedy": [g for _, g in scored],
        "prediction": pred, "prediction_norm": pred_norm, "gold": gold,
        "acc": float(pred == gold), "acc_norm": float(pred_norm == gold),
    }


def summarize(records: list[dict]) -> dict:
    acc = [r["acc"] for r in records]
    acc_norm = [r["acc_norm"] for r in records]
    return {
        "n": len(records),
        "acc": sum(acc) / len(acc), "acc_stderr": mean_stderr(acc),
        "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": mean_stderr(acc_norm),
    }


def group_metrics(results: dict[str, dict], records: list[dict]) -> dict[str, dict]:
    """MMLU and its categories micro-averaged over questions; "commonsense" = mean of the task accs."""
    groups: dict[str, dict] = {}
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    for name, subjects in [("mmlu", mmlu.SUBJECTS), *((f"mmlu_{c}", s) for c, s in mmlu.CATEGORIES.items())]:
        members = [f"mmlu_{s}" for s in subjects if f"mmlu_{s}" in by_task]
        if members:
            groups[name] = {**summarize([r for m in members for r in by_task[m]]), "tasks": members}
    members = [t for t in COMMONSENSE if t in results]
    if members:
        errs = [results[t]["acc_stderr"] for t in members]
        groups["commonsense"] = {
            "n": sum(results[t]["n"] for t in members),
            "acc": sum(results[t]["acc"] for t in members) / len(members),
            "acc_stderr": None if None in errs else math.sqrt(sum(e * e for e in errs)) / len(members),
            "acc_norm": sum(results[t]["acc_norm"] for t in members) / len(members),
            "tasks": members,
        }
    return groups


def evaluate(
    model,
    tokenizer,
    tasks: str | list[str],
    num_fewshot: int = 0,
    limit: int | None = None,
    doc_ids: dict[str, list[int]] | None = None,
    batch_size: int = 16,
    seed: int = 1234,
    progress: bool = True,
    add_bos: bool = False,
    data_files: dict[str, str | Path] | None = None,
    share_context: bool | None = None,
) -> dict:
    """Score `tasks` (names or groups) and return {"results", "groups", "records", "config"}.

    `limit` keeps the first N rows of each task's eval split; `doc_ids` (task -> row indices) overrides
    it per task. `data_files` (task -> .json/.jsonl file or arrow split folder) replaces the fetched
    eval split. `add_bos` prepends BOS to every context (the harness's HF default is not to).
    `share_context` runs each doc's context once through the KV cache for all its choices; None = only
    for few-shot prompts (short zero-shot contexts run faster as plain batched rows).
    """
    task_list = resolve_tasks(tasks)
    share_context = num_fewshot > 0 if share_context is None else share_context
    data_files = data_files or {}
    per_task = []
    for task in task_list:
        docs = load_docs(task, task.eval_split, data_files.get(task.name))
        same_split = task.fewshot_split == task.eval_split
        pool = docs if same_split or num_fewshot == 0 else load_docs(task, task.fewshot_split)
        ids = select_doc_ids(task, len(docs), limit, doc_ids)
        per_task.append((task, list(_task_requests(task, docs, pool, ids, num_fewshot, seed))))
    pairs = [
        encode_pair(tokenizer, ctx, cont, add_bos)
        for _, items in per_task for _, _, requests in items for ctx, cont in requests
    ]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            scored = loglikelihoods(model, pairs, batch_size=batch_size, progress=progress, share_context=share_context)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    records, results, cursor = [], {}, 0
    for task, items in per_task:
        task_records = []
        for doc_id, doc, requests in items:
            task_records.append(_record(task, doc_id, doc, scored[cursor : cursor + len(requests)]))
            cursor += len(requests)
        if task_records:
            results[task.name] = summarize(task_records)
        records += task_records
    return {
        "results": results,
        "groups": group_metrics(results, records),
        "records": records,
        "config": {
            "num_fewshot": num_fewshot, "limit": limit, "seed": seed, "add_bos": add_bos, "batch_size": batch_size,
            "share_context": share_context,
            "n_examples": len(records), "n_requests": len(pairs), "seconds": elapsed,
            "examples_per_second": len(records) / elapsed if elapsed > 0 else None,
        },
    }
