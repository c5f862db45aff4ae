"""This project's model as an lm-evaluation-harness model, `owlore`: the whole lm-eval task catalogue on it.

    python -m integrations.lm_eval_model run --model owlore --model_args pretrained=RUN/final-hf \\
        --tasks arc_easy,hellaswag --batch_size 16          # lm-eval's own CLI, with `owlore` registered

    import integrations.lm_eval_model, lm_eval              # importing registers the model
    lm_eval.simple_evaluate(model="owlore", model_args="pretrained=smollm2-135m", tasks=["arc_easy"])

`pretrained` is anything `model.load_model` reads (a named config, a Meta/HF folder, a .gguf file); other
model_args: device, dtype (fp32/bf16/fp16 or float32/bfloat16/float16), batch_size (an int; "auto" means
16), max_length, tokenizer, ckpt_dir, add_bos. Scoring is eval/loglikelihood.py's (`python -m eval`'s),
generation model/generate.py's; chat templates (--apply_chat_template) are not supported.
"""
from __future__ import annotations

import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from model import load_model
from model.cli import DTYPES
from model.generate import generate
from eval.loglikelihood import encode_pair, loglikelihoods

DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "auto": "fp32"}
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p"}
DEFAULT_BATCH = 16


@register_model("owlore")
class OwLoreLM(LM):
    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "fp32", batch_size: int | str = 1,
                 max_length: int | None = None, tokenizer: str | None = None, ckpt_dir: str | None = None,
                 add_bos: bool = False, max_gen_toks: int = 256, seed: int = 1234, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"owlore model_args: unknown {', '.join(sorted(unknown))}")
        dtype = DTYPE_ALIASES.get(str(dtype), str(dtype))
        if dtype not in DTYPES:
            raise ValueError(f"owlore model_args: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # as lm-eval's HF model (its CLI says cuda:0)
        self._device = torch.device(device)
        self.model, self.tokenizer = load_model(str(pretrained), device=self._device, dtype=DTYPES[dtype],
                                                ckpt_dir=ckpt_dir, tokenizer=tokenizer)
        if self.tokenizer is None:
            raise ValueError(f"{pretrained}: the checkpoint has no tokenizer; lm-eval needs one (tokenizer=PATH)")
        self.model.eval()
        self.batch_size = DEFAULT_BATCH if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length or self.model.config.max_seq_len)
        self.add_bos, self.max_gen_toks = bool(add_bos), int(max_gen_toks)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on: BOS, or EOS without one (as lm-eval's HF model)."""
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation, self.add_bos)
                 for context, continuation in (r.args for r in requests)]
        results = loglikelihoods(self.model, pairs, self.batch_size, self.max_length, progress=True)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Each text's full log-likelihood, predicted in windows of max_length tokens (lm-eval's windows)."""
        out = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=len(requests) < 2):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tokenizer.encode(text), self.prefix_token_id, self.max_length, context_len=1)]
            total = sum(lp for lp, _ in loglikelihoods(self.model, windows, self.batch_size, self.max_length))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in tqdm(requests, desc="generate_until", disable=len(requests) < 2):
            context, options = request.args
            unknown = sorted(set(options) - GENERATION_KEYS)
            if unknown:
                raise ValueError(f"owlore: generation options {', '.join(unknown)} are not supported "
                                 f"(supported: {', '.join(sorted(GENERATION_KEYS))})")
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.get("max_gen_toks", self.max_gen_toks))
            if not 0 < max_new < self.max_length:
                raise ValueError(f"owlore: max_gen_toks {max_new} must be in [1, max_length {self.max_length})")
            temperature = float(options.get("temperature", 1.0)) if options.get("do_sample") else 0.0
            prompt = self.tokenizer.encode(context, bos=self.add_bos)[-(self.max_length - max_new):]
            tokens = generate(self.model, prompt, max_new, temperature, float(options.get("top_p", 1.0)),
                              stop_ids=[self.tokenizer.eos_id], generator=self.generator)
            text = self.tokenizer.decode(tokens)
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out


def main() -> None:
    """lm-eval's command line with `owlore` registered (the `lm_eval` command has no model plug-ins)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
