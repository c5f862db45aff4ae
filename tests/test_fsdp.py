"""--fsdp (FSDP2) on CPU with gloo: 2 processes under torchrun against 1 process with the same global batch.

Each torchrun launch costs seconds, so one launch (tests/fsdp_worker.py) serves several runs. Tolerances:
the same fp32 arithmetic with the gradient sums taken in another order (reduce-scatter vs one process) agrees
to ~1e-7 per step here; we allow atol 1e-5 / rtol 1e-4 on weights after 3 steps, as the data-parallel test.
Adam's eps is 1e-6: with 1e-8 an element whose gradient is ~0 steps by +-lr on the sign of a rounding error.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import train
from model.hf_format import read_hf_dir
from model.meta_format import read_meta_dir
from helpers import built_once, two_processes
from training.checkpoint import read_optimizer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fsdp_worker.py")
# LoRA dropout off: each rank draws its own dropout masks, one process draws them for the whole batch.
# galore with the random projector (bases independent of the gradient): projection, moments and weights
# compare tightly; owlore with GaLore's SVD, whose subspace follows rounding-level changes of the gradient
# where singular values nearly coincide (then principal angles, not entries, are what must agree).
# (--fused with --grad-accum refreshes the projector from the first micro-batch, which is another subset of
# the global batch on N ranks than on one: not comparable, so fused runs without accumulation here.)
METHODS = {"full": [], "lora": ["--lr", "1e-2", "--lora-dropout", "0"],
           "galore": ["--grad-accum", "2", "--projector", "random"], "lisa": ["--max-grad-norm", "0.01"],
           "owlore": ["--grad-ckpt", "--save-format", "both"], "owlore-fullrank": [],
           "owlore-fused": ["--fused", "--chunked-ce"]}
GALORE = ("galore", "owlore", "owlore-fused")


def common(tiny_dir, data_file, out, *extra) -> list[str]:
    return ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64", "--no-pack",
            "--batch-size", "8", "--lr", "3e-3", "--seed", "1", "--rank", "8", "--update-proj-gap", "2",
            "--gamma", "2", "--period", "2", "--calib-windows", "2", "--calib-seq-len", "16", "--M", "3",
            "--max-steps", "3", "--save-format", "hf", "--eps", "1e-6", "--no-memory-report", *extra]


def torchrun(*worker_args: str) -> None:
    done = two_processes(WORKER, *worker_args)
    assert done.returncode == 0, done.stderr[-4000:]


def launch(tmp: Path, runs: list[list[str]], *mode: str) -> None:
    (tmp / "runs.json").write_text(json.dumps(runs))
    torchrun(*(mode or ("runs",)), tmp / "runs.json")


def losses(out: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def extra(method: str, data_file: Path) -> list[str]:
    """The run's flags; "full" also evaluates on held-out data (a sharded forward on every rank)."""
    return METHODS[method] + (["--eval-data", str(data_file)] if method == "full" else [])


def dcp_state(ckpt: Path, tmp: Path) -> dict:
    """A DCP checkpoint's tensors ({"model": ..., "optim": ...}) read back in one process."""
    dcp_to_torch_save(ckpt / "shards", tmp / "flat.pt")
    return torch.load(tmp / "flat.pt", weights_only=True)


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


MODES = {"fsdp": ["--fsdp"], "dp": []}  # fully sharded, and plain data parallelism (FSDP2 replicating)


@pytest.fixture(scope="module")
def sharded(tiny_dir, data_file, tmp_path_factory) -> Path:
    """Every method, 3 steps, 2 processes, sharded (<tmp>/fsdp/<method>) and replicated (<tmp>/dp/<method>),
    in one launch."""
    return built_once(tmp_path_factory, "fsdp-sharded", lambda tmp: launch(
        tmp, [common(tiny_dir, data_file, tmp / mode / m, "--method", m.removesuffix("-fused"), *flags, *extra(m, data_file))
              for mode, flags in MODES.items() for m in METHODS]))


@pytest.fixture(scope="module")
def single(tiny_dir, data_file, tmp_path_factory):
    """method -> the folder of its 1-process run (made once, for both modes)."""
    def run(method: str) -> Path:
        return built_once(tmp_path_factory, f"fsdp-single-{method}", lambda out: train.main(common(
            tiny_dir, data_file, out / method, "--method", method.removesuffix("-fused"), *extra(method, data_file)))) / method
    return run


