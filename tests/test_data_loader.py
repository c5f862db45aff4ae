"""BatchLoader: seeded per-epoch order, exact resume, and data-parallel shards of the global batch."""
import io

import pytest
import torch

from data import BatchLoader, TokenizedDataset
from data.loader import epoch_order


def numbered_dataset(n: int, seq_len: int = 3) -> TokenizedDataset:
    """Row i holds the value i everywhere, so a batch's rows are readable from its first column."""
    rows = torch.arange(n).unsqueeze(1).expand(n, seq_len).contiguous()
    return TokenizedDataset(rows, rows + 1000)


def rows_of(batch) -> list[int]:
    input_ids, labels = batch
    assert torch.equal(labels, input_ids + 1000)
    return input_ids[:, 0].tolist()


def take(loader: BatchLoader, k: int) -> list[list[int]]:
    return [rows_of(loader.next_batch()) for _ in range(k)]


def test_epoch_order_depends_only_on_seed_and_epoch():
    ds = numbered_dataset(23)
    a, b = BatchLoader(ds, 4, seed=7), BatchLoader(ds, 4, seed=7)
    assert take(a, 17) == take(b, 17)
    fresh = BatchLoader(ds, 4, seed=7)
    epochs = [sum(take(fresh, 5), []) for _ in range(3)]  # 5 full batches per epoch, 3 rows left out
    for e, rows in enumerate(epochs):
        assert rows == epoch_order(23, 7, e)[:20].tolist()
        assert len(set(rows)) == 20
    assert epochs[0] != epochs[1] != epochs[2]
    assert take(BatchLoader(ds, 4, seed=8), 5) != take(BatchLoader(ds, 4, seed=7), 5)


def test_rolls_over_epochs_and_counts_position():
    loader = BatchLoader(numbered_dataset(10), 3, seed=0)
    assert loader.batches_per_epoch == 3
    take(loader, 3)
    assert (loader.epoch, loader.position) == (0, 3)
    take(loader, 1)
    assert (loader.epoch, loader.position) == (1, 1)


def test_keep_last_partial_batch():
    loader = BatchLoader(numbered_dataset(10), 4, seed=1, drop_last=False)
    sizes = [len(b) for b in take(loader, 3)]
    assert sizes == [4, 4, 2] and loader.batches_per_epoch == 3


@pytest.mark.parametrize("consumed", [0, 2, 5, 6, 11])  # start, mid-epoch, epoch boundary (5 per epoch), later
def test_resume_gives_exactly_the_same_next_batches(consumed):
    ds = numbered_dataset(21)
    straight = BatchLoader(ds, 4, seed=3)
    reference = take(straight, consumed + 9)
    first = BatchLoader(ds, 4, seed=3)
    take(first, consumed)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = BatchLoader(ds, 4, seed=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.epoch, resumed.position) == (first.epoch, first.position)
    assert take(resumed, 9) == reference[consumed:]


def test_rank_shards_make_up_the_single_process_global_batch():
    ds = numbered_dataset(50)
    single = BatchLoader(ds, 12, seed=5)
    ranks = [BatchLoader(ds, 4, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(10):  # 4 batches per epoch: crosses two epoch boundaries
        shards = [rows_of(r.next_batch()) for r in ranks]
        assert sum(shards, []) == rows_of(single.next_batch())
        assert all(len(s) == 4 for s in shards) and len(set(sum(shards, []))) == 12


def test_resume_under_another_world_size_with_the_same_global_batch():
    ds = numbered_dataset(40)
    single = BatchLoader(ds, 8, seed=2)
    take(single, 3)
    state = single.state_dict()
    expected = take(single, 4)
    ranks = [BatchLoader(ds, 4, seed=2, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    assert [sum((rows_of(r.next_batch()) for r in ranks), []) for _ in range(4)] == expected


def test_bad_arguments_and_mismatched_state():
    ds = numbered_dataset(10)
    with pytest.raises(ValueError, match="fewer than one global batch of 12"):
        BatchLoader(ds, 4, seed=0, world_size=3, rank=0)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        BatchLoader(ds, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="drop_last=False needs world_size 1"):
        BatchLoader(ds, 2, seed=0, drop_last=False, world_size=2)
    state = BatchLoader(ds, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="saved seed 0 != current 1"):
        BatchLoader(ds, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="saved num_rows 10 != current 12"):
        BatchLoader(numbered_dataset(12), 2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks \['position'\]"):
        BatchLoader(ds, 2, seed=0).load_state_dict({k: v for k, v in state.items() if k != "position"})
