"""Held-out evaluation during training: loss on the held-out records and, when they come from
`data.commonsense` (each record names its task and doc_id), harness-style accuracy on exactly those rows."""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from data import build_dataset, load_records
from eval import evaluate


class HeldOut:
    def __init__(self, path: str, tokenizer, seq_len: int, limit_per_task: int | None = None, batch_size: int = 8):
        records = load_records(path)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dataset = build_dataset(records, tokenizer, seq_len, pack=False, mask_prompt=True)
        self.doc_ids: dict[str, list[int]] = defaultdict(list)
        for record in records:
            task, doc_id = record.get("task"), record.get("doc_id")
            if task is not None and doc_id is not None:
                if limit_per_task is None or len(self.doc_ids[task]) < limit_per_task:
                    self.doc_ids[task].append(int(doc_id))

    @torch.no_grad()
    def loss(self, model) -> float:
        total, count = 0.0, 0
        device = next(model.parameters()).device
        for start in range(0, len(self.dataset.input_ids), self.batch_size):
            ids = self.dataset.input_ids[start:start + self.batch_size].to(device)
            targets = self.dataset.labels[start:start + self.batch_size, 1:].to(device)
            logits = model(ids)[:, :-1]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
        return total / max(count, 1)

    def evaluate(self, model) -> dict:
        was_training = model.training
        model.eval()
        try:
            result = {"heldout_loss": self.loss(model)}
            if self.doc_ids:
                scores = evaluate(model, self.tokenizer, sorted(self.doc_ids), num_fewshot=0,
                                  doc_ids=dict(self.doc_ids), progress=False)
                result["heldout_acc"] = {task: r["acc"] for task, r in scores["results"].items()}
        finally:
            model.train(was_training)
        return result
