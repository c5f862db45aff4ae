"""Calibration windows: n random, non-overlapping windows of T tokens from a text source (SPEC.md §1.1).

A source is a plain text file, a JSON / JSONL file of documents (strings, {"text": ...} or
{"instruction", "input", "output"} records, LMFlow's {"instances": [...]}) or of token ids, or a list
of documents in memory. Documents are tokenized one by one (BOS where the tokenizer has one) and
concatenated into one stream; the windows are a seeded choice among its consecutive chunks.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

Document = str | list[int]


def read_documents(path: str | Path) -> list[Document]:
    """Documents of a .txt, .json or .jsonl file (text, or lists of token ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        docs = [_document(r, f"{path}:{i + 1}") for i, r in enumerate(records)]
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict) and "instances" in data:
            data = data["instances"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of documents (or LMFlow 'instances'), got {type(data).__name__}")
        if data and all(isinstance(t, int) for t in data):
            data = [data]  # one token stream
        docs = [_document(r, f"{path}[{i}]") for i, r in enumerate(data)]
    else:
        docs = [text]
    docs = [d for d in docs if len(d) > 0]
    if not docs:
        raise ValueError(f"{path}: no non-empty documents")
    return docs


def _document(record: Any, where: str) -> Document:
    if isinstance(record, str):
        return record
    if isinstance(record, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in record):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        parts = [record[k] for k in ("instruction", "input", "output") if isinstance(record.get(k), str) and record[k]]
        if parts:
            return " ".join(parts)
    raise ValueError(f"{where}: a document must be a string, a list of token ids or a record with 'text' "
                     f"(or 'instruction'/'input'/'output'), got {str(record)[:80]!r}")


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
                raise ValueError(f"document {i}: token id {bad[0]} outside the vocabulary [0, {tokenizer.vocab_size})")
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
        raise ValueError(f"calibration source has {len(stream)} tokens, fewer than the {n_windows} x {seq_len} "
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
