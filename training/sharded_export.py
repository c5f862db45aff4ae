"""The final weights of an FSDP run (`--fsdp` or data parallel), written one FSDP unit at a time.

HF: every rank gathers one decoder block (`full_tensor`), rank 0 converts it (`tensor_names.from_ours`), merges LoRA
adapters if there are any and writes it as its own safetensors file, then frees it; the embeddings, final
norm and head are the last file, then the index and config.json. No rank ever holds more than one block
(or the embeddings) in full. Meta's `consolidated.00.pth` (and a GGUF file) cannot be written in pieces:
rank 0 gathers block by block into host memory and writes it with model/save.py. The HF folder's config.json
and tokenizer files are the ones model/save.py writes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from common.io import atomic_write, write_json
from model.hf_format import hf_config_from
from model.peft_format import peft_state, write_peft_adapter
from model.save import FORMATS, save_model
from model.tensor_names import from_ours
from model.tokenizer_json import special_ids, write_hf_tokenizer
from model.transformer import Transformer
from optim.lora import LoRALinear
from training.fsdp import full_tensor


def gathered_units(model: nn.Module):
    """Yield (unit index, number of units, full state of the unit) for each block, then the root's rest;
    a collective: every rank iterates; only rank 0 gets the tensors (on CPU), the others empty dicts."""
    units = [(f"layers.{i}.", block) for i, block in enumerate(model.layers)]
    outer = [(name, p) for name, p in model.named_parameters() if not name.startswith("layers.")]
    main = dist.get_rank() == 0
    for index, (prefix, block) in enumerate(units):
        yield index, len(units) + 1, _merged(block, prefix, main)
    state = {name: full_tensor(p.detach()) for name, p in outer}
    if model.config.tie_embeddings:  # one parameter under two names, as model.state_dict() has it
        state["output.weight"] = state["tok_embeddings.weight"]
    yield len(units), len(units) + 1, {k: v.cpu() for k, v in state.items()} if main else {}


def _merged(block: nn.Module, prefix: str, main: bool) -> dict[str, torch.Tensor]:
    """A block's full parameters under Meta names, LoRA adapters folded into their base weights (a wrapped
    linear's bias, `base.bias`, keeps the linear's own name)."""
    full = {name: full_tensor(p.detach()) for name, p in block.named_parameters()}
    if not main:
        return {}
    for name, module in block.named_modules():
        if isinstance(module, LoRALinear) and not module.merged:
            base, a, b = (full.pop(f"{name}.{part}") for part in ("base.weight", "lora_A", "lora_B"))
            full[f"{name}.base.weight"] = base + (b.float() @ a.float() * module.scaling).to(base.dtype)
    return {prefix + _unwrapped(name): t.cpu() for name, t in full.items()}


def _unwrapped(name: str) -> str:
    """'attention.wq.base.bias' -> 'attention.wq.bias': the name without the LoRA wrapper."""
    module, _, param = name.rpartition(".")
    return f"{module.removesuffix('.base')}.{param}"


def export_sharded(model: nn.Module, out_dir: Path, format: str, tokenizer=None) -> None:
    """Write the sharded `model` as an HF dir (streamed), a Meta dir or a GGUF file; every rank calls this."""
    if format not in FORMATS:
        raise ValueError(f"unknown save format {format!r} ({', '.join(FORMATS)})")
    main = dist.get_rank() == 0
    config = model.config
    if format != "hf":  # one file: gathered into rank 0's host memory, written by model/save.py
        state = {}
        for _, _, unit in gathered_units(model):
            state.update(unit)
        if main:  # a plain model around the gathered tensors (no copy), written as train.py writes one
            with torch.device("meta"):
                plain = Transformer(config)
            plain.load_state_dict(state, assign=True)
            save_model(plain, out_dir, format=format, tokenizer=tokenizer)
    else:
        weight_map, total, dtype = {}, 0, None
        for index, count, unit in gathered_units(model):
            if not main:
                continue
            hf = {k: v.contiguous() for k, v in from_ours(unit, config, "hf").items()}
            name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(out_dir / name, lambda tmp, s=hf: save_file(s, tmp, metadata={"format": "pt"}))
            weight_map.update({k: name for k in hf})
            total += sum(v.numel() * v.element_size() for v in hf.values())
            dtype = dtype or next(iter(hf.values())).dtype
        if main:
            write_json(out_dir / "model.safetensors.index.json",
                       {"metadata": {"total_size": total}, "weight_map": weight_map})
            cfg = hf_config_from(config)
            cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
            cfg.update(special_ids(tokenizer) if tokenizer is not None else {})
            write_json(out_dir / "config.json", cfg)
            if tokenizer is not None:
                write_hf_tokenizer(tokenizer, out_dir, config.max_seq_len)
    dist.barrier()


def export_peft_sharded(model: nn.Module, out_dir: Path, base_model: str, dropout: float = 0.0) -> None:
    """The LoRA adapters of an FSDP `model` as a PEFT folder: every rank gathers them (they are small),
    rank 0 writes; every rank calls this."""
    state = peft_state(model)
    if dist.get_rank() == 0:
        write_peft_adapter(model, out_dir, base_model, dropout, state=state)
    dist.barrier()
