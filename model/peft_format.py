"""LoRA adapters as a PEFT folder: adapter_config.json + adapter_model.safetensors on HF module names.

``peft.PeftModel.from_pretrained(<the HF base>, folder)`` then computes W x + (alpha / r) B A x as we do.
Key names: ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` (A: r x in) and
``....lora_B.weight`` (B: out x r). Names and q/k row order are the HF format's of the model's family
(model/families/): where HF permutes the rows of q/k (rotate_half RoPE, `tensor_names.permute`), B A's rows
are the output rows, so B is permuted the same way and A is not.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from common.io import atomic_write, write_json
from model.tensor_names import format_name, from_ours
from model.transformer import Transformer


def lora_modules(model: Transformer) -> dict[str, torch.nn.Module]:
    """Meta module name ('layers.0.attention.wq') -> LoRA wrapper (anything with lora_A, lora_B, alpha, rank)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "lora_B")}


def peft_state(model: Transformer) -> dict[str, torch.Tensor]:
    """PEFT-named adapter tensors of a model wrapped by `optim.apply_lora`. With FSDP (DTensor adapters) a
    collective: every rank gathers every adapter."""
    config, out = model.config, {}
    for name, module in lora_modules(model).items():
        a, b = (_whole(t.detach()).cpu() for t in (module.lora_A, module.lora_B))
        ((hf, b),) = from_ours({f"{name}.weight": b}, config, "hf").items()  # B's rows are the weight's rows
        hf = hf.removesuffix(".weight")
        out[f"base_model.model.{hf}.lora_A.weight"] = a.contiguous()
        out[f"base_model.model.{hf}.lora_B.weight"] = b.contiguous()
    return out


def write_peft_adapter(model: Transformer, out_dir: str | Path, base_model: str, dropout: float = 0.0,
                       state: dict[str, torch.Tensor] | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors for the LoRA wrappers of `model` (none: ValueError);
    `state`: the adapter tensors, when `peft_state(model)` was taken already (FSDP: on every rank)."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA adapters to write (train with --method lora)")
    ranks = {(m.rank, m.alpha) for m in modules.values()}
    if len(ranks) != 1:
        raise ValueError(f"a PEFT adapter has one rank and alpha; the model has {sorted(ranks)}")
    ((rank, alpha),) = ranks
    targets = sorted({format_name(f"{n}.weight", model.config, "hf").split(".")[-2] for n in modules})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = peft_state(model) if state is None else state
    atomic_write(out_dir / "adapter_model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(out_dir / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "inference_mode": True,
        "modules_to_save": None, "init_lora_weights": True,
    })  # fmt: skip


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t
