"""What a trial worker allocates for ``generate`` with a dynamic cache, replayed through the allocator model.

The forecast adds up what is *allocated* at the peak; what the process *holds* is what PyTorch's
caching allocator reserved for those allocations, and for a dynamic cache the two part ways:
every decode step concatenates one token to every layer's K and V (Transformers 5's
``DynamicLayer.update``: ``torch.cat``, a new tensor of the grown size, then the old one freed),
and a block the cache outgrew stays cached where nothing later fits it. Whether a grown K/V finds
room in what is cached depends on the order of every large allocation before it, so this module
replays that order through :class:`~autotune.memory.allocator.CachingAllocator`:

1. **the prompt pass**, layer by layer, as a Llama-family decoder layer (Transformers 5) runs it:
   the RMS norm's fp32 copies, the Q/K/V projections, the rotary embedding's products
   (``q * cos + rotate_half(q) * sin``, ``rotate_half`` a ``torch.cat`` of the negated halves),
   the cache's first ``torch.cat`` of the prompt's K and V, the attention output and its
   contiguous transpose (a fused SDPA kernel: no scores), the output projection and the residual,
   then the MLP (gated: gate, its activation, up, their product; plain: up, activation), the down
   projection and the residual; then the last position's logits;
2. **every decode step**: the same layer on one token per sequence, each layer's K and V grown by
   one token (allocate the new, free the old), and the logits with their fp32 copies;
3. **the worker's ladder**: batch sizes in the order the worker runs them, with the
   ``gc.collect()`` + ``torch.cuda.empty_cache()`` the worker calls between two sizes
   (``autotune/worker/child.py``), the peak statistics reset before each size's memory pass.

Small allocations (up to 1 MiB) come from the allocator's small pool, which the large pool never
draws on; during decode steps after the first they are left out (each is freed within its layer,
so the small pool only repeats the first step's pattern, and the large pool is untouched by it):
that is what keeps a replay of a 32-layer model over 128 new tokens to a few tens of
milliseconds. The weights are not replayed (they are allocated before and stay; the forecast
counts them apart), nor the quality reference (the worker frees it and empties the cache before
the ladder, so it leaves nothing behind).

What the replay does not know: kernels' own workspaces (cuBLAS, SDPA's), which the forecast
counts as constants; other architectures' layer internals (a plain MLP is modelled, a parallel
attention/MLP block is not); and eager attention's scores (the forecast counts those apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autotune.memory.allocator import SMALL_SIZE, CachingAllocator
from autotune.memory.shape import ModelShape


@dataclass(frozen=True)
class ReplayPeak:
    """One batch size's memory pass in the replay: peaks and the reserved segments at the reserved peak."""

    batch_size: int
    peak_allocated: int
    peak_reserved: int
    #: Reserved segments by size at the end of the pass (segments are kept until ``empty_cache``,
    #: so the end holds every segment of the reserved peak).
    segments: dict[int, int]
    #: Free bytes inside segments that also hold live blocks, at the end of the pass.
    inactive_split_bytes: int

    @property
    def kept(self) -> int:
        """Reserved beyond allocated at the peaks: what the allocator holds that no tensor uses."""
        return self.peak_reserved - self.peak_allocated

    def to_dict(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "peak_allocated": self.peak_allocated,
            "peak_reserved": self.peak_reserved,
            "segments": {str(k): v for k, v in self.segments.items()},
            "inactive_split_bytes": self.inactive_split_bytes,
        }


