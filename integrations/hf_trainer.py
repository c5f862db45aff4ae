"""OwLore inside `transformers.Trainer` (and its subclasses, e.g. TRL's SFTTrainer) on any HF causal LM.

    ratios = outlier_ratios(model, calibration_batches, M=13)       # D_l of the pre-trained blocks
    owlore = OwLoreCallback(model, policy="owlore", gamma=2, period=50, seed=42, ratios=ratios)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[owlore],
                      optimizers=(owlore.create_optimizer(args), None))
    trainer.train()

Every `period` steps the callback draws `gamma` decoder blocks with the LayerSampler of train.py (the
same draws for the same seed and policy), makes only them and the embeddings/final norm/head trainable
and frees the optimizer state of the blocks that left. The optimizer is built before any block is
frozen and holds every parameter: the block matrices in one GaLore group, the rest plain AdamW (train.py's
groups). A Trainer's own optimizer only holds the parameters that require grad when it is made, so a
block frozen then would never train (LMFlow's LISA callback, LMFlow issue #726); the callback refuses an
optimizer it did not build. The sampler's state travels in the optimizer's state_dict, so a Trainer
checkpoint (optimizer.pt) resumes the same draws, and a dynamic policy the same state.

Blocks and their linears are found generically (sampling/blocks.py); the math is sampling/'s.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers import TrainerCallback, TrainingArguments

from optim import GaLoreAdamW, build_projector
from sampling.blocks import decoder_blocks
from sampling.outliers import outlier_ratios as _outlier_ratios
from sampling.sampler import LayerSampler
from training.methods import activate_blocks, param_groups

SAMPLER_KEY = "owlore_sampler"


def outlier_ratios(model: nn.Module, batches: Iterable[Tensor], M: float, blockwise: bool = False,
                   device: torch.device | str | None = None, progress: bool = True) -> list[float]:
    """D_l (percent) of every decoder block of an HF causal LM over calibration batches of token ids."""
    return _outlier_ratios(model, batches, M, blockwise, device,
                           forward=lambda tokens: model(input_ids=tokens, use_cache=False), progress=progress)


class SampledGaLoreAdamW(GaLoreAdamW):
    """GaLoreAdamW whose state_dict also holds the layer sampler's, so that a checkpoint resumes its draws."""

    def __init__(self, params, sampler: LayerSampler, **options):
        super().__init__(params, **options)
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {**super().state_dict(), SAMPLER_KEY: self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        if SAMPLER_KEY not in state_dict:
            raise ValueError("optimizer state has no layer-sampler state: it was not saved by OwLoreCallback's optimizer")
        sampler = state_dict.pop(SAMPLER_KEY)
        super().load_state_dict(state_dict)
        self.sampler.load_state_dict(sampler)


class OwLoreCallback(TrainerCallback):
    """Layerwise sampling (OwLore, LISA and the other policies of sampling/policies.py) for a Trainer.

    `inputs`: what the policy needs (`ratios` for owlore, `alphas` for htsr, `fixed_layers` for fixed).
    `galore=False` trains the drawn blocks with plain AdamW (owlore-fullrank, lisa). rank, update_proj_gap
    and scale default to train.py's (the official OwLore run); the optimizer state of blocks that leave is
    freed unless `keep_inactive_state` (train.py, as the official code, keeps it by default).
    """

    def __init__(self, model: nn.Module, policy: str = "owlore", gamma: int = 2, period: int = 50, seed: int = 42, *,
                 galore: bool = True, rank: int = 256, update_proj_gap: int = 100, scale: float = 1.0,
                 projector: str = "svd", proj_type: str = "std", train_outer: bool = True,
                 keep_inactive_state: bool = False, **inputs):
        self.model = model
        self.sampler = LayerSampler(policy, gamma, period, seed, len(decoder_blocks(model)), **inputs)
        self.galore = dict(projector=build_projector(projector, rank=rank, proj_type=proj_type),
                           update_proj_gap=update_proj_gap, scale=scale) if galore else None
        self.train_outer, self.keep_inactive_state = train_outer, keep_inactive_state
        self.optimizer: SampledGaLoreAdamW | None = None
        self.history: list[tuple[int, list[int]]] = []  # (step, active blocks) at every draw
        self._resumed = True

    def create_optimizer(self, args: TrainingArguments) -> SampledGaLoreAdamW:
        """The Trainer's optimizer (pass it as `optimizers=(optimizer, None)`): every parameter of the
        model, lr, betas, eps and weight decay from `args`; the Trainer makes the lr schedule."""
        self.optimizer = SampledGaLoreAdamW(
            param_groups(self.model, self.galore), self.sampler, lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=args.weight_decay)
        return self.optimizer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        while optimizer is not None and optimizer is not self.optimizer and hasattr(optimizer, "optimizer"):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
        if self.optimizer is None or optimizer is not self.optimizer:
            raise ValueError("OwLoreCallback: the Trainer's optimizer must be the callback's own, "
                             "Trainer(..., optimizers=(callback.create_optimizer(args), None)), which holds every "
                             "parameter that can ever train (a default Trainer optimizer misses the frozen blocks)")
        self._resumed = True  # the first step of this train() call draws, whatever its period position

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.sampler.period == 0 or self._resumed:
            active = self.sampler.active_layers(step, self.model)
            left = activate_blocks(self.model, active, self.train_outer)
            if not self.keep_inactive_state:
                self.optimizer.drop_state(left)
            self.history.append((step, active))
            self._resumed = False
