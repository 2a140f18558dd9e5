"""The TopK training step's sparse kernels: compiled from C on CPU, torch elsewhere.

On a 2-core CPU, ``torch.topk`` over a ``[1,024, 4,608]`` batch of pre-activations takes ≈7 ms
(about 3 ns per value and thread) and autograd's ``embedding_bag`` backward ≈9 ms, against ≈2.6 ms
for the step's one dense matmul. ``native_topk.c`` and ``native_grads.c`` do that work in a few ms:

* :func:`topk_indices` / :func:`bias_topk` — each row's ``k`` largest columns, in increasing
  order: the blocks of 16 values whose maximum reaches the k-th largest block maximum hold them
  all, and bisection on order-preserving integer keys finds that threshold and the final ``k``
  with vectorised counting passes (AVX-512 where the CPU has it: keys, block maxima and the
  candidates' compress-stores, in one pass). ``bias_topk`` also adds the encoder bias and rescales;
* :func:`topk_mask` — the same choice as a boolean mask (AuxK's dead latents);
* :func:`decode_rows` — a sparse decoder's output, squared error and the gradient at each
  chosen activation, row by row while its ``k`` decoder rows are in cache;
* :func:`sparse_outer` — the decoder's and the encoder's weight gradients, ``Sᵀ A`` and
  ``Bᵀ S`` for the sparse activation matrix ``S``, in one pass over the latents (128 columns
  summed in registers at a time, written past the caches), with AuxK's rows and columns for the
  dead latents added, and each latent's sum of squares (the gradient norm's parts);
* :func:`aux_residual` — AuxK's residual, its loss and its gradient in one pass.

Each has a torch equivalent, used for other devices and dtypes (GPUs), with ``FAITHFUL_NATIVE=0``,
or when no C compiler is found (with a warning that says so). Both give the same choices and the
same numbers up to fp32 summation order (``tests/unit/test_native.py``). The library is compiled
once per source, compiler and CPU with ``$CC`` (default ``cc``; it needs OpenMP, as gcc has),
``-O3 -march=native``, into ``$FAITHFUL_NATIVE_CACHE`` (default ``~/.cache/faithful``), by an
atomic rename. Every kernel gives the same bits for any thread count.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("native_topk.c", "native_grads.c"))
HEADER = Path(__file__).with_name("native.h")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
_lib: ctypes.CDLL | bool | None = None  # False: could not be built (warned once)


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$FAITHFUL_NATIVE_CACHE`` or ``~/.cache/faithful``."""
    env = os.environ.get("FAITHFUL_NATIVE_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "faithful"


def _cpu_id() -> bytes:
    """The first CPU's model and features (x86 and Arm lines): ``-march=native`` code is only
    valid on such a CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        info = platform.processor()
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part", "CPU architecture")
    return "\n".join(line for line in info.splitlines() if line.startswith(keys)).encode()


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None when disabled or not buildable."""
    global _lib
    if _lib is None:
        _lib = False
        if os.environ.get("FAITHFUL_NATIVE", "1") != "0":
            try:
                _lib = _load(_build())
            except (OSError, subprocess.SubprocessError) as err:
                detail = getattr(err, "stderr", None) or ""
                detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
                detail = (detail.strip().splitlines() or [str(err)])[-1]
                warnings.warn(f"faithful could not compile its CPU kernels ({detail}); "
                              "the SAE training step uses torch's operations instead: the same results, "
                              "slower (benchmarks/training.py compares them). Install gcc (or set CC to a C "
                              "compiler with OpenMP), or set FAITHFUL_NATIVE=0 to choose torch's operations "
                              "without this warning.", RuntimeWarning, stacklevel=3)
    return _lib or None


def _build() -> Path:
    cc = os.environ.get("CC", "cc")
    sources = b"\0".join(f.read_bytes() for f in (*SOURCES, HEADER))
    key = hashlib.sha256(b"\0".join([sources, " ".join((cc,) + FLAGS).encode(),
                                     platform.machine().encode(), _cpu_id()])).hexdigest()[:16]
    path = cache_dir() / f"native-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # written whole, then renamed
            out = Path(tmp) / path.name
            subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", str(out), "-lm"], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(out, path)
    return path


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.topk_rows.argtypes = [p, i64, i64, i64, i32, p, i32]
    lib.topk_mask.argtypes = [p, i64, i64, i32, p, i32]
    lib.bias_topk.argtypes = [p, i32, p, p, i64, i64, i32, p, p, p, i64, p, i32]
    lib.decode_rows.argtypes = [p, p, p, p, p, i64, i32, i64, ctypes.c_float, p, p, p, i64, p, i32]
    lib.sparse_outer.argtypes = [p, p, p, i64, i32, i64, p, p, i32, i64, i64, p, i64, p, p, i32, p, p, p, p, p, p, p,
                                 i32]
    lib.aux_residual.argtypes = [p, i32, p, p, i64, i64, ctypes.c_float, p, p, i32]
    for fn in (lib.topk_rows, lib.topk_mask, lib.bias_topk, lib.decode_rows, lib.sparse_outer, lib.aux_residual):
        fn.restype = None
    return lib


def _native(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library, if every tensor is a contiguous CPU tensor of fp32 (values) or int64 (indices)."""
    if all(t.device.type == "cpu" and t.is_contiguous() and t.dtype in (torch.float32, torch.int64)
           for t in tensors):
        return library()
    return None


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _shape(name: str, t: torch.Tensor, shape) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, not {tuple(t.shape)}")


def _indices(name: str, idx: torch.Tensor, n: int) -> None:
    """int64 and within 0..n-1: the kernels index memory with them."""
    if idx.dtype != torch.int64:
        raise ValueError(f"{name} must be int64 indices, not {idx.dtype}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{name} must lie in 0..{n - 1}, not {int(idx.min())}..{int(idx.max())}")


def _k(k: int, n: int) -> None:
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n} for {n} columns, not {k}")
    if n >= 2**31:  # the kernels keep column indices in int32
        raise ValueError(f"rows of {n} columns are longer than the top-k kernels take (2^31)")


def topk_indices(h: torch.Tensor, k: int) -> torch.Tensor:
    """``[rows, k]`` int64: the columns of each row's ``k`` largest values of ``h`` ``[rows, n]``,
    in increasing order (NaN ranks highest, as in ``torch.topk``)."""
    _k(k, h.shape[1])
    if h.dtype == torch.float32 and h.stride(1) == 1 and h.device.type == "cpu" and (lib := library()):
        out = torch.empty(h.shape[0], k, dtype=torch.int64)
        lib.topk_rows(_p(h), h.shape[0], h.shape[1], h.stride(0), k, _p(out), torch.get_num_threads())
        return out
    return h.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


def topk_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """``[rows, n]`` bool: True at each row's ``k`` largest values of ``v`` (NaN largest)."""
    _k(k, v.shape[1])
    if v.dtype == torch.float32 and (lib := _native(v)):
        mask = torch.empty(v.shape, dtype=torch.bool)
        lib.topk_mask(_p(v), v.shape[0], v.shape[1], k, _p(mask), torch.get_num_threads())
        return mask
    return torch.zeros_like(v, dtype=torch.bool).scatter_(1, v.topk(k, dim=1, sorted=False).indices, True)


def bias_topk(xw: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None, k: int, *,
              out: torch.Tensor | None = None, cols: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`topk_indices` of ``h = (xw + bias) * scale`` (fp32; no ``scale``: 1), in one pass over
    ``xw`` ``[rows, n]`` (bf16 or fp32), and ``(xw + bias)[:, cols]`` (fp32 ``[rows, len(cols)]``,
    before the scale; None without ``cols``). ``h`` is written into ``out`` if given."""
    rows, n = xw.shape
    _k(k, n)
    for name, t, shape in (("bias", bias, (n,)), ("scale", scale, (n,)), ("out", out, (rows, n))):
        if t is not None:
            _shape(name, t, shape)
    if cols is not None:
        cols = cols.contiguous()
        _indices("cols", cols, n)
    extra = tuple(t for t in (scale, out) if t is not None)
    if (xw.dtype in (torch.bfloat16, torch.float32) and bias.dtype == torch.float32
            and all(t.dtype == torch.float32 for t in extra) and xw.device.type == "cpu"
            and xw.is_contiguous() and (lib := _native(bias, *extra, *(() if cols is None else (cols,))))):
        idx = torch.empty(xw.shape[0], k, dtype=torch.int64)
        m = 0 if cols is None else len(cols)
        picked = torch.empty(xw.shape[0], m, dtype=torch.float32) if cols is not None else None
        lib.bias_topk(_p(xw), int(xw.dtype == torch.bfloat16), _p(bias), None if scale is None else _p(scale),
                      xw.shape[0], xw.shape[1], k, None if out is None else _p(out), _p(idx),
                      None if cols is None else _p(cols), m, None if picked is None else _p(picked),
                      torch.get_num_threads())
        return idx, picked
    hidden = torch.add(xw.to(torch.float32), bias) if out is None else out.copy_(xw).add_(bias)
    picked = None if cols is None else hidden.index_select(1, cols)
    if scale is not None:
        hidden.mul_(scale)
    return topk_indices(hidden, k), picked


def _rows(t: torch.Tensor) -> bool:
    """Rows may be strided (views of a wider buffer), their elements not, and may not overlap."""
    return t.dim() == 2 and t.stride(1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1])


def decode_rows(idx: torch.Tensor, a: torch.Tensor, W: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                scale: float, g: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A TopK decoder's forward pass and the first step of its backward pass, for ``idx`` and
    ``a`` ``[rows, k]`` (latents and ReLU'd activations), ``W`` ``[n, d]``, ``bias`` ``[d]`` and
    targets ``x`` ``[rows, d]``. Returns ``out = bias + Σⱼ a[:, j] W[idx[:, j]]``, ``sq`` ``[rows]``
    (``|out - x|²``), ``g = scale · (out - x)`` (written into ``g`` if given) and ``dots``
    ``[rows, k]``: ``⟨g[i], W[idx[i, j]]⟩`` where ``a[i, j] > 0``, else 0. With ``scale = 2 / rows``,
    ``g`` and ``dots`` are the MSE's gradients at the output and at the activations before their ReLU."""
    idx, a, W, bias, x = (t.contiguous() for t in (idx, a, W, bias, x))
    (rows, k), (n, d) = idx.shape, W.shape
    _indices("idx", idx, n)
    for name, t, shape in (("a", a, (rows, k)), ("bias", bias, (d,)), ("x", x, (rows, d))):
        _shape(name, t, shape)
    g = torch.empty_like(x) if g is None else g
    _shape("g", g, (rows, d))
    if (a.dtype == W.dtype == bias.dtype == x.dtype == g.dtype == torch.float32 and _rows(g)
            and g.device.type == "cpu" and (lib := _native(idx, a, W, bias, x))):
        out, sq, dots = torch.empty_like(x), x.new_empty(x.shape[0]), a.new_empty(a.shape)
        lib.decode_rows(_p(idx), _p(a), _p(W), _p(bias), _p(x), idx.shape[0], idx.shape[1], x.shape[1],
                        float(scale), _p(out), _p(sq), _p(g), g.stride(0), _p(dots), torch.get_num_threads())
        return out, sq, g, dots
    with torch.enable_grad():  # embedding_bag's own backward gives ⟨g, W[idx]⟩ without a [rows, n] product
        w = a.detach().to(W.dtype).requires_grad_()
        out = torch.nn.functional.embedding_bag(idx, W.detach(), per_sample_weights=w, mode="sum") + bias
        err = out.detach() - x
        g.copy_(err * scale)
        (dots,) = torch.autograd.grad(out, w, grad_outputs=g)
    return out.detach(), err.pow(2).sum(-1), g, dots * (a > 0)


def sparse_outer(idx: torch.Tensor, a: torch.Tensor, b: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 n: int, out: tuple[torch.Tensor, torch.Tensor] | None = None,
                 latent_sq: torch.Tensor | None = None,
                 extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Sₐᵀ A, Bᵀ S_b, sq)``, ``[n, d]``, ``[d, n]`` and float64 ``[2]`` (their sums of squares,
    for the gradient's norm), where ``Sₐ`` is the ``[rows, n]`` matrix
    holding ``a`` at ``idx`` (``[rows, k]``, distinct per row) and zeros elsewhere, and ``S_b``
    likewise ``b``: a sparse decoder's and encoder's weight gradients, in their layouts.
    ``A`` and ``B`` ``[rows, d]`` (both fp32 or both bf16) may be two halves of one ``[rows, 2d]``
    buffer: the CPU kernel then reads one contiguous row per entry (15 % faster). The CPU kernel
    sums in fp32; torch's path, in bf16 for bf16 inputs, rounds as autocast does. ``out``: two
    fp32 tensors to write into. ``latent_sq``: a float64 ``[2, n]`` tensor that receives each
    latent's share of ``sq`` (its row of the first result, its column of the second).

    ``extra = (ids, G, H)`` adds ``G`` ``[m, d]`` to the first result's rows ``ids`` (``m``
    distinct latents: checked on CPU) and ``H`` ``[m, d]`` to the second's columns ``ids``
    (``G`` and ``H`` both fp32 or both bf16, added in fp32), before the squares are taken: AuxK's
    share of the gradients, written in the same pass."""
    idx, a, b = (t.contiguous() for t in (idx, a, b))
    if not (_rows(A) and _rows(B) and A.stride(0) == B.stride(0)):
        A, B = A.contiguous(), B.contiguous()
    rows, d = A.shape
    _indices("idx", idx, n)
    for name, t, shape in (("idx", idx, (rows, idx.shape[1])), ("a", a, idx.shape), ("b", b, idx.shape),
                           ("B", B, (rows, d))):
        _shape(name, t, shape)
    outs = out or (A.new_empty(n, d, dtype=torch.float32), B.new_empty(d, n, dtype=torch.float32))
    _shape("out[0]", outs[0], (n, d))
    _shape("out[1]", outs[1], (d, n))
    lat = latent_sq if latent_sq is not None else torch.empty(2, n, dtype=torch.float64, device=A.device)
    _shape("latent_sq", lat, (2, n))
    if lat.dtype != torch.float64 or lat.device != A.device:
        raise ValueError(f"latent_sq must be float64 on {A.device}, not {lat.dtype} on {lat.device}")
    ids, G, H = extra if extra is not None else (idx.new_empty(0), outs[0][:0], outs[0][:0])
    ids, G, H = ids.contiguous(), G.contiguous(), H.contiguous()
    _indices("ids", ids, n)
    _shape("G", G, (ids.numel(), d))
    _shape("H", H, (ids.numel(), d))
    sq = torch.empty(2, dtype=torch.float64, device=A.device)
    if (A.shape == B.shape and a.dtype == b.dtype == torch.float32 and A.dtype == B.dtype
            and A.dtype in (torch.float32, torch.bfloat16) and A.device.type == B.device.type == "cpu"
            and G.dtype == H.dtype and G.dtype in (torch.float32, torch.bfloat16)
            and G.device.type == H.device.type == "cpu"
            and all(o.dtype == torch.float32 for o in outs) and lat.is_contiguous() and lat.device.type == "cpu"
            and (lib := _native(idx, a, b, ids, *outs))):
        if ids.unique().numel() != ids.numel():  # a repeated latent would take only one of its rows
            raise ValueError("extra's ids must be distinct")
        start, order = torch.empty(n + 1, dtype=torch.int64), torch.empty(idx.numel(), dtype=torch.int64)
        pos = torch.empty(n, dtype=torch.int64)
        lib.sparse_outer(_p(idx), _p(a), _p(b), rows, idx.shape[1], n, _p(A), _p(B), int(A.dtype == torch.bfloat16),
                         d, A.stride(0), _p(ids), ids.numel(), _p(G), _p(H), int(G.dtype == torch.bfloat16),
                         _p(outs[0]), _p(outs[1]), _p(sq), _p(lat), _p(start), _p(order), _p(pos),
                         torch.get_num_threads())
        return (*outs, sq)
    S_a = A.new_zeros(rows, n).scatter_(1, idx, a.to(A.dtype))
    S_b = B.new_zeros(rows, n).scatter_(1, idx, b.to(B.dtype))
    outs[0].copy_(S_a.T @ A)
    outs[1].copy_(B.T @ S_b)
    if ids.numel():
        outs[0].index_add_(0, ids, G.to(outs[0].dtype))
        outs[1].index_add_(1, ids, H.T.to(outs[1].dtype))
    lat[0].copy_(outs[0].double().pow(2).sum(1))
    lat[1].copy_(outs[1].double().pow(2).sum(0))
    return (*outs, sq.copy_(lat.sum(1)))


def aux_residual(R: torch.Tensor, sae_out: torch.Tensor, x: torch.Tensor, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """AuxK's residual ``diff = R + (sae_out - x)`` (``R`` ``[rows, d]`` fp32 or bf16, the dead
    latents' reconstruction; ``sae_out``, ``x`` fp32) as ``(diff * scale in R's dtype, float64
    [rows] sums of diff² per row)``: its gradient and its loss, in one pass. ``diff`` and the
    gradient round as ``(R.float() + (sae_out - x)) * scale`` does in torch (NaN payloads apart)."""
    _shape("sae_out", sae_out, R.shape)
    _shape("x", x, R.shape)
    rows, d = R.shape
    R, sae_out, x = R.contiguous(), sae_out.contiguous(), x.contiguous()
    if (R.dtype in (torch.float32, torch.bfloat16) and R.device.type == "cpu"
            and sae_out.dtype == x.dtype == torch.float32 and (lib := _native(sae_out, x))):
        g, row_sq = torch.empty_like(R), torch.empty(rows, dtype=torch.float64)
        lib.aux_residual(_p(R), int(R.dtype == torch.bfloat16), _p(sae_out), _p(x), rows, d, scale, _p(g),
                         _p(row_sq), torch.get_num_threads())
        return g, row_sq
    diff = R.to(sae_out.dtype) + (sae_out - x)
    return (diff * scale).to(R.dtype), diff.double().pow(2).sum(-1)
