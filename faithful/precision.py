"""One precision policy: whether the language model (and an SAE's encoder product) runs in bf16 or fp32.

bf16 halves the bytes a matrix product reads, but whether it is *faster* depends on the
processor: CPUs with AMX run bf16 products several times faster than fp32, CPUs with
AVX-512-BF16 alone about as fast or slower, and CPUs with AVX2 only emulate them hundreds of
times slower. So the choice is measured, never assumed:

* CUDA: bf16 where the GPU supports it (``torch.cuda.is_bf16_supported()``), else fp32;
* CPU: fp32 unless the CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` on x86, ``bf16``
  on Arm); where it has them, a bf16 and an fp32 product of a language model's shape are timed
  once per process (:func:`product_timing`) and bf16 is chosen only if it ran clearly faster
  (:data:`BF16_MARGIN`);
* any other device: fp32.

:func:`choose` is the one place that decides, and every path asks it: Faithful sampling, the
training stream, the SAE optimiser step, reconstruction metrics, probing, fake features and the
feature browser. ``FAITHFUL_PRECISION=auto|fp32|bf16`` overrides the measurement for a whole
process; a function's ``autocast=True``/``False`` keyword overrides both for one call. Asking for
bf16 where it measured slower works, with one warning that says how much slower.

"bf16" means the language model runs under ``torch.autocast(dtype=torch.bfloat16)`` (weights
stay fp32; sampling casts its private copy of the weights) and the SAE's encoder product takes
bf16 inputs, as SAELens's trainer does under autocast. The SAEs' own weights stay fp32.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
"""Accepted values of ``FAITHFUL_PRECISION`` (and of :func:`choose`'s ``requested``)."""
ENV = "FAITHFUL_PRECISION"
PROBE_SHAPE = (256, 576, 1536)
"""``[m, k] @ [k, n]`` timed by :func:`product_timing`: a batch of tokens through an MLP of
SmolLM2-135M's width (0.45 GFLOP)."""
BF16_MARGIN = 1.25
"""``auto`` picks bf16 on a CPU only where its product ran at least this many times as fast as
fp32: near parity fp32 is kept (exact, and the choice cannot flip between processes with the
noise of a shared machine)."""
_warned: set[str] = set()


@dataclass(frozen=True)
class ProductTiming:
    """What :func:`product_timing` measured on one device."""

    device: str
    """The device timed (``cpu``, ``cuda:0`` …)."""
    fp32_gflops: float | None
    """fp32 product rate in GFLOP/s (None: not timed)."""
    bf16_gflops: float | None
    """bf16 product rate in GFLOP/s (None: not timed, e.g. a CPU without bf16 instructions)."""
    bf16_fast: bool
    """Whether ``auto`` picks bf16 here: it ran clearly faster (CPU), or the GPU supports it (CUDA)."""
    reason: str
    """Why, in words."""


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 instruction sets, from ``/proc/cpuinfo``: a subset of ``avx512_bf16``,
    ``amx_bf16`` (x86) and ``bf16`` (Arm). Empty where none is listed or the file is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            words.update(line.split(":", 1)[-1].split())
    return [f for f in ("avx512_bf16", "amx_bf16", "bf16") if f in words]


def _time_products(dtypes, device: torch.device, reps: int = 5) -> dict[torch.dtype, float]:
    """GFLOP/s of a :data:`PROBE_SHAPE` product in each dtype: the best of ``reps`` timings, taken in
    turns after one untimed call each (a first call pays for kernel set-up; turns share any load
    from other processes). A product slower than 0.1 s is timed once: it is slow enough to judge.
    On a CPU the products run on one thread: other processes on the cores slow both dtypes alike
    there, while a two-thread product waits for its slower thread, a wait that differs between kernels."""
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    args = {dt: (a32.to(device, dt), b32.to(device, dt)) for dt in dtypes}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(dt) -> float:
        t = time.perf_counter()
        torch.mm(*args[dt])
        sync()
        return time.perf_counter() - t
    threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.set_num_threads(1)
        with torch.autocast(device.type, enabled=False):
            best = {dt: once(dt) for dt in dtypes}  # set-up calls; kept only for products slower than 0.1 s
            timed = [dt for dt in dtypes if best[dt] < 0.1]
            best.update({dt: float("inf") for dt in timed})
            for _ in range(reps):
                for dt in timed:
                    best[dt] = min(best[dt], once(dt))
    finally:
        torch.set_num_threads(threads)
    return {dt: 2 * m * k * n / t / 1e9 for dt, t in best.items()}


@functools.lru_cache(maxsize=None)
def product_timing(device: str = "cpu") -> ProductTiming:
    """Time a bf16 and an fp32 product on ``device`` once per process (cached).

    On a CPU without bf16 instructions the bf16 product is not timed (it would be emulated); on
    CUDA nothing is timed (the GPU's bf16 support decides)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ProductTiming(str(dev), None, None, ok, f"a GPU {'with' if ok else 'without'} bf16 support")
    if dev.type != "cpu":
        return ProductTiming(str(dev), None, None, False, f"{dev.type}: fp32 unless asked")
    flags = cpu_bf16_flags()
    rates = _time_products((torch.float32, torch.bfloat16) if flags else (torch.float32,), dev)
    fp32, bf16 = rates[torch.float32], rates.get(torch.bfloat16)
    if bf16 is None:
        return ProductTiming("cpu", fp32, None, False, f"a {platform.machine()} CPU without bf16 instructions")
    return ProductTiming("cpu", fp32, bf16, bf16 >= BF16_MARGIN * fp32, f"a CPU with {' and '.join(flags)}")


def _device(device) -> str:
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def requested_precision(requested: str | bool | None = None) -> str:
    """``requested`` as one of :data:`PRECISIONS`: a bool is an ``autocast=`` keyword (True: bf16,
    False: fp32); None reads ``FAITHFUL_PRECISION`` (default ``auto``). Anything else is an error."""
    if isinstance(requested, bool):
        return "bf16" if requested else "fp32"
    source = f"{ENV}={os.environ.get(ENV)!r}" if requested is None else f"precision {requested!r}"
    value = os.environ.get(ENV, "auto") if requested is None else requested
    value = value.strip().lower() if isinstance(value, str) else value
    if value not in PRECISIONS:
        raise ValueError(f"{source} is not a precision faithful knows: use one of {', '.join(PRECISIONS)} "
                         "(auto measures which is faster on this device)")
    return value


def choose(device="cpu", requested: str | bool | None = None) -> str:
    """``"bf16"`` or ``"fp32"``: the precision the language model runs in on ``device``.

    ``requested``: ``True``/``False`` (a function's ``autocast=`` keyword), ``"auto"``, ``"fp32"``,
    ``"bf16"``, or None for ``FAITHFUL_PRECISION`` (default ``auto``: bf16 only where it measured
    faster, see the module docstring). Asking for bf16 where it measured slower warns once.
    """
    want = requested_precision(requested)
    dev = _device(device)
    if want == "fp32":
        return "fp32"
    timing = product_timing(dev)
    if want == "auto":
        return "bf16" if timing.bf16_fast else "fp32"
    if timing.fp32_gflops is not None and not timing.bf16_fast and dev not in _warned:
        _warned.add(dev)
        bf16 = timing.bf16_gflops
        if bf16 is None:  # not timed for auto (no bf16 instructions): time it for the warning
            bf16 = _time_products((torch.bfloat16,), torch.device(dev))[torch.bfloat16]
        fp32 = timing.fp32_gflops
        how = f"{fp32 / bf16:.3g}x slower" if bf16 < fp32 else f"only {bf16 / fp32:.2g}x as fast; auto asks {BF16_MARGIN}x"
        warnings.warn(
            f"bf16 was asked for on {dev}, but there a bf16 matrix product measured {bf16:.3g} GFLOP/s "
            f"against {fp32:.3g} in fp32 ({how}; {timing.reason}). It runs as asked; {ENV}=auto "
            "(or autocast=None) picks the faster one.", RuntimeWarning, stacklevel=2)
    return "bf16"


def dtype(precision: str) -> torch.dtype:
    """The torch dtype of a chosen precision (``"bf16"`` or ``"fp32"``)."""
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def autocast(device, precision: str):
    """bf16 autocast on ``device`` for ``"bf16"``; a context that does nothing for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device or "cpu").type, dtype=dtype(precision))