@pytest.mark.distributed
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_match_one_process(sharded, single, tiny_dir, data_file, tmp_path, mode, method):
    two_dir, one_dir = sharded / mode / method, single(method)
    two, one = losses(two_dir), losses(one_dir)
    assert len(two) == len(one) == 3 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(two, one))
    two, one = losses(two_dir, "heldout_loss"), losses(one_dir, "heldout_loss")
    assert len(two) == len(one) == (2 if method == "full" else 0) and two == pytest.approx(one, rel=1e-5)
    _, streamed = read_hf_dir(two_dir / "final-hf")  # the streamed export of the 2-process run
    _, unsharded = read_hf_dir(one_dir / "final-hf")
    assert close(streamed, unsharded)
    if method == "lora":  # the PEFT adapter, gathered from the ranks
        from safetensors.torch import load_file
        assert close(load_file(two_dir / "final-peft" / "adapter_model.safetensors"),
                     load_file(one_dir / "final-peft" / "adapter_model.safetensors"))
    if method in GALORE:
        check_optimizer_state(two_dir / "step-000003", one_dir / "step-000003", tmp_path)


def check_optimizer_state(sharded_ckpt: Path, single_ckpt: Path, tmp: Path) -> None:
    """GaLore subspaces agree (cosines of the principal angles ~1), and so do the moments; the layout over
    ranks a 1-process checkpoint gives its optimizer tensors is the one the sharded run recorded."""
    single, _ = read_optimizer(single_ckpt)
    layouts = [torch.load(c / "trainer.pt", weights_only=True)["optimizer"]["layout"] for c in (single_ckpt, sharded_ckpt)]
    assert layouts[0] == layouts[1]
    optim = dcp_state(sharded_ckpt, tmp)["optim"]
    projected = [n for n in single if "projection" in single[n]]
    assert projected and {k.split("/")[0] for k in optim} == set(single)
    for name in projected:
        for side, basis in single[name]["projection"].items():
            other = optim[f"{name}/projection/{side}"]
            a, b = (basis, other) if side == "vh" else (basis.mT, other.mT)  # rows span the subspace
            cosines = torch.linalg.svdvals(a @ b.mT)
            assert cosines.min() > 1 - 1e-4, (name, side, cosines)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(optim[f"{name}/{key}"], single[name][key], atol=1e-6, rtol=1e-3), (name, key)


@pytest.mark.distributed
def test_registered_projectors_train_sharded_as_on_one_process(tiny_dir, data_file, tmp_path):
    """The toy projector of docs/design.md, registered by a module of its own that every rank imports, and
    APOLLO / APOLLO-Mini (whose update reads norms of the whole gradient, and keeps one across refreshes, on
    OwLore's sampled blocks for Mini): --fsdp on 2 processes trains as 1 process does."""
    import sketch_projector  # noqa: F401  (registers "sketch" here, for the 1-process runs)
    runs = {"sketch": ["--method", "galore"], "apollo": ["--method", "galore"], "apollo-mini": ["--method", "owlore"]}
    argv = lambda out, name: common(tiny_dir, data_file, out, *runs[name], "--projector", name,  # noqa: E731
                                    "--galore-scale", "1")
    (tmp_path / "runs.json").write_text(json.dumps([[*argv(tmp_path / "two" / name, name), "--fsdp"] for name in runs]))
    torchrun("plugin", "sketch_projector", tmp_path / "runs.json")
    for name in runs:
        train.main(argv(tmp_path / "one" / name, name))
        one, two = losses(tmp_path / "one" / name), losses(tmp_path / "two" / name)
        assert len(one) == 3 and two == pytest.approx(one, rel=1e-5), name
        assert close(read_hf_dir(tmp_path / "two" / name / "final-hf")[1], read_hf_dir(tmp_path / "one" / name / "final-hf")[1])
        _, groups = read_optimizer(tmp_path / "one" / name / "step-000003")
        assert {g["projector"]["name"] for g in groups if g["projector"]} == {name}


