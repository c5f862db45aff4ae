"""The real embedded model: SmolLM2-135M-Instruct (Q4_1 GGUF)."""
import math

import pytest
import torch

from model import load_model, save_model
from model.generate import generate

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower. It was constructed from 1887 to "
    "1889 as the centerpiece of the 1889 World's Fair, and it has become a global cultural icon of France."
)


GGUF_OPENS: list[str] = []


@pytest.fixture(scope="module")
def smollm():
    """The loaded model; every GGUF file opened while loading it is recorded in GGUF_OPENS."""
    import sys

    from model.gguf_reader import read_gguf_file

    def counting_read(path):
        GGUF_OPENS.append(str(path))
        return read_gguf_file(path)

    with pytest.MonkeyPatch.context() as patch:
        callers = [m for m in list(sys.modules.values()) if getattr(m, "read_gguf_file", None) is read_gguf_file]
        assert len(callers) >= 3  # the reader and the modules that imported it (gguf_format, tokenizer_gguf)
        for module in callers:  # each caller's own name for the reader
            patch.setattr(module, "read_gguf_file", counting_read)
        return load_model("smollm2-135m")


def test_gguf_is_read_once(smollm):
    # Weights and tokenizer come from one read of the file (a second read cost ~5 s on a 2-core CPU).
    assert len(GGUF_OPENS) == 1 and GGUF_OPENS[0].endswith(".gguf")


def test_loads_with_the_right_shape(smollm):
    model, tokenizer = smollm
    c = model.config
    assert (c.name, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size) == ("smollm2-135m", 576, 30, 9, 3, 49152)
    assert c.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    assert tokenizer.vocab_size == 49152


def test_capital_of_france_is_paris(smollm):
    model, tokenizer = smollm
    ids = tokenizer.encode("The capital of France is")
    with torch.no_grad():
        next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
    assert tokenizer.decode([next_id]) == " Paris"
    assert tokenizer.decode(generate(model, ids, 1)) == " Paris"


def test_perplexity_of_english_paragraph(smollm):
    model, tokenizer = smollm
    ids = torch.tensor([tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    ppl = math.exp(nll.item())
    # Value recorded in BENCHMARKS.md (issue 2 section); a broken model gives hundreds to tens of thousands.
    assert 3.0 < ppl < 30.0, ppl


def test_vocab_saved_next_to_weights(smollm, tmp_path):
    _, tokenizer = smollm
    torch.manual_seed(0)
    from model import Transformer, get_config

    tiny = Transformer(get_config("tiny"))
    save_model(tiny, tmp_path, format="meta", tokenizer=tokenizer)  # HF folders get tokenizer.json instead
    assert (tmp_path / "tokenizer.gguf").stat().st_size < 5_000_000  # the vocabulary only, no weights
    _, reloaded = load_model(tmp_path)
    text = "Hello, world! 123 naïve café\n\tTabs"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == text
