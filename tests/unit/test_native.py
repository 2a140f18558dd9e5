"""The compiled CPU kernels against torch's own operations, and the build's failure modes."""
import warnings

import pytest
import torch

from faithful import native


def _reference_topk(h, k):
    return h.topk(k, dim=1).indices.sort(dim=1).values


@pytest.mark.parametrize("n, k", [(4608, 32), (4610, 32), (100, 3), (400, 288), (2304, 288), (17, 5), (40, 3),
                                  (64, 64), (7, 1)])
def test_topk_matches_torch(kernels, n, k):
    """Long rows (the blocks-of-16 path, with and without a tail past the last 16), short rows
    and k = n (the whole-row path)."""
    h = torch.randn(50, n, generator=torch.Generator().manual_seed(n + k))
    assert torch.equal(native.topk_indices(h, k), _reference_topk(h, k))
    mask = native.topk_mask(h, k)
    assert torch.equal(mask, torch.zeros_like(mask).scatter_(1, _reference_topk(h, k), True))


def test_topk_edge_values(kernels):
    """NaN ranks highest (as in torch.topk), infinities in order, and equal values are all
    valid picks: exactly k of them, the largest first. A strided view is read as such."""
    nan, inf = float("nan"), float("inf")
    row = torch.cat([torch.tensor([1.0, 2.0, 2.0, 2.0, nan, -inf, inf, -5.0]), torch.zeros(312)])
    h = torch.stack([row, -row, torch.zeros(320)])
    idx = native.topk_indices(h, 3)
    assert idx[0, 1:].tolist() == [4, 6] and idx[0, 0] in (1, 2, 3)  # NaN, +inf and one 2.0
    assert idx[1].tolist() == [4, 5, 7]  # NaN (sign bit set), +inf, 5.0
    assert torch.equal(h[2, idx[2]], torch.zeros(3)) and len(set(idx[2].tolist())) == 3
    ones = native.topk_indices(torch.tensor([[2.0, 1.0, 2.0, 2.0]]), 2)
    assert ones.tolist()[0] in ([0, 2], [0, 3], [2, 3])
    wide = torch.randn(8, 200)
    assert torch.equal(native.topk_indices(wide[:, :100], 10), _reference_topk(wide[:, :100], 10))
    with pytest.raises(ValueError, match="k must be in 1..4"):
        native.topk_indices(torch.zeros(2, 4), 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("n", [4608, 4610])
def test_bias_topk_rounds_as_torch_does(kernels, dtype, scaled, n):
    """n = 4610 leaves a tail past the last whole 16 columns."""
    gen = torch.Generator().manual_seed(0)
    xw = torch.randn(40, n, generator=gen).to(dtype)
    bias, scale = torch.randn(n, generator=gen), torch.rand(n, generator=gen) + 0.5
    hidden = (xw.float() + bias) * (scale if scaled else 1.0)
    cols = torch.tensor([3, 4000, 17])
    out = torch.empty(40, n)
    idx, picked = native.bias_topk(xw, bias, scale if scaled else None, 32, out=out, cols=cols)
    assert torch.equal(out, hidden)
    assert torch.equal(idx, _reference_topk(hidden, 32))
    assert torch.equal(picked, (xw.float() + bias)[:, cols])  # before the scale
    idx2, none = native.bias_topk(xw, bias, scale if scaled else None, 32)
    assert torch.equal(idx2, idx) and none is None


@pytest.mark.parametrize("d", [40, 136, 152])
def test_decode_rows_is_the_decoder_and_its_gradient(kernels, d):
    """Against autograd on the dense decoder: output, squared error, ∂mse/∂out and ∂mse/∂a
    (zero where the activation is zero); g may be a strided half of a wider buffer. With AVX-512,
    d = 136 is a block of 128 columns (done in registers) and a tail, d = 152 such a block and
    one of 16 and a tail, d = 40 blocks of 16 and a tail."""
    gen = torch.Generator().manual_seed(1)
    rows, n, k = 30, 300, 6
    idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(rows)]).sort(1).values
    a = torch.randn(rows, k, generator=gen).relu().requires_grad_()
    W, bias, x = torch.randn(n, d, generator=gen), torch.randn(d, generator=gen), torch.randn(rows, d, generator=gen)
    dense = torch.zeros(rows, n).scatter(1, idx, a)
    ref_out = dense @ W + bias
    mse = (ref_out - x).pow(2).sum(-1).mean()
    (g_a,) = torch.autograd.grad(mse, a)
    buf = torch.zeros(rows, 2 * d)
    out, sq, g, dots = native.decode_rows(idx, a.detach(), W, bias, x, 2 / rows, g=buf[:, :d])
    torch.testing.assert_close(out, ref_out.detach())
    torch.testing.assert_close(sq, (ref_out - x).pow(2).sum(-1).detach())
    torch.testing.assert_close(buf[:, :d], (2 / rows) * (ref_out - x).detach())
    assert g.data_ptr() == buf.data_ptr() and buf[:, d:].eq(0).all()
    torch.testing.assert_close(dots, g_a * (a > 0))
    assert dots[a == 0].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [333, 320])