class _Run:
    """One ``generate`` call's allocations on an allocator, in the order a decoder runs them."""

    def __init__(
        self, alloc: CachingAllocator, shape: ModelShape, batch: int, prompt: int, new: int, act: int, every_step: bool = False
    ) -> None:
        self.a = alloc
        self.every_step = every_step
        self.shape = shape
        self.batch = batch
        self.prompt = prompt
        self.new = max(new, 1)
        self.act = act
        self.small = True  # whether allocations of the small pool are replayed
        heads = shape.attention_heads
        self.q_width = heads * (shape.head_dim or (shape.hidden_size // max(heads, 1)))
        self.layers = [layer for layer in shape.kv_layers if not layer.cross]

    def _m(self, size: int) -> int | None:
        if size <= SMALL_SIZE and not self.small:
            return None
        return self.a.malloc(size)

    def _f(self, *handles: int | None) -> None:
        for h in handles:
            if h is not None:
                self.a.free(h)

    def _norm(self, tokens: int) -> int | None:
        """RMS norm in fp32 (Llama's): the cast, the square and its mean, the scaled copy, the cast back, the weight's product."""
        n, hid, act = tokens, self.shape.hidden_size, self.act
        x32 = self._m(n * hid * 4)  # hidden_states.to(float32)
        sq = self._m(n * hid * 4)  # .pow(2)
        mean = self._m(n * 4)  # .mean(-1, keepdim=True)
        self._f(sq)
        eps = self._m(n * 4)  # variance + eps
        inv = self._m(n * 4)  # rsqrt
        self._f(eps)
        y32 = self._m(n * hid * 4)  # hidden_states * rsqrt(...), which replaces the fp32 copy
        self._f(inv, x32)
        y = self._m(n * hid * act)  # .to(input_dtype)
        out = self._m(n * hid * act)  # weight * ...
        self._f(y, y32, mean)
        return out

    def _rotary(self, width: int, tokens: int) -> int | None:
        """``x * cos + rotate_half(x) * sin``, ``rotate_half`` a ``torch.cat`` of the negated second half and the first."""
        act = self.act
        a = self._m(tokens * width * act)  # x * cos
        neg = self._m(tokens * width // 2 * act)  # -x2
        rh = self._m(tokens * width * act)  # cat(-x2, x1)
        self._f(neg)
        b = self._m(tokens * width * act)  # rotate_half(x) * sin
        self._f(rh)
        out = self._m(tokens * width * act)
        self._f(a, b)
        return out

    def layer(self, h: int | None, tokens: int, cache: list[list[int | None]], index: int, length: int) -> int | None:
        """One decoder layer on ``tokens`` positions (B x new positions); grows layer ``index``'s cache to ``length``."""
        s, act, b = self.shape, self.act, self.batch
        per_token = self.layers[index].elements_per_token // 2 * act  # K, or V, bytes per cached token and sequence
        window = self.layers[index].window
        kept = min(length, window) if window else length
        kv_width = self.layers[index].elements_per_token // 2
        x = self._norm(tokens)
        q = self._m(tokens * self.q_width * act)
        k = self._m(tokens * kv_width * act)
        v = self._m(tokens * kv_width * act)
        qe = self._rotary(self.q_width, tokens)
        ke = self._rotary(kv_width, tokens)
        self._f(q, k)  # query_states, key_states = apply_rotary_pos_emb(...)
        # DynamicLayer.update: torch.cat(old, new) for K, then for V (the first from an empty
        # tensor); the rotated K and the projected V are dropped when the cache's are returned
        for j in (0, 1):
            grown = self.a.malloc(b * kept * per_token)
            self._f(cache[index][j])
            cache[index][j] = grown
        self._f(ke, v)
        # a fused SDPA kernel writes its output in (B, T, heads, d) order, so the transpose's
        # .contiguous() copies nothing; its log-sum-exp is fp32 per head and position
        o = self._m(tokens * self.q_width * act)
        lse = self._m(b * s.attention_heads * (tokens // b) * 4)
        self._f(lse, qe)
        proj = self._m(tokens * s.hidden_size * act)  # o_proj
        self._f(o, x)  # the attention output, then the normed input the caller held
        h2 = self._m(tokens * s.hidden_size * act)  # residual + hidden_states
        self._f(proj, h)
        x2 = self._norm(tokens)
        width = tokens * s.mlp_width * act
        if s.gated_mlp:
            gate = self._m(width)
            gact = self._m(width)
            self._f(gate)
            up = self._m(width)
            prod = self._m(width)
            self._f(gact, up)
        else:
            up = self._m(width)
            prod = self._m(width)
            self._f(up)
        down = self._m(tokens * s.hidden_size * act)
        self._f(prod, x2)
        h3 = self._m(tokens * s.hidden_size * act)  # residual + hidden_states
        self._f(down, h2)
        return h3

    def logits(self, h: int | None, tokens: int) -> None:
        """The last position's logits (Transformers 5 computes no others), in fp32, and the processed scores."""
        s, b = self.shape, self.batch
        x = self._norm(tokens)  # the final norm runs on every position; the head on the last one
        lg = self._m(b * s.vocab_size * self.act)
        f32 = self._m(b * s.vocab_size * 4)  # next_token_logits: an fp32 copy
        self._f(lg, x, h)
        scores = self._m(b * s.vocab_size * 4)
        self._f(f32)
        nxt = self._m(b * 8)
        self._f(scores, nxt)

    def _position_embeddings(self, tokens: int, head_dim: int) -> tuple[int | None, int | None]:
        """The rotary embedding's cos and sin, computed in fp32 once per forward and cast to the compute dtype."""
        f32 = tokens * head_dim * 4
        freqs = self._m(f32 // 2)
        emb = self._m(f32)  # cat(freqs, freqs)
        self._f(freqs)
        kept = []
        for _ in ("cos", "sin"):
            raw = self._m(f32)  # emb.cos()
            kept.append(self._m(f32))  # * attention_scaling
            self._f(raw)
        cos = self._m(tokens * head_dim * self.act)
        sin = self._m(tokens * head_dim * self.act)
        self._f(emb, *kept)
        return cos, sin

    def generate(self) -> None:
        """The prompt pass, then ``new - 1`` decode steps; the cache is freed at the end, as ``generate`` returns."""
        s, b = self.shape, self.batch
        cache: list[list[int | None]] = [[None, None] for _ in self.layers]
        ids = self.a.malloc(b * self.prompt * 8)
        head_dim = s.head_dim or s.hidden_size // max(s.attention_heads, 1)
        length = self.prompt
        for step in range(self.new):
            tokens = b * (self.prompt if step == 0 else 1)
            self.small = self.every_step or step <= 1
            h = self._m(tokens * s.hidden_size * self.act)
            cos, sin = self._position_embeddings(tokens, head_dim)
            for i in range(len(self.layers)):
                h = self.layer(h, tokens, cache, i, length)
            self._f(cos, sin)
            self.logits(h, tokens)
            length += 1
        self.small = True
        for pair in cache:
            self._f(*pair)
        self.a.free(ids)


def replay_ladder(
    shape: ModelShape,
    ladder: Sequence[int],
    prompt_tokens: int,
    new_tokens: int,
    act_bytes: int = 2,
    *,
    calls: int = 1,
    every_step: bool = False,
) -> list[ReplayPeak]:
    """Replay a worker's batch ladder (each size's memory pass: ``calls`` ``generate`` calls), in order.

    Between two sizes the worker empties the cache; each size's peaks are reset before its pass,
    as ``torch.cuda.reset_peak_memory_stats`` does in the worker's memory pass. Figures are those
    of the running part alone (the weights are not replayed). ``every_step`` replays the small
    pool's allocations at every decode step too (slower; the tests check it changes nothing).
    """
    alloc = CachingAllocator()
    out = []
    for i, batch in enumerate(ladder):
        if i:
            alloc.empty_cache()
        alloc.reset_peaks()
        for _ in range(calls):
            _Run(alloc, shape, batch, prompt_tokens, new_tokens, act_bytes, every_step).generate()
        out.append(
            ReplayPeak(
                batch,
                alloc.stats.peak_allocated,
                alloc.stats.peak_reserved,
                alloc.segment_sizes(),
                alloc.inactive_split_bytes(),
            )
        )
    return out


def replay_kept(shape: ModelShape, batch: int, prompt_tokens: int, new_tokens: int, act_bytes: int, before: Sequence[int] = ()) -> int:
    """What the allocator holds beyond what is allocated at ``batch``'s peaks, after the sizes ``before`` it in the same worker."""
    ladder = [b for b in sorted(set(before)) if 0 < b < batch] + [batch]
    return replay_ladder(shape, ladder, prompt_tokens, new_tokens, act_bytes)[-1].kept
