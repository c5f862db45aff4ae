"""Peak RSS of `load_model` on a random bf16 Meta checkpoint, against the checkpoint's size on disk.

    python -m bench.load_memory                 # llama2-7b shape (~13.5 GB written, then deleted)
    python -m bench.load_memory --config tiny   # any named config

The checkpoint is written by one subprocess and loaded by another (so the writer's memory does not count);
the loader touches every weight byte after loading, so mmapped pages are really resident when measured.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import cli
from model.config import get_config
from model.meta_format import write_meta_dir
from model.transformer import Transformer


def write_random_checkpoint(config_name: str, out_dir: Path) -> int:
    """Write a random bf16 checkpoint in Meta layout; return its size in bytes."""
    config = get_config(config_name)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.empty(s, dtype=torch.bfloat16).uniform_(-0.02, 0.02, generator=generator) for k, s in shapes.items()}
    write_meta_dir(state, config, out_dir)
    return sum(p.stat().st_size for p in out_dir.iterdir())


def measure_load(ckpt_dir: Path) -> dict:
    """Run in a fresh process: load, touch all weights, report peak RSS."""
    import model.load  # noqa: F401  (imports counted in the baseline)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loaded, _ = model.load.load_model(ckpt_dir, dtype=torch.bfloat16)
    seconds = time.perf_counter() - start
    touched = sum(int(p.view(torch.int16).view(-1)[::2048].sum()) for p in loaded.parameters())  # one read per 4 KiB page
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss": peak, "baseline_rss": baseline, "load_seconds": seconds, "touched": touched}


def run(config_name: str, work_dir: Path | None = None, keep: bool = False) -> dict:
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="owlore-loadmem-"))
    ckpt = work_dir / config_name
    try:
        subprocess.run([sys.executable, "-m", "bench.load_memory", "--write", str(ckpt), "--config", config_name], check=True)
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        out = subprocess.run([sys.executable, "-m", "bench.load_memory", "--measure", str(ckpt)], check=True,
                             capture_output=True, text=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    result.update(config=config_name, file_bytes=size, ratio=result["peak_rss"] / size,
                  ratio_above_baseline=(result["peak_rss"] - result["baseline_rss"]) / size)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama2-7b", help="named config whose shape to use")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to write the checkpoint (deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        write_random_checkpoint(args.config, args.write)
    elif args.measure:
        print(json.dumps(measure_load(args.measure)))
    else:
        r = run(args.config, args.work_dir, args.keep)
        gib = 1 << 30
        print(f"{r['config']}: checkpoint {r['file_bytes'] / gib:.2f} GiB, loader peak RSS {r['peak_rss'] / gib:.2f} GiB "
              f"(ratio {r['ratio']:.3f}; {r['ratio_above_baseline']:.3f} above the {r['baseline_rss'] / gib:.2f} GiB "
              f"import baseline), load {r['load_seconds']:.1f} s")  # fmt: skip
        print(json.dumps(r))


if __name__ == "__main__":
    cli.run(main)
