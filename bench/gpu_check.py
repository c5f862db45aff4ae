"""The checks a lent GPU runs (bench/gpu_check.sh), written to one JSON file; `--cpu-smoke` shrinks every part
so the same code runs in a minute on a CPU.

(a) steps   the llama2-7b-shaped step of every method x {paper, lean} at 16x512, bf16, random weights:
            torch.cuda.max_memory_allocated and the median step time beside `training.memory`'s simulation
            of the same flags (the simulations run on CPU workers while the GPU trains).
(b) train   train.py on SmolLM2-135M for 50 steps (OwLore: calibration, outlier-weighted sampling, GaLore,
            a checkpoint at step 25, HF export): the loss must fall, and 25 steps + resume to 50 must give
            the losses and final weights of 50 straight steps (deterministic algorithms on).
(c) eval    zero-shot ARC-Easy, the first 200 validation rows, on the device.
(d) fsdp    the run of (b) for 20 steps under torchrun on one device, with --fsdp and without: the losses must
            agree; the median step time and peak memory of each, side by side (FSDP2's own cost on one GPU).
(e) compile only when named (--parts compile): the step of (a), paper preset, of each --methods eager and with
            compiled blocks (train.py --compile; inductor, aot_eager in --cpu-smoke), side by side: the median
            step times, their ratio, the first (compiling) step and the graphs Dynamo compiled.

    python -m bench.gpu_check --out gpu_check.json
    python -m bench.gpu_check --parts compile --methods full,owlore --out compile.json
    python -m bench.gpu_check --cpu-smoke --out smoke.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.memory import DTYPES, measure_memory, preset_flags, train_args
from model.config import get_config
from training.methods import METHODS
from training.compile import compile_blocks
from training.memory import prepare, run_steps, simulate_memory

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("steps", "train", "eval", "fsdp", "compile")
DEFAULT_PARTS = PARTS[:4]
GIB = 2**30
DETERMINISTIC_TRAIN = ("import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                       "import train; train.main(sys.argv[1:])")


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(config=dict(name="tiny", dim=64, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=160, vocab_size=512),
                    batch=2, seq=32, gamma=1, rank=8, steps=3, dtype="fp32", device="cpu",
                    train_steps=6, save_at=3, eval_limit=5, fsdp_steps=4)
    return dict(config=dict(name="llama2-7b"), batch=16, seq=512, gamma=5, rank=128, steps=4, dtype="bf16",
                device="cuda", train_steps=50, save_at=25, eval_limit=200, fsdp_steps=20)


def step_flags(method: str, preset: str, z: dict) -> list[str]:
    flags = ["--method", method, "--batch-size", str(z["batch"]), "--seq-len", str(z["seq"]), "--gamma", str(z["gamma"]),
             "--rank", str(z["rank"]), *preset_flags(method, preset)]
    if method == "galore" and preset == "paper":
        flags += ["--svd", "randomized"]  # 224 exact SVDs of 7B take minutes on a GPU; owlore's 35 stay exact
    return flags


def config_of(z: dict):
    c = dict(z["config"])
    return get_config(c.pop("name"), **c)


def simulate_row(z: dict, flags: list[str]) -> int:
    return simulate_memory(config_of(z), train_args(flags), DTYPES[z["dtype"]], steps=2).peak.total


def measure_row(z: dict, flags: list[str], compiled: bool = False) -> dict:
    """Peak and median step time of `z['steps']` steps (step 1 builds state and projectors: not in the median);
    `compiled`: with compiled blocks, and the graphs compiled instead of the peak on the CPU."""
    config, args, dtype, device = config_of(z), train_args(flags), DTYPES[z["dtype"]], z["device"]
    if device == "cpu" and not compiled:
        peak = measure_memory(config, args, dtype, steps=z["steps"])
    stamps = []

    def stamp(k: int) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    torch.manual_seed(0)
    session = prepare(config, args, dtype, device=device)
    if compiled:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compile_blocks(session.model, backend="inductor" if device == "cuda" else "aot_eager")
    run_steps(session, z["steps"], stamp)
    stamp(z["steps"])
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    if session.fused:
        session.fused.remove()
    del session
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    out = dict(median_step_s=statistics.median(steps[1:]), first_step_s=steps[0])
    if compiled:
        out["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    if device == "cuda" or not compiled:
        out["peak"] = peak
    return out


def check_compile(z: dict, methods: list[str]) -> list[dict]:
    """(e) Each method's paper-preset step eager, then with compiled blocks."""
    rows = []
    for method in methods:
        flags = step_flags(method, "paper", z)
        eager, compiled = measure_row(z, flags), measure_row(z, flags, compiled=True)
        rows.append(dict(method=method, flags=" ".join(flags), eager=eager, compiled=compiled,
                         compiled_over_eager=compiled["median_step_s"] / eager["median_step_s"]))
        print(f"{method:<16} step eager {eager['median_step_s']:.3f} s  compiled {compiled['median_step_s']:.3f} s "
              f"({rows[-1]['compiled_over_eager']:.2f}x the time)  first compiled step {compiled['first_step_s']:.1f} s  "
              f"graphs {compiled['graphs']}", flush=True)
    return rows