@pytest.mark.distributed
def test_streamed_export_equals_unsharded_export_of_the_same_weights(sharded, tiny_dir, tmp_path):
    """The block-by-block HF and Meta exports hold exactly the weights the sharded checkpoint holds, and the
    HF folder's config.json is the one save_model writes."""
    from model import load_model, save_model
    run = sharded / "fsdp" / "owlore"
    state = dcp_state(run / "step-000003", tmp_path)["model"]
    model, tokenizer = load_model(tiny_dir)
    model.load_state_dict(state)
    save_model(model, tmp_path / "hf", format="hf", tokenizer=tokenizer)
    config_json = lambda folder: json.loads((folder / "config.json").read_text())  # noqa: E731
    assert config_json(run / "final-hf") == config_json(tmp_path / "hf")
    config = model.config
    _, streamed = read_hf_dir(run / "final-hf")
    _, unsharded = read_hf_dir(tmp_path / "hf")
    assert streamed.keys() == unsharded.keys() and all(torch.equal(streamed[k], unsharded[k]) for k in streamed)
    _, meta = read_meta_dir(run / "final-meta")
    assert all(torch.equal(meta[k], unsharded[k]) for k in unsharded)
    assert len(list((run / "final-hf").glob("*.safetensors"))) == config.n_layers + 1  # one file per unit


