"""Tests for python/mhc/reference.py (spec: /work/shared/mhc-spec.md sections 3, 5, 5b, 6).

Gradient checks: every backward is compared with central finite differences in float64 on seeded,
non-zero random data, with |analytic - fd| <= 1e-6 * max|fd| + 1e-9 elementwise.
"""

import zlib

import numpy as np
import pytest

from mhc import reference as R

EPS = 1e-6
LEAD = (2, 3)                     # two leading (token) dims
NS = [1, 2, 4, 8]
CS = [7, 13]                      # odd widths


def rng_for(*key):
    # crc32, not hash(): str hashes are salted per process and the data must be reproducible.
    return np.random.default_rng([20250101, zlib.crc32(repr(key).encode())])


def M_of(n):
    return n * n + 2 * n


def randn(rng, *shape, scale=1.0):
    return rng.normal(0.0, scale, shape)


# --------------------------------------------------------------------------------------------------
# finite-difference machinery
# --------------------------------------------------------------------------------------------------

def fd_grad(loss, args, k, rng, h=1e-6, max_points=300):
    """Central differences of scalar loss(*args) w.r.t. args[k] at up to max_points sampled entries."""
    a = args[k]
    flat_idx = np.arange(a.size)
    if a.size > max_points:
        flat_idx = rng.choice(a.size, max_points, replace=False)
    out = np.empty(len(flat_idx))
    for t, f in enumerate(flat_idx):
        idx = np.unravel_index(f, a.shape)
        plus = [x.copy() for x in args]
        minus = [x.copy() for x in args]
        plus[k][idx] += h
        minus[k][idx] -= h
        out[t] = (loss(*plus) - loss(*minus)) / (2 * h)
    return flat_idx, out


def check_grad(loss, args, k, analytic, rng, rtol=1e-6, atol=1e-9, **kw):
    analytic = np.asarray(analytic)
    assert analytic.shape == args[k].shape, (analytic.shape, args[k].shape)
    idx, num = fd_grad(loss, args, k, rng, **kw)
    got = analytic.reshape(-1)[idx]
    err = np.max(np.abs(got - num))
    tol = rtol * np.max(np.abs(num)) + atol
    assert err <= tol, f"arg {k}: max abs err {err:.3e} > tol {tol:.3e} (max|fd| {np.max(np.abs(num)):.3e})"


# --------------------------------------------------------------------------------------------------
# expand / collapse
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", NS)
def test_expand_collapse_identities(n):
    rng = rng_for("ec", n)
    C = 7
    h = randn(rng, *LEAD, C)
    x = R.expand(h, n)
    assert x.shape == LEAD + (n, C)
    for i in range(n):
        np.testing.assert_array_equal(x[..., i, :], h)
    x[..., 0, 0] += 1.0                      # expand must return a copy, not a broadcast view
    np.testing.assert_array_equal(R.expand(h, n)[..., 0, :], h)
    np.testing.assert_allclose(R.collapse(R.expand(h, n)), n * h, rtol=1e-15)
    # backward = adjoint: <expand(h), X> == <h, expand_backward(X)>, same for collapse.
    X = randn(rng, *LEAD, n, C)
    Y = randn(rng, *LEAD, C)
    np.testing.assert_allclose(np.sum(R.expand(h, n) * X), np.sum(h * R.expand_backward(X)),
                               rtol=1e-13)
    np.testing.assert_allclose(np.sum(R.collapse(X) * Y), np.sum(X * R.collapse_backward(Y, n)),
                               rtol=1e-13)
    np.testing.assert_array_equal(R.expand_backward(X), X.sum(-2))
    np.testing.assert_array_equal(R.collapse_backward(Y, n), R.expand(Y, n))


# --------------------------------------------------------------------------------------------------
# hand-computed forward examples (protect orientation / ordering / eps placement)
# --------------------------------------------------------------------------------------------------

