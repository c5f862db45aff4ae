"""Memory of training steps, simulated: train.py's own step (`training.step`) run on fake tensors.

`Transformer(config)` is built under torch's `FakeTensorMode` (shapes, dtypes and storages, no data), and the
real code runs on it: the loss of `model.loss`, backward with activation checkpointing, LoRA, the method's
trainable blocks, the GaLore projector SVDs in fp32, `GaLoreAdamW`'s step or the fused per-parameter hooks.
`torch.distributed._tools.mem_tracker.MemTracker` follows every storage from allocation to release, so the
peak is the peak of live tensors (CUDA `max_memory_allocated` minus allocator rounding and library
workspaces, which no tensor holds). A 7B step takes seconds on a CPU; train.py prints it before step 1.

Data-dependent reads (`int(count)`, `bool(isfinite)`, `.item()`) have no value on fake tensors: the tracker
answers them (counts 1, conditions true, losses 0), which steers every `if` down the training path.

Categories at a peak: parameters (and buffers), gradients, optimizer state (the tensors in
`optimizer.state`), activations (made in a forward pass, the recompute of a checkpointed block included)
and temporaries (the rest: gradients of activations, logits' gradients, SVD scratch, updates in flight).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils._pytree import tree_flatten

from model.config import ModelConfig
from model.transformer import Transformer
from sampling import POLICIES, LayerSampler
from training.args import resolve_svd
from training.methods import SAMPLED_METHODS
from training.step import (StepConfig, apply_gradients, backward_micro_batches, build_optimizer, gradient_norm,
                           start_period, trainable_with_grad)

GIB = 2**30
CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")


@dataclass
class Peak:
    """Live bytes at one moment, by category; `phase` and `where` say when (step, pass, module, op)."""

    total: int = 0
    parameters: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    temporaries: int = 0
    phase: str = ""
    where: str = ""


@dataclass
class MemoryReport:
    peak: Peak
    phases: dict[str, Peak] = field(default_factory=dict)  # the peak within each phase, in order
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"peak": asdict(self.peak), "phases": {k: asdict(v) for k, v in self.phases.items()},
                "seconds": self.seconds}


class StepTracker(MemTracker):
    """MemTracker that records the peak of every phase with a category split, and answers data-dependent reads.

    Phase = f"step {k} {pass}", pass one of forward (micro-batch i), backward, fused step (an optimizer
    update inside backward), optimizer step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.optimizer = optimizer
        self.step_label = "setup"
        self.micro_batch = 0
        self.in_fused_step = False
        self.peak = Peak()
        self.phases: dict[str, Peak] = {}
        self._last_op = ""
        self._after_backward = True

    def phase(self) -> str:
        if self._in_opt:
            return f"{self.step_label} optimizer step"
        if self.in_fused_step:
            return f"{self.step_label} backward (fused step)"
        if self._mod_tracker.is_bw:
            return f"{self.step_label} backward"
        return f"{self.step_label} forward (micro-batch {self.micro_batch})"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return True if dtype == torch.bool else 0.0 if dtype.is_floating_point or dtype.is_complex else 1
        if func in (torch.ops.profiler._record_function_enter_new.default, torch.ops.profiler._record_function_exit._RecordFunction):
            return func(*args, **(kwargs or {}))  # the optimizer's profiling marks: no memory, and no phase
        backward = self._mod_tracker.is_bw or self._in_opt
        if not backward and self._after_backward:  # the first forward op after a backward: the next micro-batch
            self.micro_batch += 1
        self._after_backward = backward
        self._last_op = func.overloadpacket.__name__
        return super().__torch_dispatch__(func, types, args, kwargs)

    def start_step(self, k: int) -> None:
        self.step_label, self.micro_batch, self._after_backward = f"step {k + 1}", 0, True

    def _pre_fw_hook(self, module, inputs) -> None:
        # a new forward of the root module (next micro-batch or step): MemTracker tracks one iteration at a time
        if module in self.memory_tracking and not self._mod_tracker.is_bw and set(self._mod_tracker.parents) <= {
                "Global", self._mod_tracker.get_known_fqn(module)}:
            self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        # MemTracker hooks every parameter; a frozen one cannot take a hook, so only trainable ones get it
        # (a block that becomes trainable later gets it at its next forward)
        memory = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
        if install_grad_hooks:
            for p in module.parameters():
                if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    def tag(grad: torch.Tensor | None) -> None:
                        if grad is not None:  # a fused step may have freed it already
                            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[p] = (
                        p.register_hook(tag), p.register_post_accumulate_grad_hook(lambda q: tag(q.grad)))
        return memory

    def _update_peak_stats(self, peak_state) -> None:  # replaces MemTracker's per-module bookkeeping
        for snap in self._curr_mem_snap.values():
            total = snap["Total"]
            phase = self.phase()
            best = self.phases.get(phase)
            if total > self.peak.total or best is None or total > best.total:
                current = self._breakdown(snap, phase)
                if best is None or total > best.total:
                    self.phases[phase] = current
                if total > self.peak.total:
                    self.peak = current

    def _breakdown(self, snap: dict, phase: str) -> Peak:
        params = snap[_MemRefType.PARAM] + snap[_MemRefType.BUFFER]
        grads, acts = snap[_MemRefType.GRAD], snap[_MemRefType.ACT]
        state = self._state_bytes()
        modules = [m for m in self._mod_tracker.parents if m != "Global"]
        where = (max(modules, key=len) if modules else "-") + f" / {self._last_op}"
        return Peak(snap["Total"], params, grads, state, acts, snap["Total"] - params - grads - state - acts, phase, where)

    def _state_bytes(self) -> int:
        """Bytes of the distinct storages in optimizer.state that the tracker follows."""
        seen, total = set(), 0
        for state in self.optimizer.state.values():
            for value in tree_flatten(state)[0]:  # projector state may nest its bases
                if isinstance(value, torch.Tensor):
                    storage = value.untyped_storage()
                    if id(storage) not in seen and storage in self._WINFO:
                        seen.add(id(storage))
                        total += self._WINFO[storage][0].mem_consumed
        return total


