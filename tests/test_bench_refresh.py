"""bench.refresh: the shapes it refreshes are the model's block matrices; timings are reported, not asserted."""
import torch

from bench.refresh import block_shapes, refresh_seconds
from model import Transformer, get_config


def test_block_shapes_are_one_blocks_seven_matrices():
    config = get_config("tiny")
    block = Transformer(config).layers[0]
    assert block_shapes(config) == [tuple(p.shape) for p in block.parameters() if p.ndim == 2]
    assert len(block_shapes(get_config("llama2-7b"))) == 7 and (11008, 4096) in block_shapes(get_config("llama2-7b"))


def test_refresh_computes_every_projector():
    assert refresh_seconds([(32, 16), (16, 48)], 4, "randomized") > 0
    assert refresh_seconds([(32, 16)], 4, "exact") > 0