def test_norm_project_hand_example():
    # n = 2, C = 2; stream-major flattening gives v = [1, 2, 3, 4] (channel-major would be [1,3,2,4]).
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    fn = np.array([
        [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
        [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [1, -1, 1, -1],
    ], dtype=np.float64)
    m = np.array([1, 2, 3, 4, 3, 7, 4, -2], dtype=np.float64)
    # eps = 0.5 makes its placement visible: sqrsum/K + eps = 30/4 + 0.5 = 8 -> r = 1/sqrt(8).
    np.testing.assert_allclose(R.norm_project(x, fn, eps=0.5), m / np.sqrt(8.0), rtol=1e-15)
    # default eps: r = (7.5 + 1e-6)^(-1/2)
    np.testing.assert_allclose(R.norm_project(x, fn), m / np.sqrt(7.5 + 1e-6), rtol=1e-15)
    # leading dims pass through
    assert R.norm_project(np.stack([x, 2 * x]), fn).shape == (2, 8)


def test_split_mixes_hand_example():
    n = 2
    mix = np.arange(1.0, 9.0)                # [pre 1,2 | post 3,4 | res 5,6,7,8]
    scale = np.array([0.5, 2.0, 3.0])
    base = np.full(8, 0.25)
    pre, post, logits = R.split_mixes(mix, scale, base, post_mult=2.0, pre_eps=1e-6)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(pre, sig(0.5 * np.array([1.0, 2.0]) + 0.25) + 1e-6, rtol=1e-15)
    np.testing.assert_allclose(post, 2.0 * sig(2.0 * np.array([3.0, 4.0]) + 0.25), rtol=1e-15)
    # logits[i][j] = a[2n + i*n + j]
    np.testing.assert_allclose(logits, np.array([[5.0, 6.0], [7.0, 8.0]]) * 3.0 + 0.25, rtol=1e-15)
    pre3, post3, _ = R.split_mixes(mix, scale, base, post_mult=3.0, pre_eps=0.1)
    np.testing.assert_allclose(pre3, pre - 1e-6 + 0.1, rtol=1e-14)
    np.testing.assert_allclose(post3, post * 1.5, rtol=1e-14)


def test_pre_apply_and_post_res_hand_example():
    x = np.array([[1.0, 10.0], [2.0, 20.0]])             # n = 2 streams, C = 2
    pre = np.array([0.25, 4.0])
    np.testing.assert_allclose(R.pre_apply(x, pre), [0.25 + 8.0, 2.5 + 80.0])
    comb = np.array([[0.1, 0.9], [0.3, 0.7]])            # comb[i][j]: source i -> destination j
    post = np.array([2.0, -1.0])
    y = np.array([5.0, 7.0])
    out = R.post_res(y, x, post, comb)
    # destination 0: post[0]*y + comb[0][0]*x[0] + comb[1][0]*x[1]
    np.testing.assert_allclose(out[0], 2.0 * y + 0.1 * x[0] + 0.3 * x[1], rtol=1e-15)
    np.testing.assert_allclose(out[1], -1.0 * y + 0.9 * x[0] + 0.7 * x[1], rtol=1e-15)


# --------------------------------------------------------------------------------------------------
# Sinkhorn
# --------------------------------------------------------------------------------------------------

def sinkhorn_literal(L, iterations=20, eps=EPS):
    """The spec text transcribed with explicit index loops, for one n x n matrix."""
    n = L.shape[0]
    P = np.empty((n, n))
    for i in range(n):
        mx = max(L[i])
        e = [np.exp(L[i][j] - mx) for j in range(n)]
        for j in range(n):
            P[i][j] = e[j] / sum(e) + eps

    def col():
        for j in range(n):
            s = sum(P[i][j] for i in range(n))
            for i in range(n):
                P[i][j] = P[i][j] / (s + eps)

    def row():
        for i in range(n):
            s = sum(P[i][j] for j in range(n))
            for j in range(n):
                P[i][j] = P[i][j] / (s + eps)

    col()
    for _ in range(iterations - 1):
        row()
        col()
    return P


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("iterations", [1, 2, 20])
def test_sinkhorn_matches_literal_transcription(n, iterations):
    rng = rng_for("sk-lit", n, iterations)
    L = randn(rng, 5, n, n, scale=2.0)
    got = R.sinkhorn(L, iterations=iterations)
    for t in range(5):
        np.testing.assert_allclose(got[t], sinkhorn_literal(L[t], iterations), rtol=1e-13)


def test_sinkhorn_n1_value():
    # softmax of a 1x1 matrix is 1; then p <- p/(p+eps) once from 1+eps, then 2*(R-1) more times.
    for L in [-3.0, 0.0, 41.5]:
        p = 1.0 + EPS
        for _ in range(1 + 2 * 19):
            p = p / (p + EPS)
        got = R.sinkhorn(np.full((2, 3, 1, 1), L))
        np.testing.assert_array_equal(got, np.full((2, 3, 1, 1), p))
        # p sits at the fixed point of p -> p/(p+eps), p = 1 - eps (= 1/(1+eps) to O(eps^2)).
        assert abs(p - (1 - EPS)) < 1e-11
        assert abs(p - 1 / (1 + EPS)) < 2e-12


@pytest.mark.parametrize("n", NS)
def test_sinkhorn_doubly_stochastic(n):
    """Tolerances, with their reasons.

    Columns: the last step is a column normalisation, so every column sum is s/(s+eps) for the
    pre-step column sum s (~1 at convergence, always in (eps, n+eps)): column sums lie in (0, 1) and
    equal 1 - eps/(s+eps), i.e. 1 - 1e-6 up to ~1e-7 once rows are near 1.  Bound: |colsum-1| <= 2e-6.
    Rows: 20 iterations are a truncated Sinkhorn, and its linear rate depends on the spread of the
    entries.  Measured over 20000 random matrices: for logits ~ N(0, 0.5^2) (moderate) the worst
    |rowsum-1| is 1.7e-5 (n=2), ~1e-6 (n=4, 8) -- so bound 1e-4; for N(0, 1) the 99th percentile is
    <= 2e-4 but the worst n=2 case is ~1.3e-2 (near-decomposable matrices converge slowly) -- so bound
    the 99th percentile by 1e-3 and the max by 5e-2.  With 500 iterations rows converge to 1 - eps.
    """
    rng = rng_for("sk-ds", n)
    for sigma, q99_tol, max_tol in [(0.5, 1e-4, 1e-4), (1.0, 1e-3, 5e-2)]:
        P = R.sinkhorn(randn(rng, 2000, n, n, scale=sigma))
        assert np.all(P > 0)                               # +eps keeps entries strictly positive
        cols = P.sum(-2)
        rows = P.sum(-1)
        assert np.all(cols < 1.0)
        assert np.max(np.abs(cols - 1)) <= 2e-6
        assert np.quantile(np.abs(rows - 1), 0.99) <= q99_tol
        assert np.max(np.abs(rows - 1)) <= max_tol
    # Converged: both sums -> 1 - eps (fixed point of x/(x+eps)); remaining error is truncation.
    P = R.sinkhorn(randn(rng, 500, n, n, scale=1.0), iterations=500)
    np.testing.assert_allclose(P.sum(-1), 1 - EPS, atol=1e-8)
    np.testing.assert_allclose(P.sum(-2), 1 - EPS, atol=1e-8)


def test_sinkhorn_shift_invariant_and_extreme_logits():
    rng = rng_for("sk-shift")
    L = randn(rng, 4, 4, 4)
    np.testing.assert_allclose(R.sinkhorn(L), R.sinkhorn(L + 123.0), rtol=1e-12)
    big = R.sinkhorn(L * 1e3)                              # row max subtraction: no overflow
    assert np.all(np.isfinite(big)) and np.all(big >= 0)


# --------------------------------------------------------------------------------------------------
# backward vs finite differences, float64
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("C", CS)
def test_norm_project_backward(n, C):
    rng = rng_for("np-bw", n, C)
    x = randn(rng, *LEAD, n, C)
    fn = randn(rng, M_of(n), n * C, scale=0.3)
    W = randn(rng, *LEAD, M_of(n))
    loss = lambda x, fn: np.sum(R.norm_project(x, fn, EPS) * W)
    dx, dfn = R.norm_project_backward(x, fn, W, EPS)
    assert dfn.shape == fn.shape
    check_grad(loss, [x, fn], 0, dx, rng)
    check_grad(loss, [x, fn], 1, dfn, rng)


@pytest.mark.parametrize("n", NS)
def test_split_mixes_backward(n):
    rng = rng_for("split-bw", n)
    M = M_of(n)
    mix = randn(rng, *LEAD, M)
    scale = np.array([0.7, -1.3, 0.9])
    base = randn(rng, M, scale=0.5)
    Wp, Wq, Wl = randn(rng, *LEAD, n), randn(rng, *LEAD, n), randn(rng, *LEAD, n, n)

    def loss(mix, scale, base):
        pre, post, logits = R.split_mixes(mix, scale, base, 2.0, EPS)
        return np.sum(pre * Wp) + np.sum(post * Wq) + np.sum(logits * Wl)

    dmix, dscale, dbase = R.split_mixes_backward(mix, scale, base, Wp, Wq, Wl, 2.0, EPS)
    for k, g in enumerate([dmix, dscale, dbase]):
        check_grad(loss, [mix, scale, base], k, g, rng)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("iterations", [1, 3, 20])
def test_sinkhorn_backward(n, iterations):
    rng = rng_for("sk-bw", n, iterations)
    L = randn(rng, *LEAD, n, n)
    W = randn(rng, *LEAD, n, n)
    loss = lambda L: np.sum(R.sinkhorn(L, iterations, EPS) * W)
    dL = R.sinkhorn_backward(L, W, iterations, EPS)
    check_grad(loss, [L], 0, dL, rng)
    if n == 1:
        np.testing.assert_array_equal(dL, 0.0)             # a 1x1 softmax is constant


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("C", CS)
def test_pre_apply_backward(n, C):
    rng = rng_for("pre-bw", n, C)
    x = randn(rng, *LEAD, n, C)
    pre = randn(rng, *LEAD, n)
    W = randn(rng, *LEAD, C)
    loss = lambda x, pre: np.sum(R.pre_apply(x, pre) * W)
    dx, dpre = R.pre_apply_backward(x, pre, W)
    check_grad(loss, [x, pre], 0, dx, rng)
    check_grad(loss, [x, pre], 1, dpre, rng)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("C", CS)
def test_post_res_backward(n, C):
    rng = rng_for("post-bw", n, C)
    y = randn(rng, *LEAD, C)
    x = randn(rng, *LEAD, n, C)
    post = randn(rng, *LEAD, n)
    comb = randn(rng, *LEAD, n, n)
    W = randn(rng, *LEAD, n, C)
    loss = lambda y, x, post, comb: np.sum(R.post_res(y, x, post, comb) * W)
    grads = R.post_res_backward(y, x, post, comb, W)
    for k, g in enumerate(grads):
        check_grad(loss, [y, x, post, comb], k, g, rng)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("C", CS)
def test_full_sublayer_backward_chain(n, C):
    """All section-5 pieces chained through one sublayer with a nonlinear F, against FD."""
    rng = rng_for("chain", n, C)
    M = M_of(n)
    x = randn(rng, *LEAD, n, C)
    fn = randn(rng, M, n * C, scale=0.3)
    scale = np.array([0.8, 1.1, 1.7])
    base = randn(rng, M, scale=0.3)
    A = randn(rng, C, C, scale=0.5)
    F = lambda u: np.tanh(u @ A)
    F_vjp = lambda u, dy: (dy * (1 - np.tanh(u @ A) ** 2)) @ A.T
    W = randn(rng, *LEAD, n, C)
    loss = lambda x, fn, scale, base: np.sum(R.mhc_sublayer(x, fn, scale, base, F) * W)
    g = R.mhc_sublayer_backward(x, fn, scale, base, F, F_vjp, W)
    for k, name in enumerate(["dx", "dfn", "dscale", "dbase"]):
        check_grad(loss, [x, fn, scale, base], k, g[name], rng, max_points=120)


# --------------------------------------------------------------------------------------------------
# vectorisation, dtypes, the full sublayer forward
# --------------------------------------------------------------------------------------------------

def test_leading_dims_equal_per_token_loop():
    rng = rng_for("vec")
    n, C = 4, 7
    M = M_of(n)
    x = randn(rng, *LEAD, n, C)
    fn = randn(rng, M, n * C, scale=0.3)
    scale, base = np.array([0.5, 0.6, 0.7]), randn(rng, M)
    F = lambda u: 2.0 * u
    out, mid = R.mhc_sublayer(x, fn, scale, base, F, return_intermediates=True)
    for t in np.ndindex(*LEAD):
        o1, m1 = R.mhc_sublayer(x[t], fn, scale, base, F, return_intermediates=True)
        np.testing.assert_allclose(out[t], o1, rtol=1e-13)
        for k in mid:
            np.testing.assert_allclose(mid[k][t], m1[k], rtol=1e-13, err_msg=k)


@pytest.mark.parametrize("n", NS)
def test_mhc_sublayer_forward_shapes_dtypes(n):
    rng = rng_for("fw", n)
    C = 13
    M = M_of(n)
    x = randn(rng, *LEAD, n, C).astype(np.float32)
    fn = randn(rng, M, n * C, scale=0.1).astype(np.float32)
    scale = [0.01, 0.01, 0.01]                       # a Python list must not promote to f64
    base = randn(rng, M, scale=0.1).astype(np.float32)
    F = lambda u: u * u
    out, mid = R.mhc_sublayer(x, fn, scale, base, F, return_intermediates=True)
    assert out.shape == x.shape and out.dtype == np.float32
    shapes = dict(mix=LEAD + (M,), pre=LEAD + (n,), post=LEAD + (n,), logits=LEAD + (n, n),
                  comb=LEAD + (n, n), u=LEAD + (C,), y=LEAD + (C,), x_next=x.shape)
    for k, s in shapes.items():
        assert mid[k].shape == s, k
        assert mid[k].dtype == np.float32, k
    assert np.all(mid["pre"] > 0) and np.all(mid["post"] > 0) and np.all(mid["post"] < 2)
    # f64 promotion on request, and f32 agrees with it to f32 precision
    out64 = R.mhc_sublayer(x, fn, scale, base, F, dtype=np.float64)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out, out64, rtol=1e-5, atol=1e-5)
    # f16 inputs compute in f32 (spec: reductions in f32)
    assert R.mhc_sublayer(x.astype(np.float16), fn, scale, base, F).dtype == np.float32
    # bf16 storage: u and x_next are bf16-representable and close to the unrounded values
    outb, midb = R.mhc_sublayer(x, fn, scale, base, F, storage="bf16", return_intermediates=True)
    for k in ["u", "y", "x_next"]:
        np.testing.assert_array_equal(R.round_to(midb[k], "bf16"), midb[k])
    np.testing.assert_allclose(outb, out, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------------
# storage rounding
# --------------------------------------------------------------------------------------------------

def bf16_bits(v):
    r = R.round_to(np.asarray(v, np.float32), "bf16")
    assert r.dtype == np.float32
    bits = r.view(np.uint32)
    assert np.all(bits & 0xFFFF == 0)
    return bits >> 16


def test_round_to_bf16_bit_patterns():
    cases = [
        (1.0, 0x3F80),
        (1 + 2**-8, 0x3F80),              # exact tie, even neighbour is 1.0: round down
        (1 + 3 * 2**-8, 0x3F82),          # exact tie, odd lower neighbour: round up to even
        (1 + 2**-8 + 2**-20, 0x3F81),     # just above the tie: up
        (1 + 2**-8 - 2**-20, 0x3F80),     # just below the tie: down
        (-1.5, 0xBFC0),
        (-(1 + 3 * 2**-8), 0xBF82),
        (3.0e38, 0x7F62),                 # large finite
        (3.3895313892515355e38, 0x7F7F),  # bf16 max stays
        (np.finfo(np.float32).max, 0x7F80),   # beyond bf16 max + half ulp: rounds to +inf
        (np.inf, 0x7F80),
        (-np.inf, 0xFF80),
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (1e-40, 0x0001),                  # f32 subnormal 0x000116C2 -> bf16 subnormal
    ]
    for v, want in cases:
        assert int(bf16_bits(v)) == want, (v, hex(int(bf16_bits(v))), hex(want))
    # large value check computed independently: 3e38 has f32 bits 0x7F61B1E6 -> upper half + round up
    assert np.float32(3.0e38).view(np.uint32) == 0x7F61B1E6


def test_round_to_bf16_nan():
    qnan = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF], np.uint32).view(np.float32)
    r = R.round_to(qnan, "bf16")
    assert np.all(np.isnan(r))
    assert list(np.signbit(r)) == [False, True, False, False]
    r = R.round_to(np.array([np.nan, 1.0, -np.nan], np.float32), "bf16")
    assert np.isnan(r[0]) and r[1] == 1.0 and np.isnan(r[2])


