"""Held-out evaluation during training: loss on the held-out records and, when they come from
`data.commonsense` (each record names its task and doc_id), harness-style accuracy on exactly those rows."""
from __future__ import annotations

from collections import defaultdict

import torch
from tqdm import tqdm

from data import tokenize_record
from data.packing import pad_examples
from eval import evaluate
from model.loss import next_token_loss_sum


class HeldOut:
    """`limit_per_task` keeps the first N records of each task (records without a task count as one task);
    `progress`: progress bars (stderr) while it evaluates."""

    def __init__(self, records: list[dict], tokenizer, limit_per_task: int | None = None, batch_size: int = 8,
                 template: str = "alpaca", progress: bool = False):
        kept: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            task = record.get("task", "")
            if limit_per_task is None or len(kept[task]) < limit_per_task:
                kept[task].append(record)
        records = [r for rs in kept.values() for r in rs]
        self.tokenizer = tokenizer
        self.batch_size, self.progress = batch_size, progress
        # shortest first so each batch pads little; every row whole (no truncation at the training length)
        self.examples = sorted((tokenize_record(tokenizer, r, True, template) for r in records), key=lambda e: len(e[0]))
        self.doc_ids = {task: [int(r["doc_id"]) for r in rs] for task, rs in kept.items()
                        if task and all("doc_id" in r for r in rs)}

    @torch.no_grad()
    def loss(self, model) -> float:
        """Mean next-token cross-entropy over the response tokens of every held-out record."""
        device = next(model.parameters()).device
        total, count = 0.0, 0
        starts = range(0, len(self.examples), self.batch_size)
        for start in tqdm(starts, desc="held-out loss", unit="batch", disable=not self.progress, leave=False):
            batch = self.examples[start:start + self.batch_size]
            ids, labels, _ = pad_examples(batch, max(len(tokens) for tokens, _ in batch), pad_id=0)
            loss_sum = next_token_loss_sum(model, ids.to(device), labels.to(device))
            if loss_sum is not None:
                total += loss_sum.item()
                count += int((labels[:, 1:] != -100).sum())
        return total / max(count, 1)

    def evaluate(self, model) -> dict:
        was_training = model.training
        model.eval()
        try:
            result = {"heldout_loss": self.loss(model)}
            if self.doc_ids:
                scores = evaluate(model, self.tokenizer, sorted(self.doc_ids), num_fewshot=0,
                                  doc_ids=self.doc_ids, progress=self.progress)
                result["heldout_acc"] = {task: r["acc"] for task, r in scores["results"].items()}
        finally:
            model.train(was_training)
        return result