@pytest.mark.distributed
def test_frozen_blocks_get_no_gradient_and_no_state_and_switch_together(tiny_dir, tmp_path):
    torchrun("frozen", tmp_path / "frozen.json", tiny_dir)
    ranks = json.loads((tmp_path / "frozen.json").read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # every rank: the same blocks, gradients and state
    steps = ranks[0]
    for record in steps:
        assert record["sharded"] and record["with_grad"] == record["with_state"] == record["active"]
        assert len(record["active"]) == 2
    switches = [r["step"] for prev, r in zip(steps, steps[1:]) if r["active"] != prev["active"]]
    assert switches and all(step % 3 == 0 for step in switches)  # period 3: only at period boundaries


@pytest.mark.distributed
@pytest.mark.parametrize("mode", list(MODES))
def test_sigint_resume_equals_uninterrupted_also_on_one_process(tiny_dir, data_file, tmp_path, mode):
    """2 processes, sharded or replicated: SIGINT after step 1, resume on 2 processes, and on 1 (--fsdp: DCP
    reshards, from the replicated run's ranks x 1 mesh too)."""
    argv = lambda out, *extra: common(tiny_dir, data_file, tmp_path / out, "--method", "owlore",  # noqa: E731
                                      *MODES[mode], "--max-steps", "4", "--save-format", "none", *extra)
    launch(tmp_path, [argv("split"), argv("straight")], "interrupt", "1")  # only the first run is interrupted
    assert [p.name for p in (tmp_path / "split").glob("step-*")] == ["step-000001"]
    shutil.copytree(tmp_path / "split", tmp_path / "one")
    launch(tmp_path, [argv("split", "--resume", str(tmp_path / "split"))])
    straight = dcp_state(tmp_path / "straight" / "step-000004", tmp_path / "straight")
    split = dcp_state(tmp_path / "split" / "step-000004", tmp_path / "split")
    # the same world size: the same arithmetic in the same order, bit for bit
    assert all(torch.equal(straight["model"][k], split["model"][k]) for k in straight["model"])
    assert straight["optim"].keys() == split["optim"].keys()
    assert all(torch.equal(straight["optim"][k], split["optim"][k]) for k in straight["optim"])
    # 2 processes -> 1 process: DCP reshards; gradient sums in another order, so to rounding
    train.main([*argv("one", "--resume", str(tmp_path / "one")), "--fsdp"])
    one = dcp_state(tmp_path / "one" / "step-000004", tmp_path / "one")
    assert close(one["model"], straight["model"])
    assert losses(tmp_path / "one")[-3:] == pytest.approx(losses(tmp_path / "straight")[-3:], rel=1e-5)


@pytest.mark.parametrize("method, gamma", [("full", 0), ("owlore", 2)])
def test_simulated_peak_per_rank_replicated_costs_at_most_two_gathered_blocks(method, gamma):
    """Data parallelism on FSDP2 (the ranks x 1 mesh) holds what one process holds, plus at most the gathered
    copies of two blocks (the one running and the one prefetched); sharding over 2 ranks holds less."""
    from bench.fsdp_memory import simulate
    from model import Transformer, get_config
    block = sum(p.numel() for p in Transformer(get_config("tiny")).layers[0].parameters()) * 2  # bf16 bytes
    plain, replicated, sharded = (simulate("tiny", 2, method, gamma, seq_len=64, rank=8, layout=layout)["Total"]
                                  for layout in ("plain", "replicate", "shard"))
    assert plain <= replicated <= plain + 2 * block + 16 * 2**10
    assert sharded < plain


@pytest.mark.distributed
@pytest.mark.parametrize("mode", list(MODES))
def test_a_checkpoint_of_two_ranks_exports_in_one_process(sharded, tmp_path, mode):
    """python -m training.export reads DCP shards whole: the export of the last checkpoint equals the run's
    own final export (HF), and a LoRA run's adapter equals its final PEFT folder."""
    from safetensors.torch import load_file
    from training.export import export_checkpoint
    run = sharded / mode / "owlore"
    _, exported = read_hf_dir(export_checkpoint(run / "step-000003", "hf", tmp_path / "hf"))
    _, final = read_hf_dir(run / "final-hf")
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    lora = sharded / mode / "lora"
    adapter = export_checkpoint(lora / "step-000003", "peft", tmp_path / "peft") / "adapter_model.safetensors"
    final = load_file(lora / "final-peft" / "adapter_model.safetensors")
    assert all(torch.equal(load_file(adapter)[k], final[k]) for k in final)
    from common.assets import asset_path
    from model import Transformer, get_config, save_model
    wider = get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256, dim=128, n_heads=4, n_kv_heads=4)
    save_model(Transformer(wider), tmp_path / "wider", format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    with pytest.raises(ValueError, match=r"shards: does not fit the base model .*tok_embeddings.weight is of shape"):
        export_checkpoint(run / "step-000003", "hf", tmp_path / "bad", model_source=str(tmp_path / "wider"))


@pytest.mark.distributed
def test_only_rank0_reads_the_weights_and_its_load_error_stops_every_rank(tiny_dir, data_file, tmp_path):
    """Rank 1 builds the model on the meta device and gets its part from rank 0; a checkpoint that rank 0
    cannot load (a NaN weight) is the same one-line error on both ranks, with no rank left waiting."""
    launch(tmp_path, [common(tiny_dir, data_file, tmp_path / "run", "--method", "owlore", "--fsdp",
                             "--max-steps", "1", "--save-format", "none")], "reads", tmp_path / "built")
    rank0, rank1 = (json.loads((tmp_path / f"built.{r}.json").read_text()) for r in (0, 1))
    assert rank0 == [sum(p.numel() for p in torch.load(tiny_dir / "consolidated.00.pth").values())] and rank1 == []
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    state = torch.load(bad / "consolidated.00.pth")
    state["layers.1.attention.wq.weight"][0, 0] = float("nan")
    torch.save(state, bad / "consolidated.00.pth")
    done = two_processes(ROOT / "train.py", *common(bad, data_file, tmp_path / "bad-run", "--fsdp"), timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("tensor layers.1.attention.wq.weight holds NaN or inf") == 2, done.stderr[-3000:]


@pytest.mark.distributed
def test_tied_embeddings_stay_one_parameter_sharded_and_replicated(data_file, tmp_path):
    """A tied model (SmolLM2's layout) built on the meta device on rank 1 and loaded from rank 0 trains as one
    process does: a tie lost on any rank would all-gather another root and stall or diverge."""
    from common.assets import asset_path
    from model import Transformer, get_config, save_model
    torch.manual_seed(0)
    tied = tmp_path / "tied"
    save_model(Transformer(get_config("tiny-tied", n_layers=4, vocab_size=32000, max_seq_len=256)), tied,
               format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    launch(tmp_path, [common(tied, data_file, tmp_path / mode, "--method", "full", *flags) for mode, flags in MODES.items()])
    train.main(common(tied, data_file, tmp_path / "single", "--method", "full"))
    _, one = read_hf_dir(tmp_path / "single" / "final-hf")
    for mode in MODES:
        assert losses(tmp_path / mode) == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
        _, two = read_hf_dir(tmp_path / mode / "final-hf")
        assert close(two, one)


@pytest.mark.distributed
def test_a_load_error_on_another_rank_only_stops_every_rank(tiny_dir, data_file, tmp_path):
    """Rank 1 cannot read its copy of the checkpoint's config (say, a node without the files); rank 0 must not
    go on to wait for it in a collective: both exit with one line each."""
    script = tmp_path / "rank1_cannot_read.py"
    script.write_text(f"""import os, sys
sys.path.insert(0, {str(ROOT)!r})
import model.load, train
from common import cli
if os.environ["RANK"] == "1":
    def missing(path, weights=True):
        raise FileNotFoundError(f"{{path}}/params.json: missing on this node")
    model.load.read_checkpoint = missing
cli.run(train.main)
""")
    done = two_processes(script, *common(tiny_dir, data_file, tmp_path / "run", "--fsdp"), timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("params.json: missing on this node") == 2, done.stderr[-3000:]
    assert "error: rank 1 stopped: FileNotFoundError:" in done.stderr
