"""Run by tests/test_fsdp.py under torchrun (one launch serves several runs; a launch costs seconds).

  fsdp_worker.py runs RUNS.json            train.main(argv) for each argv in the file, in order
  fsdp_worker.py interrupt K RUNS.json     as `runs`, but every rank SIGINTs itself after its K-th step
  fsdp_worker.py frozen OUT.json MODEL_DIR the sharded model under a layer sampler, checked on every rank
  fsdp_worker.py reads OUT RUNS.json       as `runs`; each rank writes OUT.<rank>.json: the shapes of the
                                           checkpoint tensors it turned into a model (model.load.build_model)
  fsdp_worker.py plugin MODULE RUNS.json   as `runs`, after importing a researcher's MODULE (from tests/)
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

import train  # noqa: E402
from common.errors import Stopped  # noqa: E402


def runs(path: str) -> None:
    """One process group for all runs (train.main would tear it down after each); a run stopped by a signal
    (`interrupt`) goes on to the next."""
    dist.init_process_group("gloo")
    train.close_world = lambda world: None
    for argv in json.loads(Path(path).read_text()):
        try:
            train.main(argv)
        except Stopped:
            pass
    dist.destroy_process_group()


def interrupt(after: int, path: str) -> None:
    real, calls = train.accumulate_gradients, []

    def interrupted(*a):
        result = real(*a)
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)  # the loop finishes this step, saves and stops
        return result

    train.accumulate_gradients = interrupted
    runs(path)


def frozen(out: str, model_dir: str) -> None:
    """Per step: the active blocks, which blocks' parameters hold a gradient after backward, and which hold
    optimizer state after the step; rank 0 writes every rank's record."""
    from model import load_model
    from optim import GaLoreAdamW
    from optim.projector import SVDProjector
    from sampling import LayerSampler
    from training.distributed import close_world, init_world
    from training.fsdp import shard_model
    from training.methods import activate_blocks, param_groups

    world = init_world("cpu", group=True)
    torch.manual_seed(0)
    model, _ = load_model(model_dir)
    galore = dict(projector=SVDProjector(4), update_proj_gap=2, scale=0.25)
    groups = shard_model(model, param_groups(model, galore), torch.device("cpu"), world.size)
    optimizer = GaLoreAdamW(groups, lr=1e-3)
    sampler = LayerSampler("uniform", 2, 3, 7, model.config.n_layers)
    records = []
    for step in range(7):
        if step % sampler.period == 0:
            optimizer.drop_state(activate_blocks(model, sampler.active_layers(step), train_outer=True))
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(step))
        model(ids).float().logsumexp(-1).mean().backward()
        with_grad = sorted({i for i, b in enumerate(model.layers) for p in b.parameters() if p.grad is not None})
        sharded = all(isinstance(p.grad, DTensor) for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with_state = sorted({i for i, b in enumerate(model.layers) for p in b.parameters() if optimizer.state.get(p)})
        active = [i for i, b in enumerate(model.layers) if next(b.parameters()).requires_grad]
        records.append(dict(step=step, active=active, with_grad=with_grad, with_state=with_state, sharded=sharded))
    gathered = [None] * world.size
    dist.all_gather_object(gathered, records)
    if world.is_main:
        Path(out).write_text(json.dumps(gathered))
    close_world(world)


def reads(out: str, path: str) -> None:
    import model.load
    real, built = model.load.build_model, []

    def build_model(config, state, *a, **k):
        built.append(sum(t.numel() for t in state.values()))
        return real(config, state, *a, **k)

    model.load.build_model = build_model
    try:
        runs(path)
    finally:
        Path(f"{out}.{os.environ['RANK']}.json").write_text(json.dumps(built))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"runs": runs, "interrupt": lambda k, p: interrupt(int(k), p), "frozen": frozen, "reads": reads,
     "plugin": lambda module, p: (importlib.import_module(module), runs(p))}[mode](*rest)
