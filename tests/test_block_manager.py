"""Paged KV blocks: allocation, sharing by reference count, freeing, leak check."""
import pytest

from engine.block_manager import BlockManager
from engine.sampling import SamplingParams
from engine.sequence import Sequence


def seq(i: int, n: int) -> Sequence:
    return Sequence(i, list(range(n)), n, SamplingParams(), 0)


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


def test_a_write_into_a_shared_block_counts_its_copy_among_the_blocks_needed():
    bm = BlockManager(num_blocks=3, block_size=4)
    a, b, c = seq(0, 6), seq(1, 6), seq(2, 4)
    bm.allocate(a, 6)
    a.num_cached_tokens = 6
    bm.fork(a, b)
    b.num_cached_tokens = 6
    bm.allocate(c, 4)  # the last free block
    assert bm.blocks_needed(a, 7) == 1 and not bm.can_allocate(a, 7)  # the shared partial block needs a copy
    with pytest.raises(RuntimeError, match="out of KV blocks: need 1, 0 free"):
        bm.allocate(a, 7)
    bm.free(c)
    assert bm.can_allocate(a, 7)
    bm.allocate(a, 7)
    assert len(bm.prepare_write(a, 6, 7)) == 1 and bm.num_free_blocks == 0
    assert bm.blocks_needed(b, 7) == 0  # a took its copy: b now writes its block alone
    bm.free(a)
    bm.free(b)
    bm.check_all_free()


def test_forked_blocks_stay_until_the_last_reference_goes_and_are_copied_before_a_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = seq(0, 10), seq(1, 10)
    bm.allocate(a, 10)
    a.num_cached_tokens = 10
    bm.commit(a)  # two full blocks keyed, the partial third is not
    bm.fork(a, b)
    assert b.block_table == a.block_table and bm.num_free_blocks == 5
    copies = bm.prepare_write(b, 10, 11)  # b writes into the shared partial block: it gets a copy
    assert copies == [(a.block_table[2], b.block_table[2])] and b.block_table[:2] == a.block_table[:2]
    bm.free(a)
    assert bm.num_used_blocks == 3
    with pytest.raises(RuntimeError, match="KV block leak"):
        bm.check_all_free()
    bm.free(b)
    bm.check_all_free()
    assert bm.num_cached_blocks == 2  # unheld, still reusable by key


def test_cached_blocks_are_reused_by_key_and_evicted_oldest_first():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(0, 9)
    bm.allocate(a, 9)
    a.num_cached_tokens = 9
    bm.commit(a)
    prefix = a.block_table[:2]
    bm.free(a)  # freed from the tail: the prefix's second block becomes the oldest unheld one
    again = seq(1, 9)
    bm.match_prefix(again)
    assert again.num_cached_tokens == 8 and again.block_table == prefix
    assert bm.num_cached_prompt_tokens == 8
    bm.free(again)
    other = Sequence(2, list(range(100, 112)), 12, SamplingParams(), 0)
    bm.allocate(other, 12)  # 2 free blocks, then 1 evicted: the prefix's tail, its head stays
    assert bm.num_cached_blocks == 1 and prefix[1] in other.block_table and prefix[0] not in other.block_table
    third = seq(3, 9)
    bm.match_prefix(third)
    assert third.block_table == prefix[:1] and third.num_cached_tokens == 4
    bm.free(other)
    bm.free(third)
    bm.check_all_free()


def test_a_rewritten_block_loses_its_key():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(0, 9)
    bm.allocate(a, 9)
    a.num_cached_tokens = 9
    bm.commit(a)
    assert bm.num_cached_blocks == 2
    a.num_cached_tokens = 6  # the budget dropped tokens 6.. (a spelled end of thinking)
    assert bm.prepare_write(a, 6, 8) == [] and bm.num_cached_blocks == 1 and a.block_keys == [a.block_keys[0]]
    bm.free(a)


def test_out_of_blocks_is_an_error_not_a_corruption():
    bm = BlockManager(num_blocks=2, block_size=4)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(seq(0, 9), 9)
    bm.check_all_free()
