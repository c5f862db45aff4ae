"""Seconds a user waits before work starts: two source trees side by side, each command a fresh process.

    git worktree add /tmp/before <commit>                 # the tree to compare against
    python -m bench.start_time --before /tmp/before --rounds 3

Per round, alternating the trees: `import train`; train.py for one step on a tiny model (bench.step_compare's
builder: 4 blocks of dim 64, the Mistral tokenizer's 32000-token vocabulary) without the memory report (timed
in bench.memory); and loading SmolLM2-135M's GGUF (weights and tokenizer). The wall time of each process, from its start to its exit.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.step_compare import build_model_dir
from common import cli

ROOT = Path(__file__).resolve().parents[1]
QA = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)} for a in range(4) for b in range(4)]


def commands(work: Path) -> dict[str, list[str]]:
    train = ["train.py", "--model", str(work / "tiny"), "--data", str(work / "data.json"), "--max-steps", "1",
             "--batch-size", "4", "--seq-len", "64", "--save-format", "none", "--calib-windows", "2",
             "--calib-seq-len", "16", "--M", "3", "--gamma", "2", "--rank", "8", "--overwrite"]
    return {"import train": ["-c", "import train"],
            "train.py, 1 step": [*train, "--out", str(work / "run"), "--no-memory-report"],
            "load SmolLM2 GGUF": ["-c", "from model import load_model; load_model('smollm2-135m')"]}


def timed(tree: Path, argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    p = cli.ArgumentParser(prog="python -m bench.start_time", description=__doc__.splitlines()[0], epilog=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the source tree to compare this one against")
    p.add_argument("--rounds", type=cli.number(int, at_least=1), default=3, help="rounds, the trees alternating")
    p.add_argument("--json", help="also write the seconds here")
    a = p.parse_args(argv)
    trees = {"before": Path(a.before).resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model_dir(work / "tiny", dim=64, layers=4, heads=4, ffn=160, seq_len=128)
        (work / "data.json").write_text(json.dumps(QA))
        seconds: dict[str, dict[str, list[float]]] = {name: {t: [] for t in trees} for name in commands(work)}
        for _ in range(a.rounds):
            for name, cmd in commands(work).items():
                for tree_name, tree in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    seconds[name][tree_name].append(timed(tree, cmd, env))
    print(f"{'command':<36}{'before s':>22}{'after s':>22}{'before / after':>16}")
    for name, by_tree in seconds.items():
        b, f = by_tree["before"], by_tree["after"]
        print(f"{name:<36}{', '.join(f'{x:.2f}' for x in b):>22}{', '.join(f'{x:.2f}' for x in f):>22}"
              f"{statistics.median(b) / statistics.median(f):>15.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(seconds, indent=1))
    return seconds


if __name__ == "__main__":
    cli.run(main)
