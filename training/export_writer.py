"""The one writer of exported weights: HF, Meta or GGUF from a stream of units, and the PEFT adapter.

A unit is a full state dict under our names for one decoder block (``layers.<i>.*``), then one for the rest
(embeddings, final norm, head), LoRA adapters folded into their base weights. Units come from a live model
(`model_units`: gathered block by block under FSDP, a collective; the tensors themselves in one process) or
from a checkpoint (training/export.py reads them block by block from its shards). HF: each unit becomes its
own safetensors file as it arrives (`from_ours`), then the index, config.json and the tokenizer files; no
more than one block is ever held in full. Meta's `consolidated.00.pth` and a GGUF file cannot be written in
pieces: the units are gathered in host memory and written with model/save.py. So the end of a run and
``python -m training.export`` write the same files from the same weights, on any number of ranks.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from common.io import atomic_write, write_json
from model.hf_format import hf_config_from
from model.peft_format import lora_modules, peft_state, write_peft_adapter
from model.save import FORMATS, save_model
from model.tensor_names import from_ours
from model.tokenizer_json import special_ids, write_hf_tokenizer
from model.transformer import Transformer
from training.fsdp import full_tensor

Unit = dict[str, torch.Tensor]


def unit_names(names: Iterable[str], n_layers: int) -> list[list[str]]:
    """State-dict names grouped as the units are: one list per decoder block, then the rest."""
    names = list(names)
    blocks = [[n for n in names if n.startswith(f"layers.{i}.")] for i in range(n_layers)]
    return [*blocks, [n for n in names if not n.startswith("layers.")]]


def lora_scaling(model: nn.Module) -> float | None:
    """alpha / rank of the model's LoRA adapters (one value for all), None without adapters."""
    scalings = {m.scaling for m in lora_modules(model).values()}
    if len(scalings) > 1:
        raise ValueError(f"LoRA adapters with different scalings {sorted(scalings)}")
    return next(iter(scalings), None)


def merged(unit: Unit, scaling: float | None) -> Unit:
    """`unit` with each LoRA pair folded into its base weight, W + B A * scaling (computed in fp32), under
    the plain linear's names (`x.base.weight` -> `x.weight`, `x.base.bias` -> `x.bias`)."""
    out = dict(unit)
    for key in [k for k in unit if k.endswith(".lora_A")]:
        prefix = key.removesuffix(".lora_A")
        a, b, base = out.pop(key), out.pop(f"{prefix}.lora_B"), out.pop(f"{prefix}.base.weight")
        out[f"{prefix}.base.weight"] = base + (b.float() @ a.float() * scaling).to(base.dtype)
    return {_unwrapped(name): t for name, t in out.items()}


def _unwrapped(name: str) -> str:
    """'attention.wq.base.bias' -> 'attention.wq.bias': the name without the LoRA wrapper."""
    module, _, param = name.rpartition(".")
    return f"{module.removesuffix('.base')}.{param}"


def model_units(model: nn.Module) -> Iterator[Unit]:
    """The units of a live model (plain or FSDP); under FSDP a collective: every rank iterates, rank 0 gets
    the tensors (on the CPU), the others empty dicts."""
    main = not dist.is_initialized() or dist.get_rank() == 0
    names = unit_names([n for n, _ in model.named_parameters()], len(model.layers))
    params, scaling = dict(model.named_parameters()), lora_scaling(model)
    for unit in names:
        full = {name: full_tensor(params[name].detach()) for name in unit}
        if model.config.tie_embeddings and "tok_embeddings.weight" in full:  # one parameter, two names
            full["output.weight"] = full["tok_embeddings.weight"]
        yield merged({k: v.cpu() for k, v in full.items()}, scaling) if main else {}


def write_units(units: Iterable[Unit], config, out_dir: Path, format: str, tokenizer=None, main: bool = True,
                meta_shards: int = 1, gguf_type: str = "F16") -> None:
    """Write `units` as an HF folder (streamed), a Meta folder or a GGUF file (`out_dir`/model.gguf); only
    `main` writes (the other ranks of a collective `units` pass empty ones)."""
    if format not in FORMATS:
        raise ValueError(f"unknown save format {format!r} ({', '.join(FORMATS)})")
    if format != "hf":  # one file: gathered into host memory, written by model/save.py
        state = {}
        for unit in units:
            state.update(unit)
        if main:  # a plain model around the gathered tensors (no copy)
            with torch.device("meta"):
                plain = Transformer(config)
            plain.load_state_dict(state, assign=True)
            save_model(plain, out_dir, format=format, tokenizer=tokenizer, meta_shards=meta_shards,
                       gguf_type=gguf_type)
        return
    weight_map, total, dtype, count = {}, 0, None, config.n_layers + 1
    for index, unit in enumerate(units):
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
        write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
        cfg = hf_config_from(config)
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
        cfg.update(special_ids(tokenizer) if tokenizer is not None else {})
        write_json(out_dir / "config.json", cfg)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, out_dir, config.max_seq_len)


def export_model(model: nn.Module, out_dir: Path, format: str, tokenizer=None) -> None:
    """A live model's merged weights (LoRA folded in, the model left as it is); under FSDP every rank calls this."""
    write_units(model_units(model), model.config, out_dir, format, tokenizer,
                main=not dist.is_initialized() or dist.get_rank() == 0)
    if dist.is_initialized():
        dist.barrier()


def export_adapter(model: nn.Module, out_dir: Path, base_model: str, dropout: float = 0.0) -> None:
    """The LoRA adapters as a PEFT folder: gathered (they are small) and written by rank 0; under FSDP every
    rank calls this."""
    state = peft_state(model)
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_peft_adapter(model, out_dir, base_model, dropout, state=state)
    if dist.is_initialized():
        dist.barrier()
