"""Calibration windows: n random, non-overlapping windows of T tokens from one token stream (docs/method.md, "Outlier ratios").

By default the stream is the training data itself, tokenized exactly as training tokenizes it (the same
record reader, prompt template and chat format: `training_documents`). A raw-text file given with
``--calib`` is the other source (`read_documents`), e.g. C4-style windows as OWL uses: a ``.txt`` file
(one document), or ``.json`` / ``.jsonl`` records that are strings, ``{"text": ...}`` objects or lists of
token ids. Text documents are tokenized one by one (BOS where the tokenizer has one) and concatenated;
the windows are a seeded choice among the stream's consecutive chunks.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.io import RecordError, read_records, read_text
from data.dataset import is_empty
from data.tokenize import tokenize_record

Document = str | list[int]


def read_documents(path: str | Path) -> list[Document]:
    """Documents of a raw calibration file: a .txt file, or .json / .jsonl text records or token-id lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    if path.suffix.lower() in (".json", ".jsonl"):
        records = read_records(path)
        if path.suffix.lower() == ".json" and records and all(_is_token(v) for _, v in records):
            records = [(records[0][0], [v for _, v in records])]  # one token stream
        docs = [_document(value, path, line) for line, value in records]
    else:
        docs = [read_text(path)]
    docs = [d for d in docs if len(d) > 0]
    if not docs:
        raise RecordError(path, "no non-empty documents")
    return docs


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _document(record: Any, path: Path, line: int) -> Document:
    if isinstance(record, str):
        return record
    if isinstance(record, list) and all(_is_token(t) for t in record):
        return record
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    raise RecordError(path, f"a calibration document is a string, a list of token ids or an object with 'text', "
                            f"got {str(record)[:80]!r} (leave out --calib to calibrate on the training data)", line=line)


def training_documents(records: list[dict], tokenizer: Any, n_tokens: int, template: str = "alpaca",
                       seed: int = 0) -> list[list[int]]:
    """Token ids of training records, tokenized as training does, in a seeded order, until `n_tokens` are reached.

    Every record kind works (instruction, text, text2text, chat): this is `data.tokenize.tokenize_record`,
    so the calibration tokens are the training stream's own (template, chat format, BOS / EOS).
    """
    documents, total = [], 0
    for i in np.random.default_rng(seed).permutation(len(records)).tolist():
        if is_empty(records[i]):
            continue
        try:
            ids, _ = tokenize_record(tokenizer, records[i], template=template)
        except ValueError as err:
            raise UserError(f"record {i}: {err}") from None
        documents.append(ids)
        total += len(ids)
        if total >= n_tokens:
            break
    return documents


def boolq_passages() -> list[str]:
    """Real English text: the distinct Wikipedia passages of the BoolQ validation set."""
    from data.arrow import read_split, task_split_dir

    return list(dict.fromkeys(row["passage"] for row in read_split(task_split_dir("boolq"))))


def token_stream(documents: list[Document], tokenizer: Any) -> list[int]:
    """All documents tokenized and concatenated; token-id documents are checked against the vocab."""
    stream: list[int] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            stream += tokenizer.encode(doc, bos=tokenizer.bos_id is not None)
        else:
            bad = [t for t in doc if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise UserError(f"document {i}: token id {bad[0]} outside the vocabulary [0, {tokenizer.vocab_size})")
            stream += doc
    return stream


def calibration_windows(documents: list[Document], tokenizer: Any, n_windows: int, seq_len: int,
                        seed: int = 0) -> torch.Tensor:
    """LongTensor [n_windows, seq_len]: a seeded choice of distinct consecutive chunks of the token stream."""
    if n_windows < 1 or seq_len < 1:
        raise ValueError(f"need n_windows >= 1 and seq_len >= 1, got {n_windows} x {seq_len}")
    stream = token_stream(documents, tokenizer)
    n_chunks = len(stream) // seq_len
    if n_chunks < n_windows:
        raise UserError(f"calibration source has {len(stream)} tokens, fewer than the {n_windows} x {seq_len} "
                         f"= {n_windows * seq_len} requested")
    picks = np.sort(np.random.default_rng(seed).choice(n_chunks, size=n_windows, replace=False))
    chunks = torch.tensor(stream[: n_chunks * seq_len], dtype=torch.long).view(n_chunks, seq_len)
    return chunks[torch.from_numpy(picks)]


def describe(windows: torch.Tensor | list[torch.Tensor], source: str, seed: int | None) -> dict:
    """What the cache records about a calibration set: source, shape, seed and a hash of the tokens."""
    parts = [windows] if isinstance(windows, torch.Tensor) else list(windows)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    seq_lens = {int(part.shape[-1]) for part in parts}
    return {"source": source, "n_windows": sum(int(part.shape[0]) for part in parts),
            "seq_len": seq_lens.pop() if len(seq_lens) == 1 else sorted(seq_lens),
            "seed": seed, "tokens_sha256": digest.hexdigest()}


def batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Windows split into batches of at most batch_size rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return list(windows.split(batch_size))
