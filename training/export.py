"""Turn a training checkpoint into a folder other tools open.

    python -m training.export runs/x/step-000500 --format hf      # transformers / vLLM: runs/x/step-000500-hf
    python -m training.export runs/x --format meta --meta-shards 2  # the newest checkpoint of a run, Meta layout
    python -m training.export runs/x/step-000500 --format peft    # LoRA runs: the adapter for peft
    python -m training.export runs/x --format gguf --gguf-type Q8_0  # llama.cpp: runs/x/step-NNNNNN-gguf/model.gguf

A checkpoint of any number of ranks is read into this one process a decoder block at a time and written by
the writer that ends a training run (training/export_writer.py): the same weights give the same files. A
checkpoint of an earlier version (model.pt) exports too. The base model, tokenizer and method come from the arguments the run was started with (``trainer.pt``);
``--model`` / ``--ckpt-dir`` / ``--tokenizer`` replace them when the base has moved. The weights keep the
dtype they were trained in. The run's plugins (a model family of your own) are imported again, and ``--plugin``
adds others.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common import cli
from common.lock import FolderLock
from common.outputs import check_output_folder, clear_output_folder
from common.plugins import add_plugin_flag, import_plugins, plugin_list
from model.cli import DTYPES, add_model_flags, check_model_source
from model.gguf_format import WRITE_TYPES
from model.load import load_model
from model.peft_format import write_peft_adapter
from optim.lora import apply_lora
from training.checkpoint import (METADATA, CheckpointError, check_fits, is_legacy, read_trainer_state, read_weights,
                                 resolve_checkpoint, saved_tensors)
from training.export_writer import lora_scaling, merged, unit_names, write_units
from training.legacy_checkpoint import read_legacy_weights

FORMATS = ("hf", "meta", "gguf", "peft")


def export_checkpoint(checkpoint: Path, format: str, out: Path, model_source: str | None = None,
                      ckpt_dir: str | None = None, tokenizer: str | None = None, meta_shards: int = 1,
                      dtype: torch.dtype | None = None, gguf_type: str = "F16",
                      overwrite: bool = False) -> Path:  # fmt: skip
    """Write `checkpoint` (a step-NNNNNN folder) as `format` into `out` (in `dtype`, default the trained one);
    `out` must be empty unless `overwrite` (then it is cleared), and is locked while written."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} ({', '.join(FORMATS)})")
    legacy = is_legacy(checkpoint)
    for name in ("model.pt" if legacy else str(METADATA), "trainer.pt"):
        if not (checkpoint / name).is_file():
            raise CheckpointError(f"{checkpoint}: not a training checkpoint ({name} is missing)")
    args = read_trainer_state(checkpoint).get("args") or {}
    source = model_source or args.get("model")
    if source is None:
        raise CheckpointError(f"{checkpoint}: trainer.pt does not name the base model; pass --model")
    lora = args.get("method") == "lora"
    if format == "peft" and not lora:
        raise CheckpointError(f"{checkpoint}: --format peft needs a LoRA run (this one used --method {args.get('method')})")
    ckpt_dir, tokenizer = ckpt_dir or args.get("ckpt_dir"), tokenizer or args.get("tokenizer")
    reads = [checkpoint, *(Path(p) for p in (source, ckpt_dir, tokenizer) if p)]
    with FolderLock(out, "--out"):  # one writer; checked before the work, cleared just before writing
        entries = check_output_folder(out, "--out", overwrite, reads)
        read = _legacy_reader(checkpoint) if legacy else _reader(checkpoint)
        skeleton, tok = load_model(source, ckpt_dir=ckpt_dir, tokenizer=tokenizer, weights=False)  # config only
        if lora:
            apply_lora(skeleton, args["lora_rank"], args["lora_alpha"], args.get("lora_dropout", 0.0))
        shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
        dtype = dtype or read.dtype
        read.check(shapes, f"the base model {source}")
        clear_output_folder(entries)
        if format == "peft":  # the adapters into the skeleton (the base weights are not needed)
            skeleton.load_state_dict(read({n: shapes[n] for n in shapes if ".lora_" in n}, dtype), strict=False,
                                     assign=True)
            write_peft_adapter(skeleton, out, base_model=str(source), dropout=args.get("lora_dropout", 0.0))
        else:
            scaling = lora_scaling(skeleton)
            units = (merged(read({n: shapes[n] for n in names}, dtype), scaling)
                     for names in unit_names(shapes, skeleton.config.n_layers))
            write_units(units, skeleton.config, out, format, tok, meta_shards=meta_shards, gguf_type=gguf_type)
    return out