@pytest.mark.parametrize("d", [24, 144])
def test_sparse_outer_is_both_weight_gradients(kernels, dtype, n, d):
    """Sₐᵀ A and Bᵀ S_b against dense fp32 matrices, for separate inputs and for two halves of
    one buffer, fp32 or bf16 (summed in fp32); latents that no row chose get zeros (over stale
    values in ``out``). n = 333 ends in a part tile; 320 is all whole tiles, whose columns are
    streamed to memory when aligned. With bf16 and AVX-512, d = 144 sums a block of 128 columns
    and one of 16 in registers and streams the first gradient's rows; d = 24 has a tail."""
    gen = torch.Generator().manual_seed(2)
    rows, k = 50, 5
    idx = torch.stack([torch.randperm(n - 20, generator=gen)[:k] for _ in range(rows)])
    a, b = torch.randn(rows, k, generator=gen), torch.randn(rows, k, generator=gen)
    both = torch.randn(rows, 2 * d, generator=gen).to(dtype)
    A, B = both[:, :d], both[:, d:]
    S_a, S_b = torch.zeros(rows, n).scatter(1, idx, a), torch.zeros(rows, n).scatter(1, idx, b)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for inputs in ((A, B), (A.contiguous(), B.contiguous())):
        out = (torch.full((n, d), 9.0), torch.full((d, n), 9.0))
        latent_sq = torch.full((2, n), 9.0, dtype=torch.float64)
        got = native.sparse_outer(idx, a, b, *inputs, n, out=out, latent_sq=latent_sq)
        assert got[0] is out[0] and got[1] is out[1] and out[0].dtype == torch.float32
        torch.testing.assert_close(got[2], torch.stack([o.double().pow(2).sum() for o in out]), rtol=1e-6, atol=0)
        per_latent = torch.stack([out[0].double().pow(2).sum(1), out[1].double().pow(2).sum(0)])
        torch.testing.assert_close(latent_sq, per_latent, rtol=1e-6, atol=0)
        torch.testing.assert_close(latent_sq.sum(1), got[2], rtol=1e-12, atol=0)
        torch.testing.assert_close(out[0], S_a.T @ A.float(), **tol)
        torch.testing.assert_close(out[1], B.float().T @ S_b, **tol)
        assert out[0][n - 20:].eq(0).all() and out[1][:, n - 20:].eq(0).all()
    # both gradients in unaligned buffers: whole tiles and rows stored without streaming
    unaligned = torch.full((d * n + 1,), 9.0)[1:].view(d, n), torch.full((n * d + 1,), 9.0)[1:].view(n, d)
    native.sparse_outer(idx, a, b, A, B, n, out=(unaligned[1], unaligned[0]))
    torch.testing.assert_close(unaligned[0], B.float().T @ S_b, **tol)
    torch.testing.assert_close(unaligned[1], S_a.T @ A.float(), **tol)
    with pytest.raises(ValueError, match="latent_sq must be float64 on cpu"):
        native.sparse_outer(idx, a, b, A, B, n, latent_sq=torch.empty(2, n, dtype=torch.float64, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [24, 144])
def test_sparse_outer_adds_extra_rows_before_the_squares(kernels, dtype, d):
    """``extra = (ids, G, H)``: G into rows ``ids`` of the first gradient and H into the same
    columns of the second, the same bits as adding them afterwards in fp32; the squares include
    them. Other rows and columns are untouched. d = 144 (a block of 128 columns summed in
    registers, then 16) streams the first gradient's rows (whole, aligned rows); d = 24 does not."""
    gen = torch.Generator().manual_seed(5)
    rows, n, k = 50, 300, 5
    idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(rows)])
    a, b = torch.randn(rows, k, generator=gen), torch.randn(rows, k, generator=gen)
    both = torch.randn(rows, 2 * d, generator=gen).bfloat16()
    A, B = both[:, :d], both[:, d:]
    ids = torch.randperm(n, generator=gen)[:150]
    G, H = torch.randn(150, d, generator=gen).to(dtype), torch.randn(150, d, generator=gen).to(dtype)
    wantA, wantBt, _ = native.sparse_outer(idx, a, b, A, B, n)
    wantA[ids] += G.float()
    wantBt[:, ids] += H.float().T
    latent_sq = torch.empty(2, n, dtype=torch.float64)
    gotA, gotBt, sq = native.sparse_outer(idx, a, b, A, B, n, latent_sq=latent_sq, extra=(ids, G, H))
    assert torch.equal(gotA, wantA) and torch.equal(gotBt, wantBt)
    per_latent = torch.stack([wantA.double().pow(2).sum(1), wantBt.double().pow(2).sum(0)])
    torch.testing.assert_close(latent_sq, per_latent, rtol=1e-6, atol=0)
    torch.testing.assert_close(sq, per_latent.sum(1), rtol=1e-6, atol=0)
    if kernels != "torch":  # a repeated latent would take only one of its rows
        with pytest.raises(ValueError, match="extra's ids must be distinct"):
            native.sparse_outer(idx, a, b, A, B, n, extra=(torch.tensor([3, 3]), G[:2], H[:2]))
    with pytest.raises(ValueError, match=r"ids must lie in 0\.\.299"):
        native.sparse_outer(idx, a, b, A, B, n, extra=(torch.tensor([n]), G[:1], H[:1]))
    with pytest.raises(ValueError, match="H must have shape"):
        native.sparse_outer(idx, a, b, A, B, n, extra=(ids, G, H[:3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aux_residual_is_torchs_rounding_in_one_pass(kernels, dtype):
    """The gradient bit for bit as torch's ``((R.float() + (sae_out - x)) * scale).to(R.dtype)``
    (a row length that is not a multiple of 16, NaN included), the per-row squares to float
    rounding; mismatched shapes refused."""
    gen = torch.Generator().manual_seed(7)
    rows, d = 37, 70
    R = torch.randn(rows, d, generator=gen).to(dtype)
    sae_out, x = torch.randn(rows, d, generator=gen), torch.randn(rows, d, generator=gen)
    x[3, 5] = float("nan")
    g, row_sq = native.aux_residual(R, sae_out, x, 0.37)
    diff = R.float() + (sae_out - x)
    want_g = (diff * 0.37).to(dtype)
    assert g.dtype == dtype and torch.equal(g.isnan(), want_g.isnan()) and g.isnan().sum() == 1
    assert torch.equal(g[~want_g.isnan()], want_g[~want_g.isnan()])
    want = diff.double().pow(2).sum(-1)
    torch.testing.assert_close(row_sq[:3], want[:3], rtol=1e-6, atol=0)
    assert row_sq[3].isnan() and torch.allclose(row_sq[4:], want[4:], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="x must have shape"):
        native.aux_residual(R, sae_out, x[:, :5], 1.0)
    # integer inputs are torch's to promote, never read as float bits
    g_int, _ = native.aux_residual(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.int64), 1.0)
    assert g_int.eq(-1).all()


def _every_kernel() -> tuple[torch.Tensor, ...]:
    """Every compiled kernel's outputs on fixed inputs, through both of their paths where they
    have two (fp32 and bf16; blocks of 128 and 16 columns and a tail; extra rows or none)."""
    if native.library() is None:
        pytest.fail("faithful.native could not be compiled")
    gen = torch.Generator().manual_seed(3)
    rows, n, d, k = 256, 1030, 152, 16
    xw = torch.randn(rows, n, generator=gen).bfloat16()
    bias, W, x = torch.randn(n, generator=gen), torch.randn(n, d, generator=gen), torch.randn(rows, d, generator=gen)
    scale = torch.rand(n, generator=gen) + 0.5
    idx, picked = native.bias_topk(xw, bias, scale, k, cols=torch.arange(0, n, 7))
    mask = native.topk_mask(xw.float()[:, :300], 40)
    a = torch.rand(rows, k, generator=gen)
    out, sq, g, dots = native.decode_rows(idx, a, W, bias[:d], x, 0.5)
    results = [idx, picked, mask, out, sq, dots]
    ids = torch.arange(0, n, 3)
    for dtype in (torch.float32, torch.bfloat16):
        lat = torch.empty(2, n, dtype=torch.float64)
        G, H = (torch.randn(len(ids), d, generator=gen).to(dtype) for _ in range(2))
        extra = (ids, G, H)
        results += [*native.sparse_outer(idx, a, dots, g.to(dtype), x.to(dtype), n, latent_sq=lat, extra=extra), lat]
        results += native.aux_residual(out.to(dtype), out, x, 0.5)
    return tuple(results)


def test_kernels_are_deterministic_across_thread_counts():
    """Same bits with 1 and 2 threads: rows and latents are split, sums keep their order."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _every_kernel()
        torch.set_num_threads(2)
        two = _every_kernel()
    finally:
        torch.set_num_threads(before)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x, y)


def test_the_portable_build_gives_the_same_bits(portable_build):
    """Compiled without AVX-512, the kernels' portable loops give the same bits as the AVX-512
    paths: the same sums in the same order (with multiply-adds fused, as gcc does by default)."""
    fast = _every_kernel()
    portable_build()
    portable = _every_kernel()
    for x, y in zip(fast, portable, strict=True):
        assert torch.equal(x, y)


def test_a_missing_compiler_warns_and_falls_back(monkeypatch, tmp_path):
    """No compiler: one warning that names the fix, then torch's operations (same results)."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("FAITHFUL_NATIVE_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="could not compile its CPU kernels.*Install gcc"):
        assert native.library() is None
    h = torch.randn(4, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert torch.equal(native.topk_indices(h, 5), _reference_topk(h, 5))


def test_faithful_native_0_chooses_torch_quietly(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("FAITHFUL_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None


def test_the_library_is_built_once_and_cached(monkeypatch, tmp_path):
    """Built into FAITHFUL_NATIVE_CACHE by an atomic rename; a second process reuses the file."""
    monkeypatch.setenv("FAITHFUL_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is not None
    (built,) = tmp_path.glob("native-*.so")
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is not None
    assert [p.name for p in tmp_path.iterdir()] == [built.name] and built.stat().st_mtime_ns == stamp


def test_bad_inputs_are_refused_before_reaching_the_kernels(kernels):
    """The kernels index memory with these: wrong dtypes, shapes or out-of-range indices are
    ValueErrors that name the argument, on either path."""
    rows, n, d, k = 4, 50, 8, 3
    idx = torch.tensor([[0, 1, 2]] * rows)
    a, W, x = torch.rand(rows, k), torch.randn(n, d), torch.randn(rows, d)
    with pytest.raises(ValueError, match="idx must be int64"):
        native.decode_rows(idx.float(), a, W, torch.zeros(d), x, 1.0)
    with pytest.raises(ValueError, match=r"idx must lie in 0\.\.49"):
        native.decode_rows(idx + 48, a, W, torch.zeros(d), x, 1.0)
    with pytest.raises(ValueError, match="bias must have shape"):
        native.decode_rows(idx, a, W, torch.zeros(d + 1), x, 1.0)
    with pytest.raises(ValueError, match="g must have shape"):
        native.decode_rows(idx, a, W, torch.zeros(d), x, 1.0, g=torch.empty(rows, d - 1))
    with pytest.raises(ValueError, match=r"idx must lie in 0\.\.9"):
        native.sparse_outer(idx + 8, a, a, x, x, 10)
    with pytest.raises(ValueError, match=r"out\[1\] must have shape"):
        native.sparse_outer(idx, a, a, x, x, n, out=(torch.empty(n, d), torch.empty(n, d)))
    with pytest.raises(ValueError, match="cols must lie"):
        native.bias_topk(torch.randn(rows, n), torch.zeros(n), None, k, cols=torch.tensor([n]))
    with pytest.raises(ValueError, match="scale must have shape"):
        native.bias_topk(torch.randn(rows, n), torch.zeros(n), torch.ones(n - 1), k)


def test_bias_topk_is_fp32_whatever_the_default_dtype(kernels):
    before = torch.get_default_dtype()
    xw, bias = torch.randn(3, 64, dtype=torch.float32), torch.randn(64, dtype=torch.float32)
    try:
        torch.set_default_dtype(torch.float64)
        _, picked = native.bias_topk(xw, bias, None, 4, cols=torch.tensor([5, 9]))
    finally:
        torch.set_default_dtype(before)
    assert picked.dtype == torch.float32 and torch.equal(picked, (xw + bias)[:, [5, 9]])


def test_minus_zero_ties_with_zero(kernels):
    """-0.0 == 0.0: a tie, so the earlier column wins, as for any equal values."""
    h = torch.tensor([[-0.0, 0.0, -1.0] + [-2.0] * 61])
    assert native.topk_indices(h, 1).tolist() in ([[0]], [[1]])
    if kernels != "torch":
        assert native.topk_indices(h, 1).tolist() == [[0]]
