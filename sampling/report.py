"""What `python -m sampling.outliers` does: score a model, write the scores JSON, optionally alphas and a plot."""
from __future__ import annotations

import argparse
import time

import torch

from common.io import write_json
from sampling.cache import make_record
from sampling.calibration import batches, boolq_passages, calibration_windows, describe, read_documents
from sampling.htsr import block_alphas, spearman
from sampling.outliers import collect_input_sum_sq, outlier_report
from sampling.plots import plot_layer_profile
from sampling.sampler import LayerSampler

BOOLQ_SOURCE = "built-in: distinct passages of the BoolQ validation set (real English Wikipedia text)"


def run(args: argparse.Namespace) -> dict:
    """Load the model named by the arguments and score it."""
    from model import load_model
    from model.cli import DTYPES

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device="cpu" if args.blockwise else args.device, dtype=DTYPES[args.dtype],
                                  ckpt_dir=args.ckpt_dir, tokenizer=args.tokenizer)  # fmt: skip
    if tokenizer is None:
        raise ValueError(f"{args.model}: the checkpoint has no tokenizer, so calibration text cannot be tokenized")
    return score(model, tokenizer, args, start)


def score(model: torch.nn.Module, tokenizer, args: argparse.Namespace, start: float | None = None) -> dict:
    """Ratios (and optionally alphas) of a loaded model; writes --out and --plot; returns the record."""
    start = time.perf_counter() if start is None else start
    documents = read_documents(args.calib) if args.calib else boolq_passages()
    windows = calibration_windows(documents, tokenizer, args.n_windows, args.seq_len, args.seed)
    calibration = describe(windows, f"file {args.calib}" if args.calib else BOOLQ_SOURCE, args.seed)

    sum_sq = collect_input_sum_sq(model, batches(windows, args.batch_size), args.blockwise, args.device)
    scores = outlier_report(model, sum_sq, args.M)
    ratios = scores["ratios"]
    sampler = LayerSampler(ratios, "owlore", args.gamma, period=1, seed=0, n_layers=len(ratios))
    extra = {"matrix_ratios": scores["matrix_ratios"], "gamma": args.gamma, "probabilities": sampler.probabilities,
             "inclusion_monte_carlo": sampler.inclusion_probabilities("monte_carlo")}
    try:
        extra["inclusion_exact"] = sampler.inclusion_probabilities("exact")
    except ValueError as err:
        print(f"exact inclusion probabilities skipped: {err}")

    if args.htsr:
        alphas, matrix_alphas = block_alphas(model)
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
