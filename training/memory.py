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

Composed (the default): blocks that are trainable (or frozen) in the same simulated steps do the same work, so
each run of such neighbours is simulated as one block that stands for all n of them (the model's first block
alone, since its input is the embeddings'). That block's work in one stretch of the timeline (its forward, its
backward, one parameter's update) is a "unit"; n copies would run the unit n times in a row, each adding the
unit's change of live bytes, so each moment of the unit is composed as its live bytes plus the copies' so far,
at the copy where that is largest. Gradients and optimizer state it leaves, freed in bulk later (zero_grad, a
block leaving), are freed for every copy. A 30-block model runs 2 blocks (full, LoRA, GaLore) or about 2 per
sampled block; the peaks equal the full simulation's (`composed=False`, tests/test_memory_composed.py).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _UpdateType
from torch.utils._pytree import tree_flatten

from model.config import ModelConfig
from model.transformer import Transformer
from training.args import resolve_svd
from training.memory_report import MemoryReport, Peak
from training.methods import SAMPLED_METHODS
from training.step import (StepConfig, apply_gradients, backward_micro_batches, build_optimizer, gradient_norm,
                           start_period, trainable_with_grad)

@dataclass(frozen=True)
class Plan:
    """The blocks simulated and what each stands for (see the module doc, "Composed")."""

    n_layers: int  # blocks simulated
    sets: list[list[int] | None]  # blocks made trainable before each step, in simulated indices (None: no change)
    repeat: list[int]  # full-model blocks each simulated block stands for
    full_index: list[int]  # full-model index of each simulated block (of the first it stands for)


def plan_blocks(n_layers: int, sets: list[list[int] | None], outer_trained: bool = True, composed: bool = True) -> Plan:
    """Group the `n_layers` blocks into runs that do the same in every step; one block stands for each run.

    A block's work in a step: whether it trains, and whether its input needs a gradient (the embeddings train,
    `outer_trained`, or a block below does)."""
    pattern = [tuple(None if s is None else (i in s, outer_trained or any(j < i for j in s)) for s in sets)
               for i in range(n_layers)]
    runs: list[tuple[int, int]] = []  # (first block, length)
    for i in range(n_layers):
        if runs and composed and pattern[i] == pattern[runs[-1][0]]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    repeat, full_index = [], []
    for r, (first, n) in enumerate(runs):
        # the model's first block differs (its input is the embedding's output): it is simulated alone
        kept = [(first, 1), (first + 1, n - 1)] if r == 0 and n > 1 else [(first, n)]
        for index, times in kept:
            full_index.append(index)
            repeat.append(times)
    reduced = [None if s is None else [j for j, i in enumerate(full_index) if i in s] for s in sets]
    return Plan(len(full_index), reduced, repeat, full_index)


_LAYER = re.compile(r"\.layers\.(\d+)")
_FIELDS = ("total", "parameters", "gradients", "optimizer", "activations")


class StepTracker(MemTracker):
    """MemTracker that records the peak of every phase with a category split, answers data-dependent reads,
    and composes the blocks a `Plan` leaves out.

    Phase = f"step {k} {pass}", pass one of forward (micro-batch i), backward, fused step (an optimizer
    update inside backward), optimizer step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, plan: Plan, param_block: dict[int, int], unreported: int = 0):
        super().__init__()
        self.unreported = unreported  # steps before the reported ones (`setup_sets`)
        self.optimizer = optimizer
        self.plan = plan
        self.param_block = param_block  # id(parameter) -> its block
        self.step_label = "setup"
        self.micro_batch = 0
        self.in_fused_step = False
        self.peak = Peak()
        self.phases: dict[str, Peak] = {}
        self._last_op = ""
        self._after_backward = True
        self.updating: int | None = None  # the block of the parameter the optimizer is updating, if any
        self._unit: int | None = None  # the block whose work the current ops are (None: the rest)
        self._unit_start: list[int] = []
        self._unit_peaks: dict[str, tuple[list[int], str]] = {}  # a middle unit's highest moment per phase
        self._born: dict[int, int] = {}  # id(winfo) -> the middle block whose unit made it
        self.extra = [0] * len(_FIELDS)  # bytes of the left-out copies now live, by field
        self.in_update = False  # an optimizer update (of one parameter) is running
        self.state_changes = True  # False once state was counted and no update ran since: the count is reused
        self._state_cache = 0

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
        block = self._block_now()
        if block != self._unit:
            self.start_unit(block)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _block_now(self) -> int | None:
        if self.updating is not None:
            return self.updating
        if self._in_opt:
            return None
        blocks = [int(m.group(1)) for name in self._mod_tracker.parents if (m := _LAYER.search(name))]
        return (min(blocks) if self._mod_tracker.is_bw else max(blocks)) if blocks else None

    def _middle(self, block: int | None) -> bool:
        return block is not None and self.plan.repeat[block] > 1

    def start_unit(self, block: int | None) -> None:
        """End the current unit (a middle one: compose its copies) and start one of `block`."""
        if self._middle(self._unit):
            end = self._vector()
            delta = [e - s for e, s in zip(end, self._unit_start)]
            copies = self.plan.repeat[self._unit]
            last = copies - 1 if delta[0] > 0 else 0  # the copy where every moment of the unit is highest
            for phase, (vector, where) in self._unit_peaks.items():
                self._offer([v + x + last * d for v, x, d in zip(vector, self.extra, delta)], phase,
                            self._full_where(where, last))
            self.extra = [x + (copies - 1) * d for x, d in zip(self.extra, delta)]
        self._unit, self._unit_peaks = block, {}
        if self._middle(block):
            self._unit_start = self._vector()

    def start_step(self, k: int) -> None:
        self.start_unit(None)
        self.state_changes = True  # (start_period may free state)
        label = "setup" if k < self.unreported else f"step {k + 1 - self.unreported}"
        self.step_label, self.micro_batch, self._after_backward = label, 0, True

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
        if u_type == _UpdateType.ADD and self._middle(self._unit):
            self._born[id(winfo)] = self._unit
        elif u_type == _UpdateType.DEL and (block := self._born.pop(id(winfo), None)) is not None:
            # a gradient or optimizer state freed outside its block's own work (zero_grad, a block leaving) is
            # freed for every copy; an activation passed on is freed once, by its consumer
            field = {_MemRefType.GRAD: 2, _MemRefType.OPT: 3}.get(winfo.reftype)
            if field is not None and self._unit != block:
                freed = (self.plan.repeat[block] - 1) * winfo.mem_consumed
                self.extra[0] -= freed
                self.extra[field] -= freed

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
            total, phase = snap["Total"], self.phase()
            if self._middle(self._unit):  # composed when the unit ends
                best = self._unit_peaks.get(phase)
                if best is None or total > best[0][0]:
                    self._unit_peaks[phase] = (self._vector(snap), self._where())
                continue
            best = self.phases.get(phase)
            if total + self.extra[0] > min(self.peak.total, best.total if best else -1):
                vector = [v + x for v, x in zip(self._vector(snap), self.extra)]
                self._offer(vector, phase, self._full_where(self._where(), 0))

    def _offer(self, vector: list[int], phase: str, where: str) -> None:
        if phase.startswith("setup"):
            return
        best = self.phases.get(phase)
        if best is not None and vector[0] <= best.total and vector[0] <= self.peak.total:
            return
        current = Peak(*vector, vector[0] - sum(vector[1:]), phase, where)
        if best is None or vector[0] > best.total:
            self.phases[phase] = current
        if vector[0] > self.peak.total:
            self.peak = current

    def _vector(self, snap: dict | None = None) -> list[int]:
        """Live bytes now: total, parameters (and buffers), gradients, optimizer state, activations."""
        snap = snap if snap is not None else next(iter(self._curr_mem_snap.values()), None)
        if snap is None:
            return [0] * len(_FIELDS)
        return [snap["Total"], snap[_MemRefType.PARAM] + snap[_MemRefType.BUFFER], snap[_MemRefType.GRAD],
                self._state_bytes(), snap[_MemRefType.ACT]]

    def _where(self) -> str:
        modules = [m for m in self._mod_tracker.parents if m != "Global"]
        return (max(modules, key=len) if modules else "-") + f" / {self._last_op}"

    def _full_where(self, where: str, copy: int) -> str:
        """`where` with the full model's block index (a middle block's: that of its `copy`-th copy)."""
        def full(m: re.Match) -> str:
            k = int(m.group(1))
            return f".layers.{self.plan.full_index[k] + (copy if self._middle(k) else 0)}"
        return _LAYER.sub(full, where)

    def _state_bytes(self) -> int:
        """Bytes of the distinct storages in optimizer.state that the tracker follows."""
        if not self.state_changes and not self.in_update:
            return self._state_cache
        self.state_changes = self.in_update
        seen, total = set(), 0
        for state in self.optimizer.state.values():
            for value in tree_flatten(state)[0]:  # projector state may nest its bases
                if isinstance(value, torch.Tensor):
                    storage = value.untyped_storage()
                    if id(storage) not in seen and storage in self._WINFO:
                        seen.add(id(storage))
                        total += self._WINFO[storage][0].mem_consumed
        self._state_cache = total
        return total


def _mark(tracker: StepTracker, optimizer: torch.optim.Optimizer) -> None:
    """Tell `tracker` which block's parameter the optimizer is updating, when a step is fused into backward,
    and when a step ends (what follows, zero_grad's frees, is no block's)."""
    def per_parameter(method, update: bool):
        def marked(p, *rest):
            # an update outside optimizer.step() is a fused one (from a hook in backward)
            tracker.updating, tracker.in_fused_step = tracker.param_block.get(id(p)), update and not tracker._in_opt
            tracker.in_update = True
            try:
                return method(p, *rest)
            finally:
                tracker.updating, tracker.in_fused_step, tracker.in_update, tracker.state_changes = None, False, False, True
        return marked

    optimizer.accumulate_grad = per_parameter(optimizer.accumulate_grad, update=False)
    optimizer._update = per_parameter(optimizer._update, update=True)
    optimizer.register_step_post_hook(lambda *_: tracker.start_unit(None))


def build_model(config: ModelConfig, dtype: torch.dtype) -> Transformer:
    """`Transformer(config)` with parameters created directly in `dtype` (fake tensors cannot be swapped by .to)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return Transformer(config)
    finally:
        torch.set_default_dtype(previous)


def active_sets(config: ModelConfig, args: StepConfig, steps: int) -> list[list[int] | None]:
    """Blocks made trainable before each simulated step (None: no change). Sampled methods draw the top gamma
    blocks, the draw with the largest peak: their gradients live through the whole backward of the blocks below
    (tests/test_memory_composed.py checks it against every draw of a small model). Adjacent, the drawn blocks
    compose into one simulated block, so the simulation runs 3 blocks whatever the model's depth."""
    if args.method not in SAMPLED_METHODS:
        return [None] * steps
    n = config.n_layers
    return [list(range(n - min(args.gamma, n), n))] + [None] * (steps - 1)


def setup_sets(config: ModelConfig, args: StepConfig) -> list[list[int]]:
    """Steps run before the simulated ones and left out of the report. With --keep-inactive-state every block
    holds optimizer state once each has been drawn (the steady state of a long run): one step that trains every
    block but the first draw's creates it, so that step 1 refreshes the drawn blocks' projectors with every
    other block's state alive, the worst moment of such a run (instead of one step per group of gamma blocks)."""
    if args.method not in SAMPLED_METHODS or not args.keep_inactive_state:
        return []
    drawn = set(active_sets(config, args, 1)[0])
    rest = [i for i in range(config.n_layers) if i not in drawn]
    return [rest] if rest else []


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
            max_micro_batches: int | None = None, device: str = "cpu", n_params: int | None = None) -> Session:
    """Build what train.py builds before its loop, under whatever tensor mode is active (fake or real).

    `max_micro_batches` caps the micro-batches per step (from the second on they repeat exactly: the same
    gradients exist, the same activations are made), keeping the micro-batch size. `n_params` (default: the
    model's) chooses --svd auto as for a model of that size.
    """
    grad_accum = min(args.grad_accum, max_micro_batches or args.grad_accum)
    rows = args.batch_size // world_size // args.grad_accum * grad_accum
    args = replace(args, grad_accum=grad_accum)
    with torch.device(device):
        model = build_model(config, dtype)
    model.train()
    model.gradient_checkpointing = args.grad_ckpt
    args = replace(args, svd=resolve_svd(args.svd, n_params or sum(p.numel() for p in model.parameters())))
    groups, optimizer, fused = build_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = torch.randint(0, config.vocab_size, (rows, args.seq_len), device=device)
    return Session(model, groups, optimizer, fused, scheduler, tokens, args)


