"""The toy projector of docs/design.md ("Adding a projector"), as a researcher's own module: a Gaussian sketch
S (n x r, E[S S^T] = I) regenerated from a stored seed, no tensor state at all. Imported by the tests, and by
tests/fsdp_worker.py on every rank of a 2-process run."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from optim.projector import Projector, register_projector


@register_projector("sketch")
@dataclass(frozen=True)
class SketchProjector(Projector):
    rank: int

    def _sketch(self, state, like):
        gen = torch.Generator(device=like.device).manual_seed(state["seed"])
        return torch.randn(state["cols"], self.rank, generator=gen, dtype=like.dtype) / self.rank**0.5

    def make(self, grad, seed):         return {"seed": seed, "cols": grad.shape[1]}  # noqa: E704
    def project(self, state, grad):     return grad @ self._sketch(state, grad)  # noqa: E704
    def project_back(self, state, low): return low @ self._sketch(state, low).mT  # noqa: E704
    def low_shape(self, shape):         return (shape[0], self.rank)  # noqa: E704
    def state_specs(self, shape):       return {}  # noqa: E704
