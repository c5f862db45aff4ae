"""Optimizers: GaLore-AdamW (also plain AdamW) with pluggable projectors, fused per-parameter steps, LoRA,
state-memory accounting."""
from optim.apollo import ApolloMiniProjector, ApolloProjector
from optim.fused import FusedStepHandle, attach_fused_step
from optim.galore_adamw import GaLoreAdamW
from optim.lora import LoRALinear, apply_lora, lora_param_count, merge_lora
from optim.memory import measured_state_bytes, state_bytes
from optim.projector import PROJECTORS, Projector, RandomProjector, SVDProjector, build_projector, projection_side
from optim.schedule import lr_lambda

__all__ = [
    "PROJECTORS", "ApolloMiniProjector", "ApolloProjector", "FusedStepHandle", "GaLoreAdamW", "LoRALinear", "Projector", "RandomProjector", "SVDProjector",
    "apply_lora", "attach_fused_step", "build_projector", "lora_param_count", "lr_lambda", "measured_state_bytes",
    "merge_lora", "projection_side", "state_bytes",
]