def _one_thread() -> None:
    torch.set_num_threads(1)  # simulation workers beside the GPU run: no oversubscribed OpenMP pools


def check_steps(z: dict, methods: list[str]) -> list[dict]:
    rows = [(m, p, step_flags(m, p, z)) for m in methods for p in ("paper", "lean")]
    if z["device"] == "cpu":  # the CPU is the device: simulate and measure in turn
        simulated = [simulate_row(z, flags) for _, _, flags in rows]
        return [_step_row(z, row, sim) for row, sim in zip(rows, simulated)]
    workers = max(1, min(len(rows), (os.cpu_count() or 2) - 2))
    with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread) as pool:
        futures = [pool.submit(simulate_row, z, flags) for _, _, flags in rows]
        return [_step_row(z, row, future) for row, future in zip(rows, futures)]


def _step_row(z: dict, row: tuple, simulated) -> dict:
    method, preset, flags = row
    try:
        out = measure_row(z, flags)
    except torch.OutOfMemoryError as err:
        out = dict(error=f"out of memory: {err}")
    out.update(method=method, preset=preset, flags=" ".join(flags),
               simulated=simulated if isinstance(simulated, int) else simulated.result())
    if "peak" in out:
        out["simulated_error"] = out["simulated"] / out["peak"] - 1
        print(f"{method:<16} {preset:<6} peak {out['peak'] / GIB:7.3f} GiB  simulated {out['simulated'] / GIB:7.3f} "
              f"({out['simulated_error']:+.2%})  step {out['median_step_s']:.3f} s", flush=True)
    return out


