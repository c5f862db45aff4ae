"""Outlier-weighed layerwise sampling: outlier ratios, HT-SR alpha, the block sampler and their plots.

Names are imported on first use, so `import sampling` stays light and `python -m sampling.outliers`
runs its module exactly once.
"""
from importlib import import_module

_EXPORTS = {
    "sampling.cache": ["StaleCacheError", "cached_ratios", "load_or_compute_ratios", "weight_fingerprint"],
    "sampling.calibration": ["boolq_passages", "calibration_windows", "read_documents"],
    "sampling.htsr": ["block_alphas", "hill_alpha", "spearman", "weight_alpha"],
    "sampling.outliers": ["collect_input_sum_sq", "outlier_ratio", "outlier_ratios", "outlier_report"],
    "sampling.plots": ["plot_layer_profile", "plot_sampling_counts"],
    "sampling.sampler": ["MODES", "LayerSampler", "set_trainable"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'sampling' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
