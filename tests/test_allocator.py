"""The caching allocator model (autotune.memory.allocator) on sequences computed by hand, and the
replay of a worker's dynamic cache (autotune.memory.replay) built on it."""

from __future__ import annotations

import time

import pytest

from autotune.memory.allocator import CachingAllocator, round_size, segment_size
from autotune.memory.replay import replay_kept, replay_ladder
from autotune.memory.shape import model_shape

MIB = 2**20


def test_sizes_are_rounded_and_segments_sized_as_pytorch_does() -> None:
    assert round_size(1) == 512
    assert round_size(513) == 1024
    assert segment_size(MIB) == 2 * MIB  # the small pool's 2 MiB segments, up to 1 MiB
    assert segment_size(MIB + 512) == 20 * MIB  # 1-10 MiB: shared 20 MiB segments
    assert segment_size(10 * MIB - 512) == 20 * MIB
    assert segment_size(10 * MIB) == 10 * MIB  # from 10 MiB: its own, rounded up to 2 MiB
    assert segment_size(11 * MIB) == 12 * MIB


def test_small_pool_splits_down_to_512_bytes() -> None:
    a = CachingAllocator()
    first = a.malloc(1000)
    second = a.malloc(1000)
    assert a.stats.reserved == 2 * MIB and a.stats.segments == 1
    assert a.stats.allocated == 2048
    a.free(first)
    a.free(second)
    assert a.stats.allocated == 0 and a.stats.reserved == 2 * MIB  # cached, not returned