def run_train(argv: list[str]) -> None:
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    done = subprocess.run([sys.executable, "-c", DETERMINISTIC_TRAIN, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train.py {' '.join(argv)} failed:\n{done.stderr[-3000:]}")


def losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted((run / "final-hf").glob("*.safetensors")) for k, v in load_file(f).items()}


def small_model_dir(work: Path) -> Path:
    from bench.step_compare import build_model_dir

    return build_model_dir(work / "model", dim=64, layers=4, heads=4, ffn=160, seq_len=128)


def train_flags(z: dict, work: Path, smoke: bool) -> tuple[list[str], Path]:
    """train.py's flags for (b) and (d), and the held-out file."""
    from data.commonsense import build_commonsense

    data, heldout = build_commonsense(work / "data", heldout_per_task=2, max_train_per_task=20 if smoke else 400)
    model = str(small_model_dir(work)) if smoke else "smollm2-135m"
    return ["--model", model, "--data", str(data), "--method", "owlore", "--gamma", "2", "--period", "10",
              "--rank", "8" if smoke else "64", "--update-proj-gap", "10", "--batch-size", "4" if smoke else "8",
              "--seq-len", "64" if smoke else "256", "--calib-windows", "2" if smoke else "8", "--calib-seq-len",
              "64" if smoke else "256", "--schedule", "constant", "--lr", "1e-3" if smoke else "1e-4",
              "--save-format", "hf", "--train-on-prompt", "--device", z["device"], "--dtype", z["dtype"],
              *(["--M", "3"] if smoke else [])], heldout  # a random tiny model has no weight above 13x the mean score


def check_train(z: dict, work: Path, smoke: bool) -> dict:
    common, heldout = train_flags(z, work, smoke)
    model = common[1]
    n, half = z["train_steps"], z["save_at"]
    started = time.perf_counter()
    run_train(common + ["--out", str(work / "straight"), "--max-steps", str(n)])
    run_train(common + ["--out", str(work / "split"), "--max-steps", str(half)])
    run_train(common + ["--out", str(work / "split"), "--max-steps", str(n), "--resume", str(work / "split"), "--allow-changes",
               "--overwrite"])  # (the first half exported its weights)
    seconds = time.perf_counter() - started
    straight, split = losses(work / "straight"), losses(work / "split")
    resumed = [s for s in range(half + 1, n + 1)]
    loss_diff = max(abs(straight[s] - split[s]) for s in resumed)
    a, b = final_weights(work / "straight"), final_weights(work / "split")
    weight_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    k = max(1, n // 5)
    first, last = statistics.mean(straight[s] for s in range(1, k + 1)), statistics.mean(straight[s] for s in range(n - k + 1, n + 1))
    from model import load_model

    exported, _ = load_model(work / "straight" / "final-hf")
    return dict(model=model, steps=n, resume_at=half, seconds=seconds, loss_first=first, loss_last=last,
                loss_falls=last < first, resume_loss_max_diff=loss_diff, resume_weight_max_diff=weight_diff,
                resume_exact=loss_diff == 0 and weight_diff == 0 and sorted(a) == sorted(b),
                exported_params=sum(p.numel() for p in exported.parameters()), heldout=str(heldout))


def check_eval(z: dict, work: Path, smoke: bool) -> dict:
    model = str(work / "model") if smoke else "smollm2-135m"
    out = work / "eval.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "eval", "--model", model, "--tasks", "arc_easy", "--limit",
                           str(z["eval_limit"]), "--device", z["device"], "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"eval failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return dict(model=model, rows=z["eval_limit"], seconds=time.perf_counter() - started,
                results=result.get("results", result))


def check_fsdp(z: dict, work: Path, smoke: bool) -> dict:
    common, _ = train_flags(z, work, smoke)
    runs = {}
    for name, extra in (("plain", []), ("fsdp", ["--fsdp"])):
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
                *common, "--out", str(work / name), "--max-steps", str(z["fsdp_steps"]),
                "--save-format", "none", *extra]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"train.py {' '.join(extra)} under torchrun failed:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "step_s" in r]
        runs[name] = dict(losses=[r["loss"] for r in steps], median_step_s=statistics.median(r["step_s"] for r in steps[2:]),
                          peak_memory=max(r["peak_memory"] or 0 for r in steps))
    plain, fsdp = runs["plain"], runs["fsdp"]
    diff = max(abs(a - b) / abs(b) for a, b in zip(fsdp["losses"], plain["losses"]))
    tolerance = 1e-5 if z["dtype"] == "fp32" else 2e-2  # bf16: the same math, rounded in another order
    return dict(steps=z["fsdp_steps"], plain=plain, fsdp=fsdp, loss_max_rel_diff=diff,
                losses_match=len(fsdp["losses"]) == len(plain["losses"]) == z["fsdp_steps"] and diff <= tolerance,
                fsdp_over_plain_step_time=fsdp["median_step_s"] / plain["median_step_s"],
                fsdp_over_plain_peak_memory=fsdp["peak_memory"] / plain["peak_memory"] if plain["peak_memory"] else None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: the same code in about a minute")
    p.add_argument("--parts", type=lambda v: v.split(","), default=list(DEFAULT_PARTS),
                   help=f"comma-separated, of {','.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})")
    p.add_argument("--methods", type=lambda v: v.split(","), default=list(METHODS), help="for parts (a) and (e)")
    p.add_argument("--out", default="gpu_check.json")
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA device: run on a GPU, or pass --cpu-smoke")
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        sys.exit(f"error: --parts: unknown {sorted(unknown)}; known: {', '.join(PARTS)}")
    z = sizes(a.cpu_smoke)
    if a.cpu_smoke:
        torch.set_num_threads(1)
    report = dict(device=torch.cuda.get_device_name() if z["device"] == "cuda" else "cpu", torch=torch.__version__,
                  smoke=a.cpu_smoke, sizes=z, failures=[])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.cpu_smoke and {"train", "eval", "fsdp"} & set(a.parts):
            small_model_dir(work)
        for part, check in (("steps", lambda: check_steps(z, a.methods)), ("train", lambda: check_train(z, work / "t", a.cpu_smoke)),
                            ("eval", lambda: check_eval(z, work, a.cpu_smoke)),
                            ("fsdp", lambda: check_fsdp(z, work / "f", a.cpu_smoke)),
                            ("compile", lambda: check_compile(z, a.methods))):
            if part not in a.parts:
                continue
            started = time.perf_counter()
            try:
                report[part] = check()
            except Exception as err:  # one part failing must not lose the others' numbers
                report[part] = dict(error=f"{type(err).__name__}: {err}")
                report["failures"].append(part)
            report[f"{part}_seconds"] = time.perf_counter() - started
            Path(a.out).write_text(json.dumps(report, indent=1))
    train = report.get("train", {})
    if "train" in a.parts and "error" not in train and not (train["loss_falls"] and train["resume_exact"]):
        report["failures"].append("train: loss did not fall or resume was not exact")
    if "fsdp" in a.parts and "error" not in report.get("fsdp", {}) and not report["fsdp"]["losses_match"]:
        report["failures"].append("fsdp: the --fsdp losses differ from the plain run's")
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}; failures: {report['failures'] or 'none'}")
    if report["failures"]:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
