"""Timing and memory of one loaded candidate at one batch size.

Runs only inside the worker child. Timing: warm-up calls excluded (the first one's extra cost is
the compile cost; they go on until two calls agree, see :func:`settle`), device synchronisation
around every timed call, repeats until the relative spread ``(p90 - p10) / p50`` is small or a cap
is reached; a series during which torch.compile made a graph is timed again. Memory is measured
during the warm-up calls, with a sampler thread polling NVML and the RSS, so that the sampler
never runs during a timed call.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from autotune.candidate import Candidate
from autotune.worker.loading import SDPA_BACKENDS, OptionNotInEffect, synchronize
from autotune.worker.protocol import WorkerRequest

#: Seconds between two memory samples in the memory pass.
SAMPLE_INTERVAL_S = 0.005

#: The most untimed warm-up calls :func:`settle` makes before timing anyway. A compiled static
#: cache needs more than one: its first ``generate`` compiles the decode graph (and, with
#: Transformers' default ``reduce-overhead`` mode, CUDA-graph trees warm it and record it over
#: the first calls of each shape); anything still recompiling or recording after the first call
#: would otherwise land in the timed series. Without a compile the second call settles at once.
MAX_WARMUP = 4


@dataclass
class Measured:
    """What one batch size came to. ``screened`` holds the reason when it was timed once only
    (see :class:`autotune.worker.protocol.Screen`): its figures are a screen, not a measurement."""

    metrics: dict[str, Any]
    effective: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    screened: str | None = None


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> float:
    """Relative spread ``(p90 - p10) / p50`` of repeated timings (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    middle = percentile(values, 50)
    return (percentile(values, 90) - percentile(values, 10)) / middle if middle > 0 else 0.0


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``call`` took, synchronising the GPUs before and after, and its result."""
    synchronize()
    started = time.perf_counter()
    result = call()
    synchronize()
    return time.perf_counter() - started, result


def settle(call: Callable[[], float], minimum: int, tolerance: float, cap: int = MAX_WARMUP, done: tuple[float, ...] = ()) -> list[float]:
    """Untimed warm-up calls until the last two agree within ``tolerance``; their seconds.

    ``call`` runs one warm-up and returns its seconds; ``done`` holds warm-up calls already made
    the same way. At least ``minimum`` calls and at least two (one call cannot show that the next
    runs at its steady speed: a compiled graph's first call compiles, a later one may still record
    a CUDA graph or recompile), at most ``max(cap, minimum)``. Two calls agree when their
    difference is at most ``tolerance`` of the faster one.
    """
    times: list[float] = list(done)

    def agreed() -> bool:
        return len(times) >= max(2, minimum) and abs(times[-1] - times[-2]) <= tolerance * min(times[-2:])

    while len(times) < max(cap, minimum) and not agreed():
        times.append(call())
    return times


def compile_count() -> int | None:
    """How many graphs torch.compile has produced in this process (``None`` if it cannot say)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return None


def repeat(call: Callable[[], Any], request: WorkerRequest, first: list[float] | None = None) -> tuple[list[float], bool]:
    """Timed repeats until the spread is small enough or a cap is reached; (seconds, capped).

    ``first`` holds runs already timed (a screening run); they count as repeats.
    """
    times: list[float] = list(first or [])
    started = time.monotonic()
    while True:
        if len(times) >= request.max_repeats:
            return times, spread(times) > request.target_spread
        if len(times) >= request.min_repeats and spread(times) <= request.target_spread:
            return times, False
        if times and time.monotonic() - started >= request.time_cap_s:
            return times, True
        seconds, _ = timed(call)
        times.append(seconds)


# -- inputs ---------------------------------------------------------------------------------------


def special_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        for name in (
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "decoder_start_token_id",
            "sep_token_id",
            "cls_token_id",
            "mask_token_id",
            "unk_token_id",
        ):
            value = getattr(source, name, None)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, int):
                    ids.add(item)
    return ids