def test_large_pool_splits_only_when_more_than_1_mib_remains() -> None:
    a = CachingAllocator()
    a.malloc(19 * MIB + MIB // 2)  # 0.5 MiB would remain of the 20 MiB segment: not split
    assert a.stats.allocated == 20 * MIB
    b = CachingAllocator()
    b.malloc(5 * MIB)  # 15 MiB remain: split
    assert b.stats.allocated == 5 * MIB
    b.malloc(15 * MIB)  # the tail fits it exactly: no new segment
    assert b.stats.reserved == 20 * MIB and b.stats.segments == 1


def test_best_fit_takes_the_smallest_free_block_that_fits() -> None:
    a = CachingAllocator()
    big, small = a.malloc(30 * MIB), a.malloc(12 * MIB)
    a.free(big)
    a.free(small)
    a.malloc(11 * MIB)  # the 12 MiB block: 1 MiB would remain, not more: handed out whole
    assert a.stats.allocated == 12 * MIB
    a.malloc(29 * MIB)  # the 30 MiB one is still free
    assert a.stats.reserved == 42 * MIB


def test_freed_neighbours_merge_within_a_segment() -> None:
    a = CachingAllocator()
    x, y = a.malloc(5 * MIB), a.malloc(5 * MIB)
    a.malloc(5 * MIB)
    assert a.stats.reserved == 20 * MIB
    a.free(x)
    a.free(y)
    a.malloc(9 * MIB)  # only the merged 10 MiB of x and y fits it
    assert a.stats.reserved == 20 * MIB and a.stats.segments == 1


def test_a_growing_tensor_leaves_the_segments_it_outgrew() -> None:
    """torch.cat by 512 KiB a step from 10 to 14 MiB, worked by hand: segments of 10, 12, 12, 14
    and 14 MiB stay reserved (62 MiB) for the 14 MiB that are live; at most two copies are live
    at once, the most 14 + 14 MiB at the end."""
    a = CachingAllocator()
    live = a.malloc(10 * MIB)
    for half_mib in range(21, 29):
        grown = a.malloc(half_mib * MIB // 2)
        a.free(live)
        live = grown
    assert a.segment_sizes() == {10 * MIB: 1, 12 * MIB: 2, 14 * MIB: 2}
    assert a.stats.reserved == 62 * MIB and a.stats.peak_reserved == 62 * MIB
    assert a.stats.allocated == 14 * MIB
    assert a.stats.peak_allocated == 28 * MIB


def test_empty_cache_returns_only_wholly_free_segments() -> None:
    a = CachingAllocator()
    x = a.malloc(5 * MIB)
    a.malloc(5 * MIB)  # shares x's segment
    z = a.malloc(30 * MIB)
    a.free(x)
    a.free(z)
    assert a.inactive_split_bytes() == 15 * MIB  # x's 5 MiB and the 10 MiB tail, beside a live block
    a.empty_cache()
    assert a.stats.reserved == 20 * MIB and a.segment_sizes() == {20 * MIB: 1}


TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 4096,
    "max_position_embeddings": 512,
}


def test_replay_peaks_hold_the_cache_and_the_ladder_is_emptied_between_sizes() -> None:
    shape = model_shape(TINY, "text-generation")
    alone = replay_ladder(shape, [32], 128, 32)[0]
    after = replay_ladder(shape, [1, 8, 32], 128, 32)[-1]
    cache = 4 * 2 * 32 * (128 + 31) * 256 * 2  # K and V of 4 layers, 159 tokens, bf16
    assert alone.peak_allocated >= cache
    assert alone.peak_reserved >= alone.peak_allocated
    # the worker empties the cache between sizes and every earlier tensor is freed: nothing stays
    assert (after.peak_allocated, after.peak_reserved) == (alone.peak_allocated, alone.peak_reserved)
    assert replay_kept(shape, 32, 128, 32, 2, before=(1, 8)) == alone.kept


def test_leaving_out_the_small_pool_after_the_first_step_changes_no_peak() -> None:
    shape = model_shape(TINY, "text-generation")
    for batch in (1, 16, 64):
        coarse = replay_ladder(shape, [batch], 64, 24)[0]
        full = replay_ladder(shape, [batch], 64, 24, every_step=True)[0]
        assert (coarse.peak_allocated, coarse.peak_reserved) == (full.peak_allocated, full.peak_reserved)


@pytest.mark.parametrize("batch", [8, 32])
def test_replay_is_cheap_enough_for_plan_time(batch: int) -> None:
    """A 24-layer shape with 32 K/V heads over 512 + 128 tokens: the issue's point, in well under a second."""
    shape = model_shape(
        {
            **TINY,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 49152,
        },
        "text-generation",
    )
    start = time.perf_counter()
    replay_ladder(shape, [batch], 512, 128)
    assert time.perf_counter() - start < 0.5


def test_the_forecast_can_take_the_dynamic_caches_share_from_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """CACHE_MODEL = "replay": the running part's allocator share is what the replay keeps, in place
    of the ordinary slack and the outgrown-classes rule; "classes" (the default) leaves it as it was."""
    from autotune.candidate import Candidate
    from autotune.memory import forecast as fc
    from autotune.memory.shape import DTYPE_BYTES
    from autotune.workload import Workload

    config = {**TINY, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_key_value_heads": 16}
    candidate = Candidate(dtype="bfloat16", attn="sdpa")
    workload = Workload(prompt_tokens=256, new_tokens=64)
    assert fc.CACHE_MODEL == "classes"
    ruled = fc.forecast_parts(config, candidate, workload, 32, before=(1, 8))
    monkeypatch.setattr(fc, "CACHE_MODEL", "replay")
    replayed = fc.forecast_parts(config, candidate, workload, 32, before=(1, 8))
    kept = replay_kept(model_shape(config, "text-generation"), 32, 256, 64, DTYPE_BYTES["bfloat16"], (1, 8))
    slack_weights = int(fc.SLACK_WEIGHTS * replayed.parts["weights"])
    assert abs(replayed.parts["allocator_slack"] - (kept + slack_weights)) <= 1
    assert {k: v for k, v in replayed.parts.items() if k != "allocator_slack"} == {
        k: v for k, v in ruled.parts.items() if k != "allocator_slack"
    }
    # eager attention materialises scores: the replay is not used there
    eager = Candidate(dtype="bfloat16", attn="eager")
    eager_parts = fc.forecast_parts(config, eager, workload, 32).parts
    monkeypatch.setattr(fc, "CACHE_MODEL", "classes")
    assert fc.forecast_parts(config, eager, workload, 32).parts == eager_parts


def test_the_recorded_allocation_order_runs_through_the_allocator() -> None:
    """benchmarks/allocation_order.py on a tiny Llama on the meta device: every storage created is
    freed by the end, and the allocated peak holds at least the whole cache."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "allocation_order.py"
    spec = importlib.util.spec_from_file_location("allocation_order", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    events = module.record(TINY, 4, 32, 6)
    created = sum(1 for e in events if e[0] == "a")
    assert created > 50 and created == sum(1 for e in events if e[0] == "f")
    alloc = module.through_allocator(events)
    assert alloc.stats.allocated == 0
    assert alloc.stats.peak_allocated >= 4 * 2 * 4 * (32 + 5) * 256 * 2  # K and V of 4 layers, 37 tokens, bf16