def _fused_marker(tracker: StepTracker, step_param):
    def marked(p):
        tracker.in_fused_step = True
        try:
            step_param(p)
        finally:
            tracker.in_fused_step = False

    return marked


def build_model(config: ModelConfig, dtype: torch.dtype) -> Transformer:
    """`Transformer(config)` with parameters created directly in `dtype` (fake tensors cannot be swapped by .to)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return Transformer(config)
    finally:
        torch.set_default_dtype(previous)


def active_sets(config: ModelConfig, args: StepConfig, steps: int) -> list[list[int] | None]:
    """Blocks made trainable before each simulated step (None: no change). With --keep-inactive-state the
    draws cover every block once, so the last step holds the state of all of them (its steady state)."""
    if args.method not in SAMPLED_METHODS:
        return [None] * steps
    if args.keep_inactive_state:
        g, n = args.gamma, config.n_layers
        cover = [sorted({(i + j) % n for j in range(g)}) for i in range(0, n, g)]
        return cover + [None] * max(steps - len(cover), 1)
    sampler = LayerSampler(POLICIES["uniform"], args.gamma, args.period, args.seed, config.n_layers)
    return [sampler.active_layers(0)] + [None] * (steps - 1)


@dataclass
class Session:
    """A model, its optimizer and what train.py builds around them, ready for `run_steps`."""

    model: Transformer
    groups: list[dict]
    optimizer: torch.optim.Optimizer
    fused: object
    scheduler: object
    tokens: torch.Tensor
    args: StepConfig


def prepare(config: ModelConfig, args: StepConfig, dtype: torch.dtype, world_size: int = 1,
            max_micro_batches: int | None = None, device: str = "cpu") -> Session:
    """Build what train.py builds before its loop, under whatever tensor mode is active (fake or real).

    `max_micro_batches` caps the micro-batches per step (from the second on they repeat exactly: the same
    gradients exist, the same activations are made), keeping the micro-batch size.
    """
    grad_accum = min(args.grad_accum, max_micro_batches or args.grad_accum)
    rows = args.batch_size // world_size // args.grad_accum * grad_accum
    args = replace(args, grad_accum=grad_accum)
    with torch.device(device):
        model = build_model(config, dtype)
    model.train()
    model.gradient_checkpointing = args.grad_ckpt
    args = replace(args, svd=resolve_svd(args.svd, sum(p.numel() for p in model.parameters())))
    groups, optimizer, fused = build_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = torch.randint(0, config.vocab_size, (rows, args.seq_len), device=device)
    return Session(model, groups, optimizer, fused, scheduler, tokens, args)


def run_steps(s: Session, steps: int, on_step=lambda k: None) -> None:
    """`steps` iterations of train.py's loop body (data, loss and sampling aside); `on_step(k)` before each."""
    for k, active in enumerate(active_sets(s.model.config, s.args, steps)):
        on_step(k)
        if active is not None:
            start_period(s.model, s.optimizer, active, s.args)
        n_targets = int((s.tokens[:, 1:] != -100).sum())
        backward_micro_batches(s.model, s.tokens, s.tokens, n_targets, s.args.grad_accum, s.args.chunked_ce)
        gradient_norm(trainable_with_grad(s.groups), s.args.max_grad_norm)
        apply_gradients(s.optimizer)
        s.scheduler.step()


def simulate_memory(config: ModelConfig, args: StepConfig, dtype: torch.dtype, steps: int = 2,
                    world_size: int = 1, max_micro_batches: int | None = None) -> MemoryReport:
    """Peak live memory of `steps` training steps of train.py with `args` (its step's flags) on `config`.

    Step 1 creates the optimizer state and computes every projector; later steps are the steady state.
    """
    started = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=True):
        s = prepare(config, args, dtype, world_size, max_micro_batches)
        tracker = StepTracker(s.optimizer)
        s.optimizer.step_param = _fused_marker(tracker, s.optimizer.step_param)
        tracker.track_external(s.model, s.optimizer)

        with tracker:
            run_steps(s, steps, tracker.start_step)
        if s.fused:
            s.fused.remove()
    return MemoryReport(tracker.peak, tracker.phases, time.perf_counter() - started)


def format_report(report: MemoryReport, measured_peak: int | None = None) -> str:
    """The peak and each phase's peak, GiB by category."""
    head = f"  {'phase':<38}" + "".join(f"{c:>12}" for c in CATEGORIES) + f"{'total':>10}  where"
    lines = [head]
    for name, p in report.phases.items():
        cells = "".join(f"{getattr(p, c) / GIB:12.3f}" for c in CATEGORIES)
        lines.append(f"  {name:<38}{cells}{p.total / GIB:10.3f}  {p.where}")
    lines.append(f"  peak (simulated): {report.peak.total / GIB:.3f} GiB in {report.peak.phase} ({report.peak.where})")
    if measured_peak is not None:
        lines.append(f"  measured peak: {measured_peak / GIB:.3f} GiB")
    return "\n".join(lines)