def run_steps(s: Session, steps: int, on_step=lambda k: None, sets: list[list[int] | None] | None = None) -> None:
    """`steps` iterations of train.py's loop body (data, loss and sampling aside); `on_step(k)` before each.
    `sets`: the blocks made trainable before each step (default: `active_sets`)."""
    for k, active in enumerate(active_sets(s.model.config, s.args, steps) if sets is None else sets):
        on_step(k)
        if active is not None:
            start_period(s.model, s.optimizer, active, s.args)
        n_targets = int((s.tokens[:, 1:] != -100).sum())
        backward_micro_batches(s.model, s.tokens, s.tokens, n_targets, s.args.grad_accum, s.args.chunked_ce)
        gradient_norm(trainable_with_grad(s.groups), s.args.max_grad_norm)
        apply_gradients(s.optimizer)
        s.scheduler.step()


def reach_steady_state(s: Session) -> None:
    """Run the `setup_sets` steps (the state a long run holds before the steps `run_steps` measures)."""
    setup = setup_sets(s.model.config, s.args)
    run_steps(s, len(setup), sets=setup)


def simulate_memory(config: ModelConfig, args: StepConfig, dtype: torch.dtype, steps: int = 2,
                    world_size: int = 1, max_micro_batches: int | None = None, composed: bool = True) -> MemoryReport:
    """Peak live memory of `steps` training steps of train.py with `args` (its step's flags) on `config`.

    Step 1 creates the optimizer state and computes every projector; later steps are the steady state
    (`setup_sets`: with --keep-inactive-state the other blocks' state exists before step 1).
    `composed`: simulate one block of each run of identical ones and compose the rest (module doc); False
    runs every block.
    """
    started = time.perf_counter()
    outer_trained = not (args.method in SAMPLED_METHODS and args.freeze_embeddings)
    setup = setup_sets(config, args)
    plan = plan_blocks(config.n_layers, setup + active_sets(config, args, steps), outer_trained, composed)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_model(config, dtype).parameters())
    with FakeTensorMode(allow_non_fake_inputs=True):
        s = prepare(replace(config, n_layers=plan.n_layers), args, dtype, world_size, max_micro_batches,
                    n_params=n_params)
        param_block = {id(p): k for k, block in enumerate(s.model.layers) for p in block.parameters()}
        tracker = StepTracker(s.optimizer, plan, param_block, unreported=len(setup))
        _mark(tracker, s.optimizer)
        tracker.track_external(s.model, s.optimizer)
        for k, block in enumerate(s.model.layers):  # the parameters of the copies left out, live throughout
            tracker.extra[0] += (plan.repeat[k] - 1) * sum(p.untyped_storage().nbytes() for p in block.parameters())
        tracker.extra[1] = tracker.extra[0]
        with tracker:
            run_steps(s, len(plan.sets), tracker.start_step, plan.sets)
            tracker.start_unit(None)
        if s.fused:
            s.fused.remove()
    return MemoryReport(tracker.peak, tracker.phases, time.perf_counter() - started)