class _reader:
    """Tensors of a checkpoint's shards/, a few at a time (one unit), whole, in this process."""

    def __init__(self, checkpoint: Path):
        self.checkpoint, self.saved = checkpoint, saved_tensors(checkpoint)
        embeddings = self.saved.get("model.tok_embeddings.weight")
        self.dtype = embeddings.properties.dtype if embeddings else torch.float32

    def check(self, shapes: dict[str, tuple[int, ...]], what: str) -> None:
        check_fits(self.checkpoint, self.saved, shapes, what)

    def __call__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        state = read_weights(self.checkpoint, {n: (shape, self.saved[f"model.{n}"].properties.dtype)
                                               for n, shape in shapes.items()})
        return {n: t.to(dtype) for n, t in state.items()}


class _legacy_reader:
    """model.pt of an earlier version's checkpoint, memory-mapped."""

    def __init__(self, checkpoint: Path):
        self.checkpoint, self.state = checkpoint, read_legacy_weights(checkpoint)
        self.dtype = next((v.dtype for v in self.state.values() if v.is_floating_point()), torch.float32)

    def check(self, shapes: dict[str, tuple[int, ...]], what: str) -> None:
        mine = {n: tuple(t.shape) for n, t in self.state.items()}
        bad = sorted(set(mine) ^ set(shapes)) or [n for n in shapes if mine[n] != shapes[n]]
        if bad:
            got = f"of shape {mine[bad[0]]}" if bad[0] in mine else "missing"
            raise CheckpointError(f"{self.checkpoint / 'model.pt'}: does not fit {what}: tensor {bad[0]} is {got}")

    def __call__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {n: self.state[n].to(dtype) for n in shapes}


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a step-NNNNNN folder, or a run folder (its newest checkpoint)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write: hf (transformers), meta, gguf (llama.cpp) or peft (LoRA adapter)")
    p.add_argument("--out", help="output folder (default: the checkpoint folder name + -FORMAT)")
    p.add_argument("--model", help="base model of the run (default: the one in trainer.pt)")
    p.add_argument("--overwrite", action="store_true", help="clear --out first when it holds files")
    p.add_argument("--meta-shards", type=cli.number(int, at_least=1), default=1, help="Meta model-parallel files (13B: 2, 70B: 8)")
    p.add_argument("--gguf-type", default="F16", choices=WRITE_TYPES, help="type of the GGUF matrices")
    add_model_flags(p, dtype_default=None)
    add_plugin_flag(p)
    args = p.parse_args(argv)
    if args.model:
        check_model_source(args.model)
    checkpoint = resolve_checkpoint(args.checkpoint)
    saved = read_trainer_state(checkpoint).get("args") or {}
    import_plugins([*plugin_list(saved.get("plugin"), str(checkpoint / "trainer.pt")), *(args.plugin or [])])
    out = Path(args.out) if args.out else checkpoint.with_name(f"{checkpoint.name}-{args.format}")
    export_checkpoint(checkpoint, args.format, out, args.model, args.ckpt_dir, args.tokenizer, args.meta_shards,
                      DTYPES[args.dtype] if args.dtype else None, args.gguf_type, args.overwrite)  # fmt: skip
    print(f"wrote {args.format} folder {out}")


if __name__ == "__main__":
    cli.run(main)  # a bad input is one line, error: <file or flag>: <cause>; --debug shows the traceback