def pad_id(model: Any) -> int:
    for source in (getattr(model, "generation_config", None), model.config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if isinstance(value, int):
                return value
    return 0


def vocab_size(model: Any) -> int:
    """The model's vocabulary: its input embeddings' rows (the config's size for an ONNX Runtime model)."""
    if not isinstance(model, torch.nn.Module):
        return int(model.config.vocab_size)
    return int(model.get_input_embeddings().num_embeddings)


def synthetic_ids(model: Any, rows: int, length: int, seed: int) -> torch.Tensor:
    """Seeded token ids that avoid the model's special ids (CPU tensor, ``rows x length``)."""
    vocab = vocab_size(model)
    allowed = torch.ones(vocab, dtype=torch.bool)
    for token in special_ids(model):
        if 0 <= token < vocab:
            allowed[token] = False
    choices = allowed.nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(choices), (rows, length), generator=generator)
    return choices[picks]


def row_lengths(batch: int, prompt_tokens: int, padding_share: float) -> list[int]:
    """Real (unpadded) prompt length of each row: falling lengths whose mean padding is the share.

    Row padding fractions run linearly from ``share - d`` to ``share + d`` with
    ``d = min(share, 1 - share)``, so the first row is the longest and the mean is the share. A
    batch of one has nothing to be padded to and keeps the full length.
    """
    if batch == 1 or padding_share <= 0:
        return [prompt_tokens] * batch
    half = min(padding_share, 1 - padding_share)
    fractions = [padding_share - half + 2 * half * i / (batch - 1) for i in range(batch)]
    return [max(1, min(prompt_tokens, round(prompt_tokens * (1 - f)))) for f in fractions]


