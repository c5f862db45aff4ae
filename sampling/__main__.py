"""`python -m sampling`: score a model's blocks: outlier ratios D_l (a valid ratio cache for train.py
--scores), sampling and inclusion probabilities, optionally HT-SR alphas and a plot."""
from __future__ import annotations

import argparse
import time

import torch

from common import cli
from common.errors import UserError
from common.io import write_json
from common.outputs import check_output_file
from common.plugins import add_plugin_flag, import_plugins, preparse
from model.cli import DTYPES, add_model_flags, check_model_source, device_name
from sampling.cache import make_record
from sampling.calibration import batches, boolq_passages, calibration_windows, describe, read_documents
from sampling.htsr import block_alphas, spearman
from sampling.outliers import collect_input_sum_sq, outlier_report
from sampling.plots import plot_layer_profile
from sampling.sampler import LayerSampler

BOOLQ_SOURCE = "built-in: distinct passages of the BoolQ validation set (real English Wikipedia text)"


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m sampling", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="load_model source: config name, .gguf, Meta or HF dir")
    p.add_argument("--calib", help=".txt/.json/.jsonl calibration file (default: BoolQ validation passages)")
    p.add_argument("--n-windows", type=cli.number(int, at_least=1), default=128, help="calibration windows")
    p.add_argument("--seq-len", type=cli.number(int, at_least=2), default=2048, help="tokens per calibration window")
    p.add_argument("--seed", type=cli.number(int, at_least=0), default=0, help="seed of the calibration window draw")
    p.add_argument("--batch-size", type=cli.number(int, at_least=1), default=4, help="calibration windows per forward pass")
    p.add_argument("--M", type=cli.number(float, above=0), default=13.0, help="outlier threshold multiple of the mean (OWL's M)")
    p.add_argument("--gamma", type=cli.number(int, at_least=1), default=5, help="blocks per draw, for the reported inclusion probabilities")
    p.add_argument("--out", required=True, help="scores JSON (also a valid ratio cache)")
    p.add_argument("--htsr", action="store_true", help="also compute HT-SR alphas and their Spearman rho with D")
    p.add_argument("--plot", help="PNG with ratios, sampling probabilities and alphas per block")
    p.add_argument("--device", type=device_name, default="cpu", help="torch device the model runs on")
    add_model_flags(p)  # --ckpt-dir, --tokenizer, --dtype
    p.add_argument("--blockwise", action="store_true", help="move one block at a time to --device (low memory)")
    add_plugin_flag(p)
    return p


def run(args: argparse.Namespace) -> dict:
    """Read the calibration text, load the model named by the arguments and score it."""
    from model import load_model
    from model.load import check_tokenizer_fits

    start = time.perf_counter()
    documents = read_documents(args.calib) if args.calib else None  # a bad file fails before the model loads
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)
    check_model_source(args.model)
    model, tokenizer = load_model(args.model, device="cpu" if args.blockwise else args.device, dtype=DTYPES[args.dtype],
                                  ckpt_dir=args.ckpt_dir, tokenizer=args.tokenizer)  # fmt: skip
    if tokenizer is None:
        raise UserError(f"{args.model}: the checkpoint has no tokenizer, so calibration text cannot be tokenized")
    check_tokenizer_fits(tokenizer, model.config, args.model)
    if args.gamma > model.config.n_layers:  # before the calibration, not after it
        raise UserError(f"--gamma: {args.gamma} exceeds the {model.config.n_layers} blocks of {args.model}; "
                        f"pass --gamma {model.config.n_layers} or less")
    return score(model, tokenizer, args, documents, start)


def score(model: torch.nn.Module, tokenizer, args: argparse.Namespace, documents: list | None = None,
          start: float | None = None) -> dict:
    """Ratios (and optionally alphas) of a loaded model; writes --out and --plot; returns the record."""
    start = time.perf_counter() if start is None else start
    if documents is None:
        documents = read_documents(args.calib) if args.calib else boolq_passages()
    windows = calibration_windows(documents, tokenizer, args.n_windows, args.seq_len, args.seed)
    calibration = describe(windows, f"file {args.calib}" if args.calib else BOOLQ_SOURCE, args.seed)

    sum_sq = collect_input_sum_sq(model, batches(windows, args.batch_size), args.blockwise, args.device, progress=True)
    scores = outlier_report(model, sum_sq, args.M)
    ratios = scores["ratios"]
    try:
        sampler = LayerSampler("owlore", args.gamma, period=1, seed=0, n_layers=len(ratios), ratios=ratios)
    except ValueError as err:  # e.g. fewer blocks with outliers than --gamma at this M
        raise UserError(f"--M {args.M}: {err}; lower --M") from None
    extra = {"matrix_ratios": scores["matrix_ratios"], "gamma": args.gamma, "probabilities": sampler.probabilities,
             "inclusion_monte_carlo": sampler.inclusion_probabilities("monte_carlo")}
    try:
        extra["inclusion_exact"] = sampler.inclusion_probabilities("exact")
    except ValueError as err:
        print(f"exact inclusion probabilities skipped: {err}")

    if args.htsr:
        alphas, matrix_alphas = block_alphas(model, progress=True)
        extra.update(alphas=alphas, matrix_alphas=matrix_alphas, spearman_rho_ratio_alpha=spearman(ratios, alphas))
    name = getattr(model.config, "name", args.model)
    record = make_record(model, name, args.M, calibration, ratios, **extra)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.out, record, allow_nan=False)

    if args.plot:
        plot_layer_profile(args.plot, ratios, sampler.probabilities,
                           extra.get("inclusion_exact", extra["inclusion_monte_carlo"]), extra.get("alphas"),
                           title=f"{name}: {calibration['n_windows']} x {calibration['seq_len']} calibration tokens",
                           M=args.M, gamma=args.gamma, rho=extra.get("spearman_rho_ratio_alpha"))
    _print_summary(record)
    return record


def _print_summary(record: dict) -> None:
    alphas = record.get("alphas")
    print(f"{record['model_name']}  M={record['M']:g}  calibration {record['calibration']['n_windows']} x "
          f"{record['calibration']['seq_len']} tokens  ({record['seconds']} s)")
    print("block  D(%)    p       P(active)" + ("  alpha" if alphas else ""))
    inclusion = record.get("inclusion_exact", record["inclusion_monte_carlo"])
    for i, d in enumerate(record["ratios"]):
        row = f"{i:5d}  {d:6.3f}  {record['probabilities'][i]:.4f}  {inclusion[i]:.4f}"
        print(row + (f"     {alphas[i]:.3f}" if alphas else ""))
    if alphas:
        print(f"Spearman rho(D, alpha) = {record['spearman_rho_ratio_alpha']:+.3f}")


def main(argv: list[str] | None = None) -> None:
    import_plugins(preparse(argv or []).plugin)  # a plugin's model family, before the model loads
    run(parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)  # a bad input is one line, error: <file or flag>: <cause>; --debug shows the traceback
