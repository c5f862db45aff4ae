"""recipes/: the paper's arms as files; the defaults are the official OwLore run."""
import pytest
import yaml

from training.args import RECIPES, parse_args, recipe_names

MODEL = ["--model", "smollm2-135m"]


def test_the_defaults_are_the_official_owlore_recipe():
    defaults, recipe = vars(parse_args(MODEL)), vars(parse_args([*MODEL, "--config", "owlore"]))
    assert {k: v for k, v in recipe.items() if k != "config"} == {k: v for k, v in defaults.items() if k != "config"}
    # the values issue 18 names, read back through the parser
    assert (recipe["rank"], recipe["update_proj_gap"], recipe["galore_scale"]) == (256, 100, 1.0)
    assert recipe["max_grad_norm"] == 1.0 and recipe["keep_inactive_state"] and recipe["train_on_prompt"]
    assert recipe["svd"] == "exact" and not recipe["no_pack"]


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_parses_and_every_value_says_where_it_comes_from(name):
    text = (RECIPES / f"{name}.yaml").read_text()
    assert text.startswith("#"), f"{name}: the file opens with what the recipe is and where it comes from"
    values = yaml.safe_load(text)
    args = vars(parse_args([*MODEL, "--config", name]))
    for key, value in values.items():
        assert args[key] == value, (name, key)


def test_lisa_is_the_official_baseline_and_lisa_equal_the_ablation():
    lisa, equal = parse_args([*MODEL, "--config", "lisa"]), parse_args([*MODEL, "--config", "lisa-equal"])
    assert (lisa.gamma, lisa.period, lisa.sampling, lisa.eps) == (2, 3, "uniform", 1e-8)
    assert vars(parse_args([*MODEL, "--method", "lisa"]))["gamma"] == 2  # the method alone: the same baseline
    fullrank = vars(parse_args([*MODEL, "--config", "owlore-fullrank"]))
    differ = {k for k, v in vars(equal).items() if fullrank[k] != v} - {"config"}
    assert differ == {"method", "sampling"}  # the sampling claim's contrast changes nothing else


def test_flags_win_over_a_recipe_and_switches_turn_off():
    args = parse_args([*MODEL, "--config", "owlore", "--rank", "64", "--no-keep-inactive-state",
                       "--no-train-on-prompt", "--max-grad-norm", "0"])
    assert (args.rank, args.keep_inactive_state, args.train_on_prompt, args.max_grad_norm) == (64, False, False, 0.0)


def test_the_lean_recipe_turns_every_difference_on():
    args = parse_args([*MODEL, "--config", "owlore-lean"])
    assert not args.keep_inactive_state and not args.train_on_prompt and args.svd == "randomized"
    assert (args.rank, args.update_proj_gap, args.galore_scale) == (128, 200, 0.25)
    assert args.fused and args.max_grad_norm == 0.0  # fused steps cannot clip: off, not an error


def test_an_unknown_recipe_is_one_line(capsys):
    from common.errors import UserError
    with pytest.raises(UserError, match="--config: nope: neither a file nor a recipe"):
        parse_args([*MODEL, "--config", "nope"])