def batch_inputs(model: Any, batch: int, request: WorkerRequest, *, left: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
    """``input_ids`` and ``attention_mask`` for a batch, padded left (decoders) or right (encoders)."""
    workload = request.workload
    length = workload.prompt_tokens
    ids = synthetic_ids(model, batch, length, request.seed + batch)
    mask = torch.ones_like(ids)
    lengths = row_lengths(batch, length, workload.padding_share)
    pad = pad_id(model)
    for row, real in enumerate(lengths):
        if real < length:
            span = slice(0, length - real) if left else slice(real, length)
            ids[row, span] = pad
            mask[row, span] = 0
    device = input_device(model)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, lengths


def input_device(model: Any) -> torch.device:
    """Where inputs go: the input embeddings' device (an ONNX Runtime model's ``device``)."""
    if not isinstance(model, torch.nn.Module):
        return torch.device(model.device)
    return model.get_input_embeddings().weight.device


# -- memory ---------------------------------------------------------------------------------------


def current_rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:
            return None


def peak_rss() -> int:
    """The process's peak RSS since it started, in bytes."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if os.uname().sysname == "Darwin" else maxrss * 1024)


class GpuMemoryProbe:
    """The process's GPU memory as NVML sees it.

    Create it before CUDA is initialised: it notes each GPU's used memory then, so that where
    NVML does not list this process (containers with their own pid namespace) the process's
    share is the device's used memory minus that baseline.
    """

    def __init__(self, pynvml: Any, handles: list[Any], uuids: list[str], baseline: list[int]) -> None:
        self._nvml = pynvml
        self._handles = handles
        self._uuids = uuids
        self._baseline = baseline
        self._bound: dict[int, int] = {}
        self.source = "nvml"

    @classmethod
    def create(cls) -> GpuMemoryProbe | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [str(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
            baseline = [int(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles]
        except Exception:
            return None
        return cls(pynvml, handles, [u.decode() if isinstance(u, bytes) else u for u in uuids], baseline)

    def bind(self) -> None:
        """Map torch's device indices (which follow CUDA_VISIBLE_DEVICES) to NVML's, by UUID."""
        for index in range(torch.cuda.device_count()):
            uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", ""))
            match = next((n for n, u in enumerate(self._uuids) if uuid and u.endswith(uuid)), None)
            if match is None and len(self._uuids) == torch.cuda.device_count():
                match = index
            if match is not None:
                self._bound[index] = match

    def bind_visible(self) -> None:
        """Without CUDA in torch (an ONNX Runtime worker): map device ordinals to NVML's through
        CUDA_VISIBLE_DEVICES (indices or UUIDs), all GPUs in order when it is not set."""
        from autotune.environment import visible_order

        order = visible_order(self._uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._bound = dict(enumerate(order))

    def read(self) -> dict[int, int]:
        """Bytes this process uses on each bound GPU (torch index -> bytes)."""
        out: dict[int, int] = {}
        pid = os.getpid()
        for index, nvml_index in self._bound.items():
            handle = self._handles[nvml_index]
            try:
                used = None
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used = int(proc.usedGpuMemory)
                if used is None:
                    used = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used) - self._baseline[nvml_index]
                    self.source = "nvml-device-delta"
                out[index] = max(0, used)
            except Exception:
                continue
        return out

    def other_processes(self, gpus: list[int]) -> dict[str, Any]:
        """Other processes NVML lists on the given GPUs (torch indices): ``{"processes": [...], "own_listed": bool}``.

        In a container with its own pid namespace NVML lists pids this process cannot match, its
        own among them: then ``own_listed`` is False and one of the listed processes is this one.
        """
        pid = os.getpid()
        seen: dict[int, dict[str, Any]] = {}
        own = False
        for index in gpus:
            nvml_index = self._bound.get(index)
            if nvml_index is None:
                continue
            handle = self._handles[nvml_index]
            for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    procs = getattr(self._nvml, query)(handle)
                except Exception:
                    continue
                for proc in procs:
                    if proc.pid == pid:
                        own = True
                        continue
                    entry = seen.setdefault(int(proc.pid), {"pid": int(proc.pid), "gpu": index, "used_bytes": 0})
                    entry["used_bytes"] = max(entry["used_bytes"], int(proc.usedGpuMemory or 0))
        return {"processes": sorted(seen.values(), key=lambda e: e["pid"])[:8], "own_listed": own}


class HostLoad:
    """What else ran on the machine while a timed region ran (Linux): the share of all CPUs' time
    that other processes took (``/proc/stat`` less this process's own CPU time), the 1-minute load
    average, and, with an NVML probe, other processes on the trial's GPUs.

    Timings taken while another job shares the CPUs or the GPU drift with it: the recommendation
    warns when they were (see :func:`autotune.advisor.explain.busy_note`).
    """

    def __init__(self, probe: GpuMemoryProbe | None = None, gpus: list[int] | None = None) -> None:
        self.probe = probe
        self.gpus = gpus or []
        self.result: dict[str, Any] = {}

    @staticmethod
    def _cpu_jiffies() -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs since boot."""
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        return total - idle, total

    def __enter__(self) -> HostLoad:
        self._jiffies = self._cpu_jiffies()
        times = os.times()
        self._own = times.user + times.system
        self._gpu_before = self.probe.other_processes(self.gpus) if self.probe is not None and self.gpus else None
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._cpu_jiffies()
        times = os.times()
        own = times.user + times.system - self._own
        out: dict[str, Any] = {"cpus": os.cpu_count()}
        if self._jiffies is not None and after is not None and after[1] > self._jiffies[1]:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (after[0] - self._jiffies[0]) / hz
            total = (after[1] - self._jiffies[1]) / hz
            out["other_cpu_share"] = round(min(1.0, max(0.0, (busy - own) / total)), 3)
        try:
            out["load_1m"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        if self._gpu_before is not None and self.probe is not None:
            gpu_after = self.probe.other_processes(self.gpus)
            merged = {p["pid"]: p for p in self._gpu_before["processes"] + gpu_after["processes"]}
            out["gpu_other_processes"] = sorted(merged.values(), key=lambda e: e["pid"])[:8]
            out["gpu_own_listed"] = self._gpu_before["own_listed"] or gpu_after["own_listed"]
        self.result = out


class MemorySampler:
    """Polls the GPU probe and the RSS from a thread while a pass runs; keeps the peaks."""

    def __init__(self, probe: GpuMemoryProbe | None) -> None:
        self.probe = probe
        self.gpu_peaks: dict[int, int] = {}
        self.rss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autotune-memory-sampler", daemon=True)

    def sample(self) -> None:
        if self.probe is not None:
            for index, used in self.probe.read().items():
                self.gpu_peaks[index] = max(self.gpu_peaks.get(index, 0), used)
        rss = current_rss()
        if rss is not None:
            self.rss_peak = max(self.rss_peak, rss)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        synchronize()
        self.sample()


def model_gpus(model: Any) -> list[int]:
    """The GPUs holding the model's weights (an ONNX Runtime model: its session's device)."""
    if not isinstance(model, torch.nn.Module):
        device = torch.device(model.device)
        return [device.index or 0] if device.type == "cuda" else []
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def memory_pass(model: Any, probe: GpuMemoryProbe | None) -> Iterator[dict[str, Any]]:
    """Run the body once while measuring memory; fills the yielded dict with metrics and details.

    An ONNX Runtime session allocates GPU memory in its own arena, which torch does not see: its
    GPU figures come from NVML alone (torch's stay empty).
    """
    tracked = isinstance(model, torch.nn.Module)
    gpus = model_gpus(model) if torch.cuda.is_available() or not tracked else []
    if tracked:
        for index in gpus:
            torch.cuda.reset_peak_memory_stats(index)
    out: dict[str, Any] = {}
    with MemorySampler(probe if gpus else None) as sampler:
        yield out
    from autotune.worker import trace

    trace.after_memory_pass()  # a no-op unless the worker runs a memory trace
    metrics: dict[str, Any] = {"rss_bytes": sampler.rss_peak or None}
    details: dict[str, Any] = {}
    if gpus and tracked:
        allocated = {i: int(torch.cuda.max_memory_allocated(i)) for i in gpus}
        reserved = {i: int(torch.cuda.max_memory_reserved(i)) for i in gpus}
        nvml = {i: sampler.gpu_peaks[i] for i in gpus if i in sampler.gpu_peaks}
        metrics["torch_allocated_bytes"] = max(allocated.values())
        metrics["torch_reserved_bytes"] = max(reserved.values())
        metrics["nvml_used_bytes"] = max(nvml.values()) if nvml else None
        metrics["peak_memory_bytes"] = metrics["nvml_used_bytes"] or metrics["torch_reserved_bytes"]
        details["memory_per_gpu"] = {
            f"cuda:{i}": {"torch_allocated": allocated[i], "torch_reserved": reserved[i], "nvml_used": nvml.get(i)} for i in gpus
        }
        details["peak_source"] = probe.source if nvml and probe is not None else "torch_reserved (no NVML: CUDA context not included)"
    elif gpus:
        nvml = {i: sampler.gpu_peaks[i] for i in gpus if i in sampler.gpu_peaks}
        metrics.update(torch_allocated_bytes=None, torch_reserved_bytes=None, nvml_used_bytes=max(nvml.values()) if nvml else None)
        metrics["peak_memory_bytes"] = metrics["nvml_used_bytes"]
        details["memory_per_gpu"] = {f"cuda:{i}": {"nvml_used": nvml.get(i)} for i in gpus}
        details["peak_source"] = (
            probe.source
            if nvml and probe is not None
            else "none: NVML could not see this process, and torch does not see ONNX Runtime's memory"
        )
    else:
        metrics.update(torch_allocated_bytes=None, torch_reserved_bytes=None, nvml_used_bytes=None, peak_memory_bytes=peak_rss())
        details["peak_source"] = "peak RSS of the worker process since it started (loading included)"
    out.update(metrics=metrics, details=details)


# -- attention kernel -----------------------------------------------------------------------------


def sdpa_context(candidate: Candidate) -> contextlib.AbstractContextManager[Any]:
    """``torch.nn.attention.sdpa_kernel`` pinning the candidate's SDPA backend, if it pins one."""
    if candidate.sdpa_kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[candidate.sdpa_kernel])])


