"""Turn tokenized examples into fixed-length rows: packing (official OwLore: 512) or padding.

Packing concatenates every example (each already ends with eos) and cuts the stream into blocks of
``seq_len``; labels follow their tokens, and the incomplete tail block is dropped (its size is returned).
Padding gives each example its own row: longer ones are truncated to ``seq_len`` (counted), shorter ones
are right-padded with ``pad_id`` and labels ``IGNORE_INDEX`` on the pads.
"""
from __future__ import annotations

import torch

from data.tokenize import IGNORE_INDEX

Example = tuple[list[int], list[int]]


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")


def pack_examples(examples: list[Example], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids [N, seq_len], labels [N, seq_len], tail_tokens_dropped)`` from concatenated examples."""
    _check_seq_len(seq_len)
    for row, (example_ids, example_labels) in enumerate(examples):
        if len(example_ids) != len(example_labels):
            raise ValueError(f"example {row}: input_ids and labels differ in length")
    # One small tensor per example, then one concatenation: no Python list of every token.
    ids = torch.cat([torch.tensor(i, dtype=torch.long) for i, _ in examples] or [torch.zeros(0, dtype=torch.long)])
    labels = torch.cat([torch.tensor(l, dtype=torch.long) for _, l in examples] or [torch.zeros(0, dtype=torch.long)])
    n_blocks = ids.numel() // seq_len
    used = n_blocks * seq_len
    return ids[:used].view(n_blocks, seq_len), labels[:used].view(n_blocks, seq_len), ids.numel() - used


def pad_examples(examples: list[Example], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids [N, seq_len], labels [N, seq_len], truncated_count)``, one row per example."""
    _check_seq_len(seq_len)
    input_ids = torch.full((len(examples), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), seq_len), IGNORE_INDEX, dtype=torch.long)
    truncated = 0
    for row, (example_ids, example_labels) in enumerate(examples):
        if len(example_ids) != len(example_labels):
            raise ValueError(f"example {row}: input_ids and labels differ in length")
        truncated += len(example_ids) > seq_len
        n = min(len(example_ids), seq_len)
        input_ids[row, :n] = torch.tensor(example_ids[:n], dtype=torch.long)
        labels[row, :n] = torch.tensor(example_labels[:n], dtype=torch.long)
    return input_ids, labels, truncated
