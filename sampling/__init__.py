"""Outlier-weighed layerwise sampling: outlier ratios, HT-SR alpha, the block sampler and their plots."""
from sampling.cache import StaleCacheError, cached_ratios, load_or_compute_ratios, weight_fingerprint
from sampling.calibration import boolq_passages, calibration_windows, read_documents
from sampling.htsr import block_alphas, hill_alpha, spearman, weight_alpha
from sampling.outliers import collect_input_sum_sq, outlier_ratio, outlier_ratios, outlier_report
from sampling.sampler import MODES, LayerSampler, set_trainable

__all__ = [
    "MODES", "LayerSampler", "StaleCacheError", "block_alphas", "boolq_passages", "cached_ratios",
    "calibration_windows", "collect_input_sum_sq", "hill_alpha", "load_or_compute_ratios", "outlier_ratio",
    "outlier_ratios", "outlier_report", "read_documents",
    "set_trainable", "spearman", "weight_alpha", "weight_fingerprint",
]
