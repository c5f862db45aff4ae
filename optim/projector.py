"""Projectors: the low-rank subspace in which GaLore keeps a 2-D weight's gradient and Adam moments.

A projector serves every matrix of one param group. Its per-matrix state is a plain dict of tensors and
ints (a str would not survive `Optimizer.load_state_dict`), kept by the optimizer in `optimizer.state`
and saved with it, so a checkpoint loads with `torch.load(..., weights_only=True)`. The interface:

  make(grad, seed) -> state           a fresh subspace from a gradient (called every update_proj_gap steps)
  project(state, grad) -> low         the gradient in the subspace (moments have `low_shape(grad.shape)`)
  project_back(state, low) -> full    an update in the subspace back to the weight's shape
  low_shape(shape)                    the moments' shape
  state_specs(shape) -> {name: StateSpec}  every tensor of the state: shape, dtype, placement over ranks;
                                      what the optimizer checks `make` against, the sharded path places by
                                      (optim/sharded.py) and the memory accounting counts (optim/memory.py)
  full_update(state, grad, low_grad, low_update)  the weight-shaped update from Adam's low-rank direction;
                                      GaLore's is project_back(low_update); APOLLO's scales the raw gradient
  spec()                              plain options; `build_projector(**spec)` makes an equal projector

A new projector is a frozen dataclass subclass of `Projector` registered with `@register_projector(name)`,
in any module imported before the argument parser is built (train.py's --projector choices).

The two here keep orthonormal bases; for G (m x n) and r' = min(r, m, n):
  side "right": P = V_r^T (r' x n), R = G P^T,   back = R P
  side "left":  P = U_r (m x r'),   R = P^T G,   back = P R
  side "full":  R = U_r^T G V_r (r' x r'),       back = U_r R V_r^T
`std` picks "right" for tall/square G and "left" for wide G; `reverse_std` the opposite. The side is read
from which bases the state holds ("u", "vh" or both), never re-derived from shapes.
`SVDProjector` takes U_r, V_r from the SVD of G (GaLore); `RandomProjector` draws them at random.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import math
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import ClassVar

import torch
from torch import Tensor

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
SVD_METHODS = ("exact", "randomized")
ROWS, REPLICATED = "rows", "replicated"  # placements of a state tensor over ranks holding row shards of G
State = dict[str, "Tensor | int"]


@dataclass(frozen=True)
class StateSpec:
    """One tensor of a projector's per-matrix state.

    placement: "rows" when its first dimension runs along G's rows and each rank keeps the rows of G it
    owns (GaLore's U), "replicated" when every rank keeps it whole. dtype None: the gradient's dtype.
    kept: made or updated by `full_update` and carried over a refresh (`make` does not return it).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None
    placement: str = REPLICATED
    kept: bool = False

    def __post_init__(self):
        if self.placement not in (ROWS, REPLICATED):
            raise ValueError(f"unknown placement {self.placement!r}; expected {ROWS!r} or {REPLICATED!r}")

    def nbytes(self, grad_dtype: torch.dtype) -> int:
        return math.prod(self.shape) * (self.dtype or grad_dtype).itemsize


class Projector(ABC):
    """Base class of projectors (see the module docstring for the contract)."""

    needs_grad: ClassVar[bool] = False  # full_update reads the full gradient: it is not accumulated projected

    @abstractmethod
    def make(self, grad: Tensor, seed: int) -> State: ...

    @abstractmethod
    def project(self, state: State, grad: Tensor) -> Tensor: ...

    @abstractmethod
    def project_back(self, state: State, low: Tensor) -> Tensor: ...

    @abstractmethod
    def low_shape(self, shape: tuple[int, int]) -> tuple[int, ...]: ...

    @abstractmethod
    def state_specs(self, shape: tuple[int, int]) -> dict[str, StateSpec]: ...

    def full_update(self, state: State, grad: Tensor | None, low_grad: Tensor, low_update: Tensor) -> Tensor:
        """The update in the weight's shape from Adam's direction `low_update` = m / (sqrt(v) + eps) in the
        subspace; `grad` is None when micro-batches were accumulated projected (needs_grad False)."""
        return self.project_back(state, low_update)

    def spec(self) -> dict:
        names = [name for name, cls in PROJECTORS.items() if cls is type(self)]
        if not names:
            raise KeyError(f"{type(self).__name__} is not registered in optim.projector.PROJECTORS")
        return {"name": names[0], **asdict(self)}


def check_state(projector: Projector, state: State, grad: Tensor) -> None:
    """`state` (from make, or after updates) holds exactly the declared tensors, of the declared shapes and
    dtypes; a projector that does not is a programming error (TypeError)."""
    specs = projector.state_specs(tuple(grad.shape))
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    made = {k for k, spec in specs.items() if not spec.kept}
    if not made <= set(tensors) <= set(specs):
        raise TypeError(f"{type(projector).__name__} state holds tensors {sorted(tensors)} but state_specs "
                        f"declares {sorted(specs)} ({sorted(made)} made by make)")
    for key, value in tensors.items():
        spec = specs[key]
        if tuple(value.shape) != tuple(spec.shape) or value.dtype != (spec.dtype or grad.dtype):
            raise TypeError(f"{type(projector).__name__} state {key!r} is {tuple(value.shape)} {value.dtype}, "
                            f"declared {tuple(spec.shape)} {spec.dtype or grad.dtype}")


def projection_side(shape: tuple[int, ...] | torch.Size, proj_type: str) -> str:
    """'left', 'right' or 'full' for a gradient of `shape` under `proj_type`."""
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"unknown proj_type {proj_type!r}; expected one of {PROJ_TYPES}")
    if len(shape) != 2:
        raise ValueError(f"GaLore projects 2-D gradients only, got shape {tuple(shape)}")
    if proj_type in ("left", "right", "full"):
        return proj_type
    tall = shape[0] >= shape[1]
    if proj_type == "std":
        return "right" if tall else "left"
    return "left" if tall else "right"