def test_round_to_other_types_and_idempotence():
    rng = rng_for("round")
    v = randn(rng, 1000, scale=100.0)
    b = R.round_to(v, "bf16")
    assert b.dtype == np.float64
    np.testing.assert_array_equal(R.round_to(b, "bf16"), b)
    assert np.max(np.abs(b - v) / np.abs(v)) <= 2**-8       # unit roundoff of an 8-bit significand
    h = R.round_to(v, "f16")
    np.testing.assert_array_equal(h, v.astype(np.float32).astype(np.float16).astype(np.float64))
    assert R.round_to(np.float32(1 + 2**-11), "f16") == 1.0   # f16 tie to even
    assert R.round_to(np.float32(70000.0), "f16") == np.inf
    np.testing.assert_array_equal(R.round_to(v, "f32"), v.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(R.round_to(v, "f64"), v)
    with pytest.raises(ValueError):
        R.round_to(v, "fp8")


# --------------------------------------------------------------------------------------------------
# plain HC (section 5b)
# --------------------------------------------------------------------------------------------------

def test_hc_coefficients_orientation():
    rng = rng_for("hc")
    n, C = 3, 5
    x = randn(rng, *LEAD, n, C)
    th_pre, th_post = randn(rng, 1, C), randn(rng, 1, C)
    th_res = randn(rng, n, C)
    b_pre, b_post, b_res = randn(rng, n), randn(rng, n), randn(rng, n, n)
    alpha = (0.3, 0.5, 0.7)
    pre, post, res = R.hc_coefficients(x, th_pre, th_post, th_res, alpha, b_pre, b_post, b_res)
    assert pre.shape == LEAD + (n,) and post.shape == LEAD + (n,) and res.shape == LEAD + (n, n)
    for t in np.ndindex(*LEAD):
        xt = x[t] / np.sqrt(np.mean(x[t] ** 2, axis=-1, keepdims=True) + 1e-6)
        H_res = 0.7 * np.tanh(th_res @ xt.T) + b_res          # paper orientation: H_res[dest][src]
        np.testing.assert_allclose(res[t], H_res.T, rtol=1e-13)
        np.testing.assert_allclose(pre[t], 0.3 * np.tanh(th_pre @ xt.T)[0] + b_pre, rtol=1e-13)
        np.testing.assert_allclose(post[t], 0.5 * np.tanh(th_post @ xt.T)[0] + b_post, rtol=1e-13)
        # paper's update x_next = H_res x + H_post^T y equals post_res with res = comb orientation
        y = randn(rng, C)
        np.testing.assert_allclose(R.post_res(y, x[t], post[t], res[t]),
                                   H_res @ x[t] + np.outer(post[t], y), rtol=1e-12)


def test_hc_identity_init_is_plain_residual():
    rng = rng_for("hc-init")
    n, C, layer = 4, 7, 6
    h = randn(rng, *LEAD, C)
    x = R.expand(h, n)
    z = np.zeros((1, C))
    pre, post, res = R.hc_coefficients(x, z, z, np.zeros((n, C)), 0.01,
                                       np.eye(n)[layer % n], np.ones(n), np.eye(n))
    F = lambda u: np.sin(u)
    u = R.pre_apply(x, pre)
    np.testing.assert_array_equal(u, h)
    x_next = R.post_res(F(u), x, post, res)
    for j in range(n):
        np.testing.assert_allclose(x_next[..., j, :], h + F(h), rtol=1e-15)


# --------------------------------------------------------------------------------------------------
# stability metrics (section 6)
# --------------------------------------------------------------------------------------------------

def test_gains_and_composite():
    P = np.array([[1.0, -2.0], [0.5, 0.25]])
    assert R.forward_gain(P) == 3.0            # row sums of |P|: 3, 0.75
    assert R.backward_gain(P) == 2.25          # column sums of |P|: 1.5, 2.25
    Q = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert R.forward_gain(np.stack([P, Q])) == (3.0 + 2.0) / 2     # averaged over tokens
    assert R.backward_gain(np.stack([P, Q])) == (2.25 + 2.0) / 2
    A, B, Cm = P, Q, np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(R.composite([A, B, Cm]), Cm @ B @ A)   # layer order in, later left
    # Doubly-stochastic (Sinkhorn) maps stay non-expansive over many layers.
    rng = rng_for("gain")
    combs = [R.sinkhorn(randn(rng, 16, 4, 4)) for _ in range(60)]
    Hs = [c.swapaxes(-1, -2) for c in combs]
    comp = R.composite(Hs)
    assert comp.shape == (16, 4, 4)
    assert R.forward_gain(comp) <= 1.0 + 1e-3 and R.backward_gain(comp) <= 1.0 + 1e-3
    # while unconstrained maps of similar size blow up
    raw = R.composite([np.eye(4) + randn(rng, 16, 4, 4, scale=0.5) for _ in range(60)])
    assert R.forward_gain(raw) > 100.0


@pytest.mark.parametrize("C", [1, 7, 64])
def test_rms_norm_matches_torch(C):
    """The pre-norm extension op is torch.nn.RMSNorm's math (forward and both gradients)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(C)
    u = rng.standard_normal((3, 5, C))
    w = rng.uniform(0.5, 1.5, C)
    dout = rng.standard_normal((3, 5, C))
    eps = 1e-3
    ut = torch.tensor(u, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.rms_norm(ut, (C,), wt, eps)
    out.backward(torch.tensor(dout))
    np.testing.assert_allclose(R.rms_norm(u, w, eps, dtype=np.float64), out.detach().numpy(),
                               rtol=1e-12, atol=1e-14)
    du, dw = R.rms_norm_backward(u, w, dout, eps, dtype=np.float64)
    np.testing.assert_allclose(du, ut.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_relative_error():
    """mhc.testing.relative_error, the GPU checks' measure: the same value from numpy, torch and
    a mix of the two; a NaN or inf in the output never passes; an all-zero reference gives the
    absolute error (by default) or fails all but an exact zero; empty tensors give 0."""
    torch = pytest.importorskip("torch")
    from mhc.testing import relative_error
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(50)
    out = ref + 1e-3 * rng.standard_normal(50)
    expected = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    for a, b in [(out, ref), (torch.tensor(out), torch.tensor(ref)), (torch.tensor(out), ref),
                 (out.astype(np.float32), torch.tensor(ref).requires_grad_())]:
        assert relative_error(a, b) == pytest.approx(expected, rel=1e-4)
    assert relative_error(torch.tensor(out, dtype=torch.bfloat16), torch.tensor(ref)) > expected
    bad = out.copy()
    bad[7] = np.nan
    assert relative_error(bad, ref) == float("inf")
    assert relative_error(torch.tensor(bad).float(), torch.tensor(ref)) == float("inf")
    assert relative_error(np.full(3, 2.0), np.zeros(3)) == pytest.approx(np.sqrt(12.0))
    # the strict rule of the bench scripts and torch tests: only an exact zero matches a zero
    assert relative_error(np.full(3, 2.0), np.zeros(3), zero_ref_norm=1e-30) > 1e29
    assert relative_error(torch.zeros(3), torch.zeros(3), zero_ref_norm=1e-30) == 0.0
    assert relative_error(torch.zeros(0, 4), torch.zeros(0, 4)) == 0.0
