"""Records -> a tokenized dataset of fixed-length rows, with counts of everything left out."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from data.packing import pack_examples, pad_examples
from data.records import record_kind
from data.tokenize import IGNORE_INDEX, tokenize_record


@dataclass
class TokenizedDataset:
    """``input_ids`` and ``labels``: LongTensors [N, seq_len]; ``stats``: counts from :func:`build_dataset`."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.labels.shape:
            raise ValueError(
                f"input_ids {tuple(self.input_ids.shape)} and labels {tuple(self.labels.shape)} must be equal [N, seq_len]"
            )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[index], self.labels[index]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def summary(self) -> str:
        return f"{len(self)} rows x {self.seq_len} tokens; " + ", ".join(f"{k} {v}" for k, v in self.stats.items())


def is_empty(record: dict) -> bool:
    """A record with nothing to learn: empty text, empty output, or only empty assistant turns."""
    kind = record_kind(record)
    if kind == "text":
        return not record["text"].strip()
    if kind == "chat":
        return not any(m["content"].strip() for m in record["messages"] if m["role"] == "assistant")
    return not record["output"].strip()


def build_dataset(
    records: list[dict],
    tokenizer,
    seq_len: int,
    pack: bool = True,
    mask_prompt: bool = True,
    template: str = "alpaca",
) -> TokenizedDataset:
    """Tokenize, then pack into blocks (``pack``) or pad/truncate each record to ``seq_len``.

    Rows without a single target token (after masking and truncation) are dropped and counted.
    """
    examples = []
    for i, record in enumerate(records):
        try:
            if not is_empty(record):
                examples.append(tokenize_record(tokenizer, record, mask_prompt, template))
        except ValueError as err:
            raise ValueError(f"record {i}: {err}") from None
    stats = {
        "records": len(records),
        "dropped_empty": len(records) - len(examples),
        "tokens": sum(len(ids) for ids, _ in examples),
        "truncated": 0,
        "dropped_tail_tokens": 0,
    }
    if pack:
        input_ids, labels, stats["dropped_tail_tokens"] = pack_examples(examples, seq_len)
    else:
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else tokenizer.eos_id
        input_ids, labels, stats["truncated"] = pad_examples(examples, seq_len, pad_id)
    has_target = (labels[:, 1:] != IGNORE_INDEX).any(dim=1)  # labels[:, 0] is never predicted
    stats["dropped_no_target"] = int((~has_target).sum())
    input_ids, labels = input_ids[has_target], labels[has_target]
    stats["target_tokens"] = int((labels[:, 1:] != IGNORE_INDEX).sum())
    if len(input_ids) == 0:
        raise ValueError(f"no training rows of {seq_len} tokens from {len(records)} records ({stats})")
    if int(input_ids.max()) >= tokenizer.vocab_size or int(input_ids.min()) < 0:
        raise ValueError(f"token ids outside the tokenizer's vocabulary of {tokenizer.vocab_size}")
    dropped = {k: v for k, v in stats.items() if k in ("dropped_empty", "truncated", "dropped_no_target") and v}
    if dropped:
        rows = f"{len(has_target)} {'packed blocks' if pack else 'rows'}"
        warnings.warn(f"data: {dropped} (from {len(records)} records -> {rows}; dropped_no_target counts "
                      f"{'blocks' if pack else 'rows'} with no response token)", stacklevel=2)
    return TokenizedDataset(input_ids, labels, stats)
