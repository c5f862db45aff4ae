"""OwLore on HF causal LMs inside transformers.Trainer (integrations/hf_trainer.py).

Ran against transformers 5.25.0, trl 1.16.0 (each assertion message names the versions in use).
"""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import train  # noqa: E402
from common.assets import asset_path  # noqa: E402
from integrations.hf_trainer import OwLoreCallback, outlier_ratios  # noqa: E402
from model import Transformer, get_config, load_model, save_model  # noqa: E402
from sampling import LayerSampler, block_alphas  # noqa: E402
from sampling import outlier_ratios as our_outlier_ratios  # noqa: E402
from sampling.blocks import block_linears, decoder_blocks  # noqa: E402

pytestmark = pytest.mark.interop
VERSIONS = f"transformers {transformers.__version__}, torch {torch.__version__}"
N_LAYERS = 4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random LLaMA written as an HF folder with a real tokenizer: transformers and train.py both load it."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-hf")
    config = get_config("tiny", n_layers=N_LAYERS, vocab_size=32000, max_seq_len=256)
    save_model(Transformer(config), out, format="hf", tokenizer=asset_path("mistral-v1-tokenizer"))
    return out


def hf_llama(hf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)


def hf_qwen2():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.Qwen2ForCausalLM(config).float()


def token_rows(vocab: int, n: int = 16, length: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(3, vocab, (n, length), generator=g)
    return [{"input_ids": r, "labels": r.clone()} for r in rows]


def training_args(out, **overrides):
    options = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                   lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no", report_to="none",
                   use_cpu=True, disable_tqdm=True, logging_strategy="no", seed=0)
    return transformers.TrainingArguments(**{**options, **overrides})


def fit(model, out, callback_options: dict, resume=None, **overrides) -> OwLoreCallback:
    args = training_args(out, **overrides)
    owlore = OwLoreCallback(model, **callback_options)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(model.config.vocab_size),
                                   callbacks=[owlore], optimizers=(owlore.create_optimizer(args), None))
    trainer.train(resume_from_checkpoint=resume)
    return owlore


def per_step(history: list[tuple[int, list[int]]], steps: int) -> list[list[int]]:
    draws = dict(history)
    active, out = None, []
    for step in range(steps):
        active = draws.get(step, active)
        out.append(active)
    return out


def test_outlier_ratios_and_alphas_of_the_hf_model_equal_ours(hf_dir):
    theirs = hf_llama(hf_dir)
    ours, _ = load_model(str(hf_dir))
    assert decoder_blocks(theirs) is theirs.model.layers
    assert len(block_linears(decoder_blocks(theirs)[0])) == 7
    batches = torch.randint(0, 32000, (4, 2, 32), generator=torch.Generator().manual_seed(2))
    hf_ratios, our_ratios = outlier_ratios(theirs, batches, M=3), our_outlier_ratios(ours, batches, M=3)
    pooled = sum(lin.weight.numel() for lin in block_linears(decoder_blocks(theirs)[0]).values())
    assert min(our_ratios) > 0, our_ratios
    for a, b in zip(hf_ratios, our_ratios):  # activations agree to float rounding: at most one score may flip
        assert abs(a - b) <= 100 / pooled + 1e-9, (hf_ratios, our_ratios, VERSIONS)
    torch.testing.assert_close(torch.tensor(block_alphas(theirs)[0]), torch.tensor(block_alphas(ours)[0]),
                               rtol=1e-4, atol=0, msg=VERSIONS)
    blockwise = outlier_ratios(theirs, batches, M=3, blockwise=True)
    assert max(abs(a - b) for a, b in zip(blockwise, hf_ratios)) <= 100 / pooled + 1e-9, VERSIONS


@pytest.mark.parametrize("make", ["llama", "qwen2"])
def test_trainer_changes_only_the_drawn_blocks_and_the_outer_parameters(hf_dir, tmp_path, make):
    model = hf_llama(hf_dir) if make == "llama" else hf_qwen2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    owlore = fit(model, tmp_path, dict(policy="uniform", gamma=1, period=2, seed=3, rank=4, update_proj_gap=2))
    draws = [blocks for _, blocks in owlore.history]
    assert [s for s, _ in owlore.history] == [0, 2, 4]
    # a block first drawn after the optimizer exists trains too (LMFlow #726 froze such blocks out of it)
    assert set(draws[1] + draws[2]) - set(draws[0]), draws
    ever = {i for d in draws for i in d}
    prefix = "model.layers."
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        block = int(name[len(prefix):].split(".")[0]) if name.startswith(prefix) else None
        assert changed == (block is None or block in ever), (name, draws, VERSIONS)
    state = owlore.optimizer.state
    stateful_blocks = {i for i, b in enumerate(decoder_blocks(model)) if any(p in state for p in b.parameters())}
    assert stateful_blocks == set(draws[-1]), (stateful_blocks, draws)  # the blocks that left were freed
    matrix = decoder_blocks(model)[draws[-1][0]].self_attn.q_proj.weight
    assert state[matrix]["exp_avg"].shape != matrix.shape  # GaLore: the moments live in the rank-4 subspace


