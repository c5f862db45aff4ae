"""Turn a training checkpoint into a folder other tools open.

    python -m training.export runs/x/step-000500 --format hf      # transformers / vLLM: runs/x/step-000500-hf
    python -m training.export runs/x --format meta --meta-shards 2  # the newest checkpoint of a run, Meta layout
    python -m training.export runs/x/step-000500 --format peft    # LoRA runs: the adapter for peft
    python -m training.export runs/x --format gguf --gguf-type Q8_0  # llama.cpp: runs/x/step-NNNNNN-gguf/model.gguf

A checkpoint of several ranks or of --fsdp (DCP shards) is read whole into this one process.
The base model, tokenizer and method come from the arguments the run was started with (``trainer.pt``);
``--model`` / ``--ckpt-dir`` / ``--tokenizer`` replace them when the base has moved. The weights keep the
dtype they were trained in. The run's plugins (a model family of your own) are imported again, and ``--plugin``
adds others.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from common import cli
from common.lock import FolderLock
from common.outputs import check_output_folder, clear_output_folder
from common.plugins import add_plugin_flag, import_plugins, plugin_list
from model.cli import DTYPES, add_model_flags, check_model_source
from model.load import load_model
from model.peft_format import write_peft_adapter
from model.gguf_format import WRITE_TYPES
from model.save import save_model
from optim.lora import apply_lora, merge_lora
from training.checkpoint import CheckpointError, read_file, read_trainer_state, resolve_checkpoint
from training.dcp_reader import SafeReader, read_metadata

FORMATS = ("hf", "meta", "gguf", "peft")


def export_checkpoint(checkpoint: Path, format: str, out: Path, model_source: str | None = None,
                      ckpt_dir: str | None = None, tokenizer: str | None = None, meta_shards: int = 1,
                      dtype: torch.dtype | None = None, gguf_type: str = "F16",
                      overwrite: bool = False) -> Path:  # fmt: skip
    """Write `checkpoint` (a step-NNNNNN folder) as `format` into `out` (in `dtype`, default the trained one);
    `out` must be empty unless `overwrite` (then it is cleared), and is locked while written."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} ({', '.join(FORMATS)})")
    sharded = (checkpoint / "shards" / ".metadata").is_file()  # DCP, written by several ranks or with --fsdp
    for name in ("shards/.metadata" if sharded else "model.pt", "trainer.pt"):
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
        model, tok = _exported_model(checkpoint, sharded, args, source, ckpt_dir, tokenizer, dtype)
        clear_output_folder(entries)
        if format == "peft":
            write_peft_adapter(model, out, base_model=str(source), dropout=args.get("lora_dropout", 0.0))
        else:
            if lora:
                merge_lora(model)
            save_model(model, out, format=format, tokenizer=tok, meta_shards=meta_shards, gguf_type=gguf_type)
    return out


def _exported_model(checkpoint: Path, sharded: bool, args: dict, source: str, ckpt_dir: str | None,
                    tokenizer: str | None, dtype: torch.dtype | None):
    """The base model with the checkpoint's weights (and its LoRA adapters, not merged)."""
    if sharded:  # read into this one process below, each tensor whole (DCP reshards)
        saved = read_metadata(checkpoint / "shards" / ".metadata").state_dict_metadata  # never plain pickle
        state, dtype = None, dtype or saved["model.tok_embeddings.weight"].properties.dtype
    else:
        state = read_file(checkpoint / "model.pt", map_location="cpu", mmap=True)
        dtype = dtype or next(v.dtype for v in state.values() if v.is_floating_point())
    model, tok = load_model(source, dtype=dtype, ckpt_dir=ckpt_dir, tokenizer=tokenizer)
    if args.get("method") == "lora":
        apply_lora(model, args["lora_rank"], args["lora_alpha"], args.get("lora_dropout", 0.0))
    try:
        if sharded:
            state = {"model": model.state_dict()}  # the model's own tensors, filled in place
            for name, t in state["model"].items():
                found = saved.get(f"model.{name}")
                if found is None or tuple(found.size) != tuple(t.shape):
                    got = "missing" if found is None else f"of shape {tuple(found.size)}"
                    raise RuntimeError(f"tensor {name} is {got}, expected {tuple(t.shape)}")
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(state, storage_reader=SafeReader(checkpoint / "shards"), no_dist=True)
        else:
            model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        what = "shards/" if sharded else "model.pt"
        raise CheckpointError(f"{checkpoint}: {what} does not fit the base model {source}: {str(e).splitlines()[0]}") from None
    return model, tok


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
