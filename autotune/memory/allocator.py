"""A model of PyTorch's CUDA caching allocator, to replay a sequence of allocations and frees.

What the GPU's process holds is not what its tensors hold: the caching allocator
(``c10/cuda/CUDACachingAllocator.cpp``) keeps every block it freed in a pool and asks the driver
for a new segment only when no free block fits. Which blocks it keeps, and so the reserved peak a
worker reaches, follows from a handful of documented rules, which this module reproduces (the
constants are PyTorch's own, ``kMinBlockSize`` ... ``kRoundLarge``, unchanged from 1.x to 2.11):

- every request is rounded up to a multiple of 512 bytes (``kMinBlockSize``);
- requests up to 1 MiB (``kSmallSize``) come from the *small* pool, whose segments are 2 MiB
  (``kSmallBuffer``); larger ones from the *large* pool, whose new segment is 20 MiB
  (``kLargeBuffer``) for a request under 10 MiB (``kMinLargeAlloc``), else the request rounded up
  to 2 MiB (``kRoundLarge``);
- a request takes the smallest free block of its pool that fits it (ties: the lowest address);
- a block larger than the request is split when what remains is at least 512 bytes (small pool)
  or more than 1 MiB (large pool); otherwise the whole block is handed out (and counted as
  allocated, as ``memory_allocated`` counts it);
- a freed block merges with the free blocks next to it in its segment; segments are never merged
  with each other, and are returned to the driver only by ``empty_cache`` (and only when wholly
  free).

Left out, as they do not apply to the worker: streams (one stream), ``max_split_size_mb`` and the
other ``PYTORCH_CUDA_ALLOC_CONF`` options (unset: no limit on splitting), expandable segments (off
by default), and the retry that frees cached segments when the driver is out of memory (a forecast
asks whether a peak fits, so it never runs out). Pure Python, no torch: fast enough to replay tens
of thousands of events at plan time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Every request is rounded up to a multiple of this (PyTorch's ``kMinBlockSize``).
MIN_BLOCK = 512
#: The largest request the small pool serves (``kSmallSize``).
SMALL_SIZE = 1 << 20
#: The small pool's segment size (``kSmallBuffer``).
SMALL_BUFFER = 2 << 20
#: The large pool's segment size for a request under :data:`MIN_LARGE_ALLOC` (``kLargeBuffer``).
LARGE_BUFFER = 20 << 20
#: From this size up a request gets a segment of its own (``kMinLargeAlloc``) ...
MIN_LARGE_ALLOC = 10 << 20
#: ... rounded up to a multiple of this (``kRoundLarge``).
ROUND_LARGE = 2 << 20


def round_size(size: int) -> int:
    """A request's size as the allocator books it: at least 512 bytes, a multiple of 512."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    return -(-size // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """The size of the segment the allocator asks the driver for when nothing cached fits ``size`` (rounded)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    address: int
    size: int
    segment: int
    small: bool
    allocated: bool = False
    prev: _Block | None = None
    next: _Block | None = None


@dataclass
class AllocatorStats:
    """What the allocator holds now and at its peaks, in bytes (as ``torch.cuda.memory_stats`` counts them)."""

    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    segments: int = 0


@dataclass
class CachingAllocator:
    """The caching allocator's state: segments, blocks, free pools; :meth:`malloc`, :meth:`free`, :meth:`empty_cache`.

    Handles are plain integers (the block's address). Addresses are virtual: each new segment
    starts above every earlier one, which is what the lowest-address tie-break needs.
    """

    stats: AllocatorStats = field(default_factory=AllocatorStats)
    _next_address: int = 0
    _segments: dict[int, int] = field(default_factory=dict)  # segment base -> size
    _live: dict[int, _Block] = field(default_factory=dict)  # address -> allocated block
    _free_small: list[tuple[int, int]] = field(default_factory=list)  # sorted (size, address)
    _free_large: list[tuple[int, int]] = field(default_factory=list)
    _free_blocks: dict[int, _Block] = field(default_factory=dict)  # address -> free block

    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes; returns the handle to free it with."""
        size = round_size(size)
        small = size <= SMALL_SIZE
        pool = self._free_small if small else self._free_large
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            _, address = pool.pop(i)
            block = self._free_blocks.pop(address)
        else:
            seg = segment_size(size)
            block = _Block(self._next_address, seg, self._next_address, small)
            self._segments[block.address] = seg
            self._next_address += seg
            self.stats.reserved += seg
            self.stats.segments += 1
            self.stats.peak_reserved = max(self.stats.peak_reserved, self.stats.reserved)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.address + size, remaining, block.segment, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._add_free(rest)
        block.allocated = True
        self._live[block.address] = block
        self.stats.allocated += block.size
        self.stats.peak_allocated = max(self.stats.peak_allocated, self.stats.allocated)
        return block.address

    def free(self, handle: int) -> None:
        """Return a block to its pool, merged with its free neighbours in the same segment."""
        block = self._live.pop(handle)
        block.allocated = False
        self.stats.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove_free(neighbour)
                if neighbour is block.prev:
                    neighbour.size += block.size
                    neighbour.next = block.next
                    if block.next is not None:
                        block.next.prev = neighbour
                    block = neighbour
                else:
                    block.size += neighbour.size
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
        self._add_free(block)

    def empty_cache(self) -> None:
        """Give back to the driver every segment that is wholly free (``torch.cuda.empty_cache``)."""
        for address, block in list(self._free_blocks.items()):
            if block.prev is None and block.next is None:
                self._remove_free(block)
                self.stats.reserved -= self._segments.pop(address)
                self.stats.segments -= 1

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats``: the peaks start again from what is held now."""
        self.stats.peak_allocated = self.stats.allocated
        self.stats.peak_reserved = self.stats.reserved

    def segment_sizes(self) -> dict[int, int]:
        """How many segments of each size are reserved now (the trace's segment histogram)."""
        out: dict[int, int] = {}
        for size in self._segments.values():
            out[size] = out.get(size, 0) + 1
        return dict(sorted(out.items()))

    def inactive_split_bytes(self) -> int:
        """Free bytes in segments that also hold allocated blocks (``inactive_split_bytes`` in torch's stats)."""
        total = 0
        for block in self._free_blocks.values():
            if block.prev is not None or block.next is not None:
                total += block.size
        return total

    def _add_free(self, block: _Block) -> None:
        pool = self._free_small if block.small else self._free_large
        bisect.insort(pool, (block.size, block.address))
        self._free_blocks[block.address] = block

    def _remove_free(self, block: _Block) -> None:
        pool = self._free_small if block.small else self._free_large
        del pool[bisect.bisect_left(pool, (block.size, block.address))]
        del self._free_blocks[block.address]