def test_a_default_trainer_optimizer_is_refused(hf_dir, tmp_path):
    """LMFlow #726: Trainer's own optimizer holds only the parameters that require grad when it is made."""
    model = hf_qwen2()
    args = training_args(tmp_path, max_steps=1)
    owlore = OwLoreCallback(model, policy="uniform", gamma=1, period=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(256), callbacks=[owlore])
    with pytest.raises(ValueError, match=r"optimizers=\(callback.create_optimizer\(args\), None\)"):
        trainer.train()


def test_draws_equal_train_py_for_the_same_seed_and_policy(hf_dir, data_file, tmp_path):
    train.main(["--model", str(hf_dir), "--data", str(data_file), "--out", str(tmp_path / "run"), "--seq-len", "64",
                "--no-pack", "--batch-size", "4", "--save-format", "none", "--method", "owlore", "--sampling", "htsr",
                "--gamma", "2", "--period", "2", "--seed", "5", "--max-steps", "6", "--rank", "4",
                "--no-memory-report"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    theirs = [m["active_blocks"] for m in metrics if "active_blocks" in m]
    model = hf_llama(hf_dir)
    owlore = fit(model, tmp_path / "hf", dict(policy="htsr", gamma=2, period=2, seed=5, rank=4,
                                              alphas=block_alphas(model)[0]))
    assert per_step(owlore.history, 6) == theirs, VERSIONS
    expected = LayerSampler("htsr", 2, 2, 5, N_LAYERS, alphas=block_alphas(hf_llama(hf_dir))[0])
    assert [blocks for _, blocks in owlore.history] == [expected.active_layers(s) for s in (0, 2, 4)]


def test_resume_from_a_trainer_checkpoint_continues_the_same_draws(hf_dir, tmp_path):
    options = dict(policy="htsr_dynamic", gamma=1, period=2, seed=7, rank=4, update_proj_gap=2)
    whole = fit(hf_qwen2(), tmp_path / "whole", options)
    fit(hf_qwen2(), tmp_path / "cut", options, save_strategy="steps", save_steps=3, max_steps=3)
    resumed_model = hf_qwen2()
    resumed = fit(resumed_model, tmp_path / "cut", options, resume=str(tmp_path / "cut" / "checkpoint-3"))
    assert resumed.history[0][0] == 3  # mid-period: the checkpointed state of period 1, not a new observation
    assert per_step(resumed.history, 6)[3:] == per_step(whole.history, 6)[3:], VERSIONS
    assert resumed.sampler.state_dict() == whole.sampler.state_dict()  # counts and dynamic state carried over


def test_trl_sft_trainer_trains_the_drawn_blocks(hf_dir, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    model = hf_llama(hf_dir)
    before = [b.mlp.down_proj.weight.detach().clone() for b in decoder_blocks(model)]
    config = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                           report_to="none", use_cpu=True, max_length=32, packing=False, save_strategy="no",
                           logging_strategy="no", disable_tqdm=True, seed=0)
    owlore = OwLoreCallback(model, policy="uniform", gamma=1, period=2, seed=3, rank=4)
    data = datasets.Dataset.from_list([{"text": f"The number {i} comes after {i - 1}."} for i in range(16)])
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data,
                             processing_class=transformers.AutoTokenizer.from_pretrained(hf_dir),
                             callbacks=[owlore], optimizers=(owlore.create_optimizer(config), None))
    trainer.train()
    ever = {i for _, blocks in owlore.history for i in blocks}
    changed = {i for i, b in enumerate(decoder_blocks(model)) if not torch.equal(before[i], b.mlp.down_proj.weight)}
    assert [s for s, _ in owlore.history] == [0, 2] and changed == ever, (owlore.history, changed,
                                                                          f"trl {trl.__version__}, {VERSIONS}")


@pytest.mark.parametrize("family", ["Mistral", "Gemma", "Phi3", "Qwen2"])
def test_blocks_and_outlier_ratios_of_other_hf_decoders(family):
    config = getattr(transformers, f"{family}Config")(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, head_dim=16, pad_token_id=0)
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).float()
    assert decoder_blocks(model) is model.model.layers, VERSIONS
    batches = torch.randint(0, 256, (2, 2, 16), generator=torch.Generator().manual_seed(2))
    ratios = outlier_ratios(model, batches, M=3, progress=False)
    blockwise = outlier_ratios(model, batches, M=3, blockwise=True, progress=False)  # one block at a time agrees
    pooled = sum(lin.weight.numel() for lin in block_linears(model.model.layers[0]).values())
    assert len(ratios) == 3 and min(ratios) > 0, (ratios, VERSIONS)
    assert max(abs(a - b) for a, b in zip(ratios, blockwise)) <= 100 / pooled + 1e-9, (ratios, blockwise, VERSIONS)
    assert len(block_alphas(model)[0]) == 3
