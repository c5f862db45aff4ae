"""Seconds to read a GGUF file: the gguf package's reader against `model.gguf_reader`, side by side.

    python -m bench.gguf_read                  # SmolLM2-135M's GGUF (the fetched asset), 3 rounds
    python -m bench.gguf_read --path F.gguf --rounds 5

Per round, alternating: the metadata (every key/value as Python values: the reader's construction and each
field's contents) with each reader, then the full `model.gguf_format.read_gguf` (metadata, config and the fp32
state dict) as it is and with the gguf package's reader underneath it (the way it read before).
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator

import gguf
from gguf import GGUFValueType

from common import cli
from model import gguf_format
from model.gguf_reader import GGUFField, GGUFFile, GGUFTensor, read_gguf_file


def package_metadata(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def our_metadata(path: Path) -> dict:
    return {k: f.value for k, f in read_gguf_file(path).fields.items()}


def package_file(path: Path) -> GGUFFile:
    """The gguf package's reading of `path`, in our reader's structure."""
    reader = gguf.GGUFReader(path)
    fields = {k: GGUFField(f.contents(), f.types[0], GGUFValueType(f.types[1]) if len(f.types) > 1 else None)
              for k, f in reader.fields.items() if not k.startswith("GGUF.")}  # fmt: skip
    tensors = tuple(GGUFTensor(t.name, tuple(t.shape.tolist()), t.tensor_type, t.data_offset, t.data)
                    for t in reader.tensors)  # fmt: skip
    return GGUFFile(path, 3, reader.alignment, reader.data_offset, MappingProxyType(fields), tensors)


@contextmanager
def package_reader_under_read_gguf() -> Iterator[None]:
    read = gguf_format.read_gguf_file
    gguf_format.read_gguf_file = package_file
    try:
        yield
    finally:
        gguf_format.read_gguf_file = read


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=None, help="the GGUF file (default: SmolLM2-135M's asset)")
    parser.add_argument("--rounds", type=cli.number(int, at_least=1), default=3, help="alternating rounds")
    args = parser.parse_args(argv)
    if args.path is None:
        from common.assets import asset_path

        args.path = asset_path("smollm2-135m")
    if package_metadata(args.path) != our_metadata(args.path):
        raise AssertionError(f"{args.path}: the two readers disagree")  # a bug, not a user's mistake
    print(f"{args.path} ({args.path.stat().st_size / 2**20:.1f} MiB)")
    print("round | metadata: gguf package s | ours s | ratio | read_gguf: gguf package s | ours s | ratio")
    for i in range(args.rounds):
        meta = [seconds(lambda: package_metadata(args.path)), seconds(lambda: our_metadata(args.path))]
        with package_reader_under_read_gguf():
            full = [seconds(lambda: gguf_format.read_gguf(args.path))]
        full.append(seconds(lambda: gguf_format.read_gguf(args.path)))
        print(f"{i + 1} | {meta[0]:.3f} | {meta[1]:.3f} | {meta[0] / meta[1]:.1f}x | "
              f"{full[0]:.3f} | {full[1]:.3f} | {full[0] / full[1]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
