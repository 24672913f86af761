"""Paged KV blocks: allocation, sharing by reference count, freeing, leak check."""
import pytest
import torch

from engine.block_manager import BlockManager
from engine.sampling import SamplingParams
from engine.sequence import Sequence


def seq(i: int, n: int) -> Sequence:
    return Sequence(i, list(range(n)), n, SamplingParams(), torch.Generator())


def test_allocate_grows_by_whole_blocks_and_free_returns_them():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(0, 5)
    bm.allocate(a, 5)
    assert len(a.block_table) == 2 and bm.num_free_blocks == 6
    bm.allocate(a, 8)
    assert len(a.block_table) == 2
    bm.allocate(a, 9)
    assert len(a.block_table) == 3
    assert not bm.can_allocate(seq(1, 0), 21) and bm.can_allocate(seq(1, 0), 20)
    bm.free(a)
    assert a.block_table == [] and bm.num_free_blocks == 8
    bm.check_all_free()


def test_shared_blocks_stay_until_the_last_reference_goes():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = seq(0, 10), seq(1, 10)
    bm.allocate(a, 10)
    bm.share(a, b, 10)  # two full blocks shared, the partial third is not
    assert b.block_table == a.block_table[:2]
    bm.allocate(b, 10)
    assert b.block_table[2] != a.block_table[2] and bm.num_free_blocks == 4
    bm.free(a)
    assert bm.num_free_blocks == 5
    with pytest.raises(RuntimeError, match="KV block leak"):
        bm.check_all_free()
    bm.free(b)
    bm.check_all_free()


def test_out_of_blocks_is_an_error_not_a_corruption():
    bm = BlockManager(num_blocks=2, block_size=4)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(seq(0, 9), 9)
    bm.check_all_free()
