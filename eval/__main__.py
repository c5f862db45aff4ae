"""Command line: harness-style scoring (default), LLM-Adapters generation, MT-Bench.

  python -m eval --model smollm2-135m --tasks commonsense,mmlu --num-fewshot 5 --limit 200 --output results.json
  python -m eval generate --model SRC --dataset boolq --data dataset/boolq/test.json --num-beams 4
  python -m eval mtbench --model SRC --questions question.jsonl --answers answers.jsonl \\
      [--judge-url http://host:8000/v1 --judge-model gpt-4 --judgments judgments.jsonl \\
       --judge-prompts judge_prompts.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from common import cli
from common.errors import UserError
from common.io import write_json, write_jsonl
from common.outputs import check_output_file
from common.plugins import add_plugin_flag, import_plugins, preparse
from eval.report import results_table

from model.cli import DTYPES, add_model_flags, check_model_source, device_name


def _load(args):
    from model import load_model
    from model.load import check_tokenizer_fits

    check_model_source(args.model)  # (after the other flags and files: the last check before the loading)
    model, tokenizer = load_model(args.model, device=args.device, dtype=DTYPES[args.dtype], ckpt_dir=args.ckpt_dir,
                                  tokenizer=args.tokenizer)  # fmt: skip
    if tokenizer is None:
        raise UserError(f"--model {args.model}: the checkpoint has no tokenizer; evaluation needs one")
    check_tokenizer_fits(tokenizer, model.config, args.model)
    return model, tokenizer


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Meta/Mistral/HF dir, .gguf file or config name")
    p.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu", help="torch device to evaluate on")
    add_model_flags(p)
    add_plugin_flag(p)


def harness_main(argv: list[str]) -> None:
    p = cli.ArgumentParser(prog="python -m eval", description="lm-evaluation-harness-style multiple choice")
    _common(p)
    p.add_argument("--tasks", default="commonsense", help="comma-separated tasks/groups: commonsense, mmlu, arc_easy, ...")
    p.add_argument("--num-fewshot", type=cli.number(int, at_least=0), default=0, help="solved examples before each question")
    p.add_argument("--limit", type=cli.number(int, at_least=1), default=None, help="first N rows of each task (each MMLU subject)")
    p.add_argument("--batch-size", type=cli.number(int, at_least=1), default=16, help="requests scored per forward pass")
    p.add_argument("--seed", type=cli.number(int), default=1234, help="seed of the few-shot example draw")
    p.add_argument("--add-bos", action="store_true", help="prepend BOS to contexts (harness HF default: no)")
    p.add_argument("--share-context", choices=["auto", "yes", "no"], default="auto",
                   help="run a doc's context once for all choices (auto: only with few-shot prompts)")
    p.add_argument("--output", default=None, help="JSON file for metrics and per-example records")
    args = p.parse_args(argv)
    from eval.harness import evaluate
    from eval.tasks import resolve_tasks

    try:
        resolve_tasks(args.tasks)  # a misspelt task fails before the model loads
    except KeyError as err:
        raise UserError(f"--tasks: {err.args[0]}") from None
    if args.output:
        check_output_file(args.output, "--output")
    model, tokenizer = _load(args)
    out = evaluate(model, tokenizer, args.tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                   batch_size=args.batch_size, seed=args.seed, add_bos=args.add_bos,
                   share_context={"auto": None, "yes": True, "no": False}[args.share_context])
    out["config"]["model"] = str(args.model)
    if args.output:
        write_json(args.output, out)
    print(results_table(out))
    c = out["config"]
    print(f"{c['n_examples']} examples, {c['n_requests']} requests in {c['seconds']:.1f} s "
          f"({c['examples_per_second']:.2f} examples/s)")


def generate_main(argv: list[str]) -> None:
    p = cli.ArgumentParser(prog="python -m eval generate", description="LLM-Adapters generative protocol")
    _common(p)
    p.add_argument("--dataset", required=True, help="boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ...")
    p.add_argument("--data", required=True, help="LLM-Adapters test.json")
    p.add_argument("--num-beams", type=cli.number(int, at_least=1), default=4, help="beam-search width of the generation")
    p.add_argument("--max-new-tokens", type=cli.number(int, at_least=1), default=32, help="tokens generated per answer at most")
    p.add_argument("--limit", type=cli.number(int, at_least=1), default=None, help="first N rows of the data only")
    p.add_argument("--output", default=None, help="JSON file for the accuracy and the generations")
    args = p.parse_args(argv)
    from eval.generative import ANSWER_PATTERNS, read_llm_adapters, run_generative

    if args.dataset not in ANSWER_PATTERNS:  # (scored after the generation: checked before it)
        raise UserError(f"--dataset {args.dataset}: no answer pattern for it; known: {', '.join(ANSWER_PATTERNS)}")
    rows = read_llm_adapters(args.data)[: args.limit]
    if args.output:
        check_output_file(args.output, "--output")
    model, tokenizer = _load(args)
    out = run_generative(model, tokenizer, args.dataset, rows, args.num_beams, args.max_new_tokens)
    if args.output:
        write_json(args.output, out)
    print(f"{args.dataset}: n={out['n']} acc={out['acc']:.4f}")


def mtbench_main(argv: list[str]) -> None:
    p = cli.ArgumentParser(prog="python -m eval mtbench", description="MT-Bench answers and single-answer judging")
    _common(p)
    p.add_argument("--questions", required=True, help="FastChat question.jsonl")
    p.add_argument("--answers", required=True, help="answer JSONL (written, or read with --judge-only)")
    p.add_argument("--model-id", default=None, help="name of the model in the answer file (default: --model)")
    p.add_argument("--max-new-tokens", type=cli.number(int, at_least=1), default=1024, help="tokens generated per answer at most")
    p.add_argument("--judge-only", action="store_true", help="judge existing --answers without loading a model")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="gpt-4", help="model name the judge API serves")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--references", default=None, help="reference answers (FastChat answer format)")
    p.add_argument("--judgments", default=None, help="JSONL of judgments to write")
    p.add_argument("--judge-prompts", default=None,
                   help="FastChat judge_prompts.jsonl (needed for scores comparable with published MT-Bench)")
    args = p.parse_args(argv)
    from eval import mtbench

    questions = mtbench.read_questions(args.questions)
    prompts = mtbench.read_judge_prompts(args.judge_prompts) if args.judge_prompts else None
    for flag, path in (("--answers", None if args.judge_only else args.answers), ("--judgments", args.judgments)):
        if path:
            check_output_file(path, flag)
    if args.judge_only:
        from common.io import read_objects

        answers = read_objects(args.answers)
    else:
        model, tokenizer = _load(args)
        answers = mtbench.generate_answers(model, tokenizer, questions, args.model_id or str(args.model), args.max_new_tokens)
        write_jsonl(args.answers, answers)
    if args.judge_url:
        client = mtbench.JudgeClient(args.judge_url, args.judge_model, os.environ.get(args.judge_api_key_env))
        refs = mtbench.read_references(args.references) if args.references else None
        judgments = mtbench.judge_answers(questions, answers, client, refs, prompts)
        if args.judgments:
            write_jsonl(args.judgments, judgments)
        print(json.dumps(mtbench.summarize_scores(judgments), indent=1))


def main(argv: list[str] | None = None) -> None:
    """Run a command; a bad input (file, row, name) is one line `error: <file or name>: <cause>` (--debug: traceback)."""
    cli.run(_dispatch, argv)


def _dispatch(argv: list[str]) -> None:
    import_plugins(preparse(argv).plugin)  # a plugin's model family, before the model loads
    commands = {"generate": generate_main, "mtbench": mtbench_main}
    if argv and argv[0] in commands:
        commands[argv[0]](argv[1:])
    else:
        harness_main(argv)


if __name__ == "__main__":
    main()