@dataclass(frozen=True)
class BasisProjector(Projector):
    """Orthonormal bases u (m x r', sides left/full) and vh (r' x n, sides right/full); subclasses choose them."""

    rank: int
    proj_type: str = "std"

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if self.proj_type not in PROJ_TYPES:
            raise ValueError(f"unknown proj_type {self.proj_type!r}; expected one of {PROJ_TYPES}")

    @abstractmethod
    def bases(self, grad: Tensor, r: int, seed: int) -> tuple[Tensor, Tensor]:
        """(U_r, V_r^T) for the fp32 gradient, m x r and r x n."""

    def make(self, grad: Tensor, seed: int) -> State:
        side = projection_side(grad.shape, self.proj_type)
        u, vh = self.bases(grad.detach().float(), min(self.rank, *grad.shape), seed)
        state = {}
        if side in ("left", "full"):
            state["u"] = _owned(u, grad.dtype)
        if side in ("right", "full"):
            state["vh"] = _owned(vh, grad.dtype)
        return state

    def project(self, state: State, grad: Tensor) -> Tensor:
        u, vh = state.get("u"), state.get("vh")
        low = grad if u is None else u.mT @ grad
        return low if vh is None else low @ vh.mT

    def project_back(self, state: State, low: Tensor) -> Tensor:
        u, vh = state.get("u"), state.get("vh")
        full = low if u is None else u @ low
        return full if vh is None else full @ vh

    def low_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m, n = shape
        r = min(self.rank, m, n)
        return {"left": (r, n), "right": (m, r), "full": (r, r)}[projection_side(shape, self.proj_type)]

    def state_specs(self, shape: tuple[int, int]) -> dict[str, StateSpec]:
        m, n = shape
        r = min(self.rank, m, n)
        side = projection_side(shape, self.proj_type)
        u, vh = {"u": StateSpec((m, r), placement=ROWS)}, {"vh": StateSpec((r, n))}
        return {"left": u, "right": vh, "full": {**u, **vh}}[side]


@dataclass(frozen=True)
class SVDProjector(BasisProjector):
    """GaLore's projector: the top-r' singular vectors of the gradient, by exact or randomized SVD."""

    svd: str = "exact"
    oversample: int = 8
    power_iters: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.svd not in SVD_METHODS:
            raise ValueError(f"unknown svd method {self.svd!r}; expected one of {SVD_METHODS}")
        if self.oversample < 0 or self.power_iters < 0:
            raise ValueError(f"oversample and power_iters must be >= 0, got {self.oversample}, {self.power_iters}")

    def bases(self, grad: Tensor, r: int, seed: int) -> tuple[Tensor, Tensor]:
        if not torch.isfinite(grad).all():
            raise ValueError(f"gradient of shape {tuple(grad.shape)} contains NaN or inf; cannot compute its SVD")
        if self.svd == "randomized":
            return randomized_svd(grad, r, self.oversample, self.power_iters, seed)
        u, _, vh = torch.linalg.svd(grad, full_matrices=False)
        return u[:, :r], vh[:r]


@dataclass(frozen=True)
class RandomProjector(BasisProjector):
    """Random orthonormal bases (QR of seeded Gaussians), independent of the gradient: a baseline."""

    def bases(self, grad: Tensor, r: int, seed: int) -> tuple[Tensor, Tensor]:
        m, n = grad.shape
        return _random_orthonormal(m, r, seed, grad.device), _random_orthonormal(n, r, seed + 1, grad.device).mT


PROJECTORS: dict[str, type[Projector]] = {"svd": SVDProjector, "random": RandomProjector}


def register_projector(name: str):
    """Class decorator: `cls` (a frozen dataclass subclass of Projector) becomes the projector `name`."""

    def register(cls: type[Projector]) -> type[Projector]:
        if name in PROJECTORS:
            raise ValueError(f"projector {name!r} is already registered ({PROJECTORS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Projector) and is_dataclass(cls)):
            raise TypeError(f"projector {name!r}: {cls!r} is not a dataclass subclass of optim.projector.Projector")
        PROJECTORS[name] = cls
        return cls

    return register


def build_projector(name: str, **options) -> Projector:
    """The projector registered as `name`; options it has no field for are dropped, so one set of
    command-line options serves every projector."""
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; expected one of {tuple(PROJECTORS)}")
    cls = PROJECTORS[name]
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in options.items() if key in known})


def randomized_svd(a: Tensor, rank: int, oversample: int, power_iters: int, seed: int) -> tuple[Tensor, Tensor]:
    """Top-`rank` singular vectors (U[:, :rank], Vh[:rank]) by a randomized range finder with power iterations
    (Halko, Martinsson & Tropp 2011). Seeded by its own generator, so every process and a resumed run agree."""
    m, n = a.shape
    sketch = min(rank + oversample, m, n)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    omega = torch.randn(n, sketch, generator=gen, device=a.device, dtype=a.dtype)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(power_iters):  # re-orthonormalised subspace iteration on A A^T
        basis = torch.linalg.qr(a.mT @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    u_small, _, vh = torch.linalg.svd(basis.mT @ a, full_matrices=False)
    return (basis @ u_small)[:, :rank], vh[:rank]


def _random_orthonormal(dim: int, rank: int, seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, rank, generator=gen, device=device)).Q


def _owned(basis: Tensor, dtype: torch.dtype) -> Tensor:
    """A compact copy, so the state never pins the full SVD factors a slice was taken from."""
    return torch.empty(basis.shape, dtype=dtype, device=basis.device).copy_(basis)
