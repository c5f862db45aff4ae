"""Outlier-weighed layerwise sampling: outlier ratios, HT-SR alpha, sampling policies, the block sampler
and their plots. `python -m sampling` scores a model's blocks (sampling/__main__.py)."""
from sampling.cache import CacheError, StaleCacheError, cached_ratios, load_or_compute_ratios, weight_fingerprint
from sampling.calibration import boolq_passages, calibration_windows, read_documents
from sampling.htsr import block_alphas, hill_alpha, spearman, weight_alpha
from sampling.outliers import collect_input_sum_sq, outlier_ratio, outlier_ratios, outlier_report
from sampling.plots import plot_layer_profile, plot_sampling_counts
from sampling.policies import POLICIES, Policy, get_policy, register_policy
from sampling.sampler import LayerSampler, set_trainable
import sampling.badam  # noqa: F401,E402  (registers BAdam's block orders)

__all__ = [
    "CacheError", "LayerSampler", "POLICIES", "Policy", "StaleCacheError", "block_alphas", "boolq_passages",
    "cached_ratios", "calibration_windows", "collect_input_sum_sq", "get_policy", "hill_alpha",
    "load_or_compute_ratios", "outlier_ratio", "outlier_ratios", "outlier_report", "plot_layer_profile",
    "plot_sampling_counts", "read_documents", "register_policy", "set_trainable", "spearman", "weight_alpha",
    "weight_fingerprint",
]
