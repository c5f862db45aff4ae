"""--compile: `torch.compile` each decoder block, as torchtune does. One compiled graph serves every block of
the same kind (its weights are graph inputs), and Dynamo guards on `requires_grad`, so a run that redraws its
trainable blocks every period compiles at most the trainable and the frozen variant once, never per period."""
from __future__ import annotations

import torch

from common.errors import UserError


def use_compile(flag: bool | None, device: torch.device, distributed: bool) -> bool:
    """--compile / --no-compile, or the default: on for CUDA, off on CPU (BENCHMARKS.md: compiled vs eager).
    Not with FSDP (its hooks run in the block's call): an explicit --compile there is refused."""
    if flag and distributed:
        raise UserError("--compile: not with --fsdp or several ranks; pass --no-compile")
    return device.type == "cuda" and not distributed if flag is None else flag


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> None:
    """Compile every decoder block's call in place (checkpointing, when on, wraps the compiled call)."""
    for block in model.layers:
        block.compile(backend=backend)
