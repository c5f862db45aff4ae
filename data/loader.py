"""Seeded, resumable, data-parallel batches over a :class:`TokenizedDataset`.

The order of epoch e is a permutation that depends only on (seed, e). A global batch is
``batch_size * world_size`` consecutive rows of that order; rank r takes rows
``[r * batch_size, (r + 1) * batch_size)`` of it, so the ranks together see exactly the batches one
process with the global batch size sees. ``state_dict`` holds (seed, epoch, position); loading it
continues with the same next batch, also under another world size with the same global batch.
"""
from __future__ import annotations

import numpy as np
import torch

from data.dataset import TokenizedDataset


def epoch_order(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The row order of one epoch: a permutation determined by (seed, epoch) alone."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(num_rows))


class BatchLoader:
    def __init__(
        self,
        dataset: TokenizedDataset,
        batch_size: int,
        seed: int,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not drop_last and world_size > 1:
            raise ValueError("drop_last=False needs world_size 1: a partial global batch cannot be split evenly")
        self.global_batch_size = batch_size * world_size
        if drop_last and len(dataset) < self.global_batch_size:
            raise ValueError(f"dataset has {len(dataset)} rows, fewer than one global batch of {self.global_batch_size}")
        self.dataset, self.batch_size, self.seed, self.drop_last = dataset, batch_size, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = epoch_order(len(dataset), seed, 0)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(len(self.dataset), self.global_batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(input_ids, labels)`` of the next global batch; rolls over into the next epoch."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = epoch_order(len(self.dataset), self.seed, self.epoch)
        start = self.position * self.global_batch_size + self.rank * self.batch_size
        rows = self._order[start : start + self.batch_size]
        self.position += 1
        return self.dataset[rows]

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "global_batch_size": self.global_batch_size,
            "num_rows": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise ValueError(f"data loader state lacks {sorted(missing)}")
        for key in ("seed", "global_batch_size", "num_rows"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(
                    f"cannot resume the data order: saved {key} {state[key]} != current {self.state_dict()[key]}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = epoch_order(len(self.dataset), self.seed, self.epoch)