# -- text generation ------------------------------------------------------------------------------


class StopAfterFirstToken(StoppingCriteria):
    """A stopping criterion that ends ``generate`` once the first new token is there.

    Keeps ``max_new_tokens`` (and so a static cache's shape and compiled graph) unchanged, so
    the time to first token is measured on the very same call as the end-to-end latency.
    """

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = input_ids.shape[1] > self.prompt_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def generate_kwargs(candidate: Candidate, new_tokens: int, pad: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": pad}
    if candidate.static_cache:
        kwargs["cache_implementation"] = "static"
    return kwargs


def measure_generation(model: Any, request: WorkerRequest, batch: int, probe: GpuMemoryProbe | None) -> Measured:
    candidate, workload = request.candidate, request.workload
    generation = candidate.value("generation")
    if generation != "plain" and batch != 1:
        raise OptionNotInEffect(
            "unsupported",
            f"generation {generation}: Transformers drafts tokens at batch size 1 only (assisted generate refuses "
            f"batch {batch}); measure it with --batch 1",
        )
    from autotune.worker import generation as strategies

    if strategies.text_timed(request, batch):
        return strategies.measure_on_text(model, request, probe)
    inputs, lengths = batch_inputs(model, batch, request, left=True)
    prompt = workload.prompt_tokens
    kwargs = generate_kwargs(candidate, workload.new_tokens, pad_id(model))
    stop_first = StopAfterFirstToken(prompt)

    def full() -> Any:
        return model.generate(**inputs, **kwargs)

    def first() -> Any:
        return model.generate(**inputs, **kwargs, stopping_criteria=StoppingCriteriaList([stop_first]))

    def series(done: list[float]) -> tuple[list[float], bool, list[float], bool]:
        """The TTFT series, then the end-to-end one (``done``: its runs already timed)."""
        ttft, ttft_capped = repeat(first, request)
        # With one new token (prefill only) a whole call stops at the first token: one series is both.
        e2e, e2e_capped = (ttft, ttft_capped) if workload.new_tokens == 1 else repeat(full, request, done)
        return ttft, ttft_capped, e2e, e2e_capped

    # The warm-up calls are untimed (the first one's extra cost is the compile cost) and double as
    # the memory pass: the sampler thread never runs during a timed call. They go on until two
    # calls agree (see settle): a compiled graph may still recompile or record after its first call.
    outputs: list[Any] = []

    def warm() -> float:
        seconds, result = timed(full)
        if not outputs:
            outputs.append(result)
        return seconds

    with memory_pass(model, probe) as memory:
        warmups = settle(warm, request.warmup, request.target_spread)
    first_call, output = warmups[0], outputs[0]
    generated = int(output.shape[1] - prompt)
    effective: dict[str, Any] = {}
    if candidate.static_cache:
        compiled = getattr(model, "_compiled_call", None) is not None
        effective["static_cache_compiled"] = compiled
        if not compiled:
            raise OptionNotInEffect(
                "unsupported",
                f"static cache did not take effect as compiled: transformers ran generate with the static cache but without "
                f"torch.compile on {input_device(model).type} (it compiles only on CUDA/XPU, without CPU offload or bitsandbytes)",
                effective,
            )
    screened = screen_memory(request, memory["metrics"])
    if screened is not None:
        return _screened_generation(request, batch, generated, [], memory, effective, first_call, lengths, screened)
    with HostLoad(probe, model_gpus(model) if probe is not None else None) as host:
        e2e_first: list[float] = []
        if request.screen is not None and request.screen.beat is not None:
            seconds, _ = timed(full)
            e2e_first.append(seconds)
            screened = screen_timing(request, batch * generated / seconds, seconds * 1e3)
        recompiled = recompiled_again = 0
        if screened is None:
            graphs = compile_count()
            ttft, ttft_capped, e2e, e2e_capped = series(e2e_first)
            recompiled = (compile_count() or 0) - graphs if graphs is not None else 0
            if recompiled > 0:
                # A graph compiled inside the timed series: its calls timed a compile. Time both
                # series again on the graphs that now exist, and say so.
                graphs = compile_count()
                ttft, ttft_capped, e2e, e2e_capped = series([])
                recompiled_again = (compile_count() or 0) - (graphs or 0)
    if screened is not None:
        return _screened_generation(request, batch, generated, e2e_first, memory, effective, first_call, lengths, screened)

    p50 = percentile(e2e, 50)
    ttft50 = percentile(ttft, 50)
    metrics: dict[str, Any] = {
        "ttft_ms": ttft50 * 1e3,
        "latency_p50_ms": p50 * 1e3,
        "latency_p90_ms": percentile(e2e, 90) * 1e3,
        "latency_spread": spread(e2e),
        "repeats": len(e2e),
        "throughput_tokens_per_s": batch * generated / p50,
        "decode_tokens_per_s": batch * (generated - 1) / (p50 - ttft50) if generated > 1 and p50 > ttft50 else None,
        "compile_seconds": max(0.0, first_call - p50) if candidate.static_cache or candidate.attn == "flex_attention" else None,
        **memory["metrics"],
    }
    details = {
        "e2e_ms": [round(t * 1e3, 3) for t in e2e],
        "ttft_ms_repeats": [round(t * 1e3, 3) for t in ttft],
        "first_call_seconds": first_call,
        "warmup_seconds": [round(t, 4) for t in warmups],
        "capped": e2e_capped or ttft_capped,
        "generated_tokens": generated,
        "prompt_lengths": lengths,
        "padding_share": 1 - sum(lengths) / (batch * prompt),
        "machine": host.result,
        **memory["details"],
    }
    warnings = []
    if recompiled > 0:
        details["recompiled_during_timing"] = recompiled
        details["retimed"] = True
        if recompiled_again > 0:
            warnings.append(f"torch.compile made {recompiled_again} graph(s) during the timed series even when timed again")
    if generated != workload.new_tokens:
        warnings.append(f"generate produced {generated} new tokens instead of {workload.new_tokens}")
    if warnings:
        details["warning"] = "; ".join(warnings)
    return Measured(metrics, effective, details)


# -- screening ------------------------------------------------------------------------------------


def screen_memory(request: WorkerRequest, memory_metrics: dict[str, Any]) -> str | None:
    """The screening verdict of a memory objective, from the memory pass alone (no timed run)."""
    screen = request.screen
    peak = memory_metrics.get("peak_memory_bytes")
    if screen is None or screen.metric != "peak_memory_bytes" or peak is None or not screen.hopeless(float(peak)):
        return None
    return (
        f"screened out after the memory pass: peak {peak / 2**30:.2f} GiB is {screen.behind(float(peak)):.0%} above the "
        f"smallest so far ({screen.beat / 2**30:.2f} GiB); not timed"
    )  # type: ignore[operator]


def screen_timing(request: WorkerRequest, per_second: float, milliseconds: float) -> str | None:
    """The screening verdict of one timed run: a reason when it is far behind the figure to beat, else ``None``.

    ``per_second`` is the run's throughput figure (tokens or sequences per second), ``milliseconds``
    its latency; the screen's metric picks one.
    """
    screen = request.screen
    if screen is None or screen.beat is None or screen.metric == "peak_memory_bytes":
        return None
    value = milliseconds if screen.metric == "latency_p50_ms" else per_second
    if not screen.hopeless(value):
        return None
    unit = "ms" if screen.metric == "latency_p50_ms" else "/s"
    return (
        f"screened out after one timed run: {value:,.1f} {unit} is {screen.behind(value):.0%} behind the best so far "
        f"({screen.beat:,.1f} {unit}, margin {screen.margin:.0%}); a screen, not a measurement"
    )


def _screened_generation(
    request: WorkerRequest,
    batch: int,
    generated: int,
    runs: list[float],
    memory: dict[str, Any],
    effective: dict[str, Any],
    first_call: float,
    lengths: list[int],
    reason: str,
) -> Measured:
    metrics: dict[str, Any] = {**memory["metrics"], "repeats": len(runs)}
    if runs:
        seconds = runs[0]
        metrics.update(latency_p50_ms=seconds * 1e3, throughput_tokens_per_s=batch * generated / seconds)
    details = {
        "e2e_ms": [round(t * 1e3, 3) for t in runs],
        "first_call_seconds": first_call,
        "generated_tokens": generated,
        "prompt_lengths": lengths,
        "screen": request.screen.to_dict() if request.screen else None,
        **memory["details"],
    }
    return Measured(metrics, effective, details, screened=reason)


# -- encoders -------------------------------------------------------------------------------------


def measure_encoder(model: Any, request: WorkerRequest, batch: int, probe: GpuMemoryProbe | None) -> Measured:
    inputs, lengths = batch_inputs(model, batch, request, left=False)

    def forward() -> Any:
        with torch.no_grad():
            return model(**inputs)

    with memory_pass(model, probe) as memory:
        first_call = settle(lambda: timed(forward)[0], request.warmup, request.target_spread)[0]
    screened = screen_memory(request, memory["metrics"])
    runs: list[float] = []
    with HostLoad(probe, model_gpus(model) if probe is not None else None) as host:
        if screened is None and request.screen is not None and request.screen.beat is not None:
            seconds, _ = timed(forward)
            runs.append(seconds)
            screened = screen_timing(request, batch / seconds, seconds * 1e3)
        if screened is None:
            times, capped = repeat(forward, request, runs)
    if screened is not None:
        metrics = {**memory["metrics"], "repeats": len(runs)}
        if runs:
            metrics.update(latency_p50_ms=runs[0] * 1e3, sequences_per_s=batch / runs[0])
        details = {
            "forward_ms": [round(t * 1e3, 3) for t in runs],
            "first_call_seconds": first_call,
            "prompt_lengths": lengths,
            "screen": request.screen.to_dict() if request.screen else None,
            **memory["details"],
        }
        return Measured(metrics, {}, details, screened=screened)
    p50 = percentile(times, 50)
    metrics = {
        "latency_p50_ms": p50 * 1e3,
        "latency_p90_ms": percentile(times, 90) * 1e3,
        "latency_spread": spread(times),
        "repeats": len(times),
        "sequences_per_s": batch / p50,
        "compile_seconds": max(0.0, first_call - p50) if request.candidate.attn == "flex_attention" else None,
        **memory["metrics"],
    }
    details = {
        "forward_ms": [round(t * 1e3, 3) for t in times],
        "first_call_seconds": first_call,
        "capped": capped,
        "prompt_lengths": lengths,
        "padding_share": 1 - sum(lengths) / (batch * request.workload.prompt_tokens),
        "machine": host.result,
        **memory["details"],
    }
    return Measured(metrics, {}, details)


def measure_batch(model: Any, request: WorkerRequest, batch: int, probe: GpuMemoryProbe | None) -> Measured:
    if request.task == "text-generation":
        return measure_generation(model, request, batch, probe)
    return measure_encoder(model, request, batch, probe)
