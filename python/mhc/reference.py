"""Independent numpy reference for mHC (spec: /work/shared/mhc-spec.md, sections 3, 5, 5b, 6).

This module is the golden model the compiler's CPU/GPU paths are tested against, so it follows the
spec literally (eps placement included) and favours clarity over speed.

Conventions
-----------
* Leading dims ``...`` are arbitrary; every op is per token and vectorised over them.
* ``x`` is ``[..., n, C]``; ``mix`` is ``[..., M]`` with ``M = n*n + 2*n`` ordered
  ``[pre(0:n) | post(n:2n) | res(2n:M)]``; ``fn`` is ``[M, n*C]`` and ``x`` is flattened
  stream-major (``k = i*C + c``).
* ``comb[i][j]`` is the weight from *source* stream i to *destination* stream j (``comb = H_res^T``
  of the paper).
* Compute dtype: every function takes ``dtype=None``.  ``None`` computes in the promoted dtype of
  the array arguments, but never below float32 (the spec reduces in f32; f16 inputs are widened).
  Pass ``dtype=np.float64`` to promote everything (for gradient checks).  Results come back in the
  compute dtype; storage rounding (bf16/f16) is explicit via :func:`round_to`.
* Parameter gradients (``dfn``, ``dscale``, ``dbase``) are summed over all tokens; per-token
  coefficient gradients (``dpre``, ``dpost``, ``dcomb``, ``dmix``, ``dlogits``) keep the leading dims.
"""

import numpy as np

__all__ = [
    "expand", "expand_backward", "collapse", "collapse_backward",
    "norm_project", "norm_project_backward",
    "split_mixes", "split_mixes_backward",
    "sinkhorn", "sinkhorn_backward",
    "pre_apply", "pre_apply_backward",
    "post_res", "post_res_backward",
    "rms_norm", "rms_norm_backward",
    "mhc_sublayer", "mhc_sublayer_backward",
    "hc_coefficients",
    "forward_gain", "backward_gain", "composite",
    "round_to",
]


def _cast(dtype, *arrays):
    """Cast all arrays to the compute dtype (see module docstring)."""
    if dtype is None:
        # Only real arrays vote: a Python scalar or list (alpha=0.01, scale=[...]) must not
        # silently promote an f32 computation to f64.
        voters = [a.dtype for a in arrays if isinstance(a, (np.ndarray, np.generic))]
        dtype = np.result_type(np.float32, *voters)
    dtype = np.dtype(dtype)
    return [np.asarray(a).astype(dtype, copy=False) for a in arrays]


def _sigmoid(a):
    # Two-sided form: no overflow warning for large |a| in either dtype.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def _streams_from_M(M):
    n = int(round((np.sqrt(1 + M) - 1)))  # M = n^2 + 2n  <=>  n = sqrt(M + 1) - 1
    if n * n + 2 * n != M:
        raise ValueError(f"mix width {M} is not n*n + 2*n for any integer n")
    return n


# --------------------------------------------------------------------------------------------------
# Stream entry / exit
# --------------------------------------------------------------------------------------------------

def expand(h, n, dtype=None):
    """``[..., C] -> [..., n, C]``: replicate h into n streams (a real copy, not a view)."""
    (h,) = _cast(dtype, h)
    return np.repeat(h[..., None, :], n, axis=-2)


def expand_backward(dx, dtype=None):
    """dh = sum of dx over the stream axis."""
    (dx,) = _cast(dtype, dx)
    return dx.sum(axis=-2)


def collapse(x, dtype=None):
    """``[..., n, C] -> [..., C]``: plain-HC exit, sum over streams."""
    (x,) = _cast(dtype, x)
    return x.sum(axis=-2)


def collapse_backward(dy, n, dtype=None):
    """The gradient of a sum is a broadcast: every stream receives dy."""
    return expand(dy, n, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Coefficients: norm_project -> split_mixes -> sinkhorn
# --------------------------------------------------------------------------------------------------

def _norm_project_parts(x, fn, eps):
    n, C = x.shape[-2:]
    K = n * C
    v = x.reshape(x.shape[:-2] + (K,))          # stream-major: k = i*C + c
    if fn.shape[-1] != K:
        raise ValueError(f"fn has {fn.shape[-1]} columns, expected n*C = {K}")
    sqrsum = np.sum(v * v, axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(sqrsum / K + eps)          # eps inside the rsqrt, on the mean square
    m = v @ fn.T
    return v, K, r, m


def norm_project(x, fn, eps=1e-6, dtype=None):
    """mix = (v @ fn^T) * rsqrt(mean(v^2) + eps), v = x flattened stream-major.  ``[..., M]``."""
    x, fn = _cast(dtype, x, fn)
    _, _, r, m = _norm_project_parts(x, fn, eps)
    return m * r


def norm_project_backward(x, fn, dmix, eps=1e-6, dtype=None):
    """Returns (dx ``[..., n, C]``, dfn ``[M, nC]`` summed over tokens)."""
    x, fn, dmix = _cast(dtype, x, fn, dmix)
    v, K, r, m = _norm_project_parts(x, fn, eps)
    dm = dmix * r
    # d r / d sqrsum = -r^3 / (2K); the chain through sqrsum = sum v^2 contributes 2 v dS.
    dS = -np.sum(dmix * m, axis=-1, keepdims=True) * r ** 3 / (2 * K)
    dv = dm @ fn + 2 * v * dS
    dfn = dm.reshape(-1, dm.shape[-1]).T @ v.reshape(-1, K)
    return dv.reshape(x.shape), dfn


def _scale_expanded(scale, n):
    scale = np.asarray(scale).reshape(3)
    return np.concatenate([np.full(n, scale[0]), np.full(n, scale[1]), np.full(n * n, scale[2])]
                          ).astype(scale.dtype)


def split_mixes(mix, scale, base, post_mult=2.0, pre_eps=1e-6, dtype=None):
    """Returns (pre ``[..., n]``, post ``[..., n]``, logits ``[..., n, n]``) per spec section 3."""
    mix, scale, base = _cast(dtype, mix, scale, base)
    n = _streams_from_M(mix.shape[-1])
    a = mix * _scale_expanded(scale, n) + base
    pre = _sigmoid(a[..., :n]) + pre_eps
    post = _sigmoid(a[..., n:2 * n]) * post_mult
    logits = a[..., 2 * n:].reshape(a.shape[:-1] + (n, n))   # logits[i][j] = a[2n + i*n + j]
    return pre, post, logits


def split_mixes_backward(mix, scale, base, dpre, dpost, dlogits, post_mult=2.0, pre_eps=1e-6,
                         dtype=None):
    """Returns (dmix ``[..., M]``, dscale ``[3]``, dbase ``[M]``); dscale/dbase summed over tokens."""
    mix, scale, base, dpre, dpost, dlogits = _cast(dtype, mix, scale, base, dpre, dpost, dlogits)
    n = _streams_from_M(mix.shape[-1])
    se = _scale_expanded(scale, n)
    a = mix * se + base
    s_pre = _sigmoid(a[..., :n])
    post = _sigmoid(a[..., n:2 * n]) * post_mult
    da = np.concatenate([
        dpre * s_pre * (1 - s_pre),
        dpost * post * (1 - post / post_mult),     # = dpost * post_mult * s * (1 - s)
        dlogits.reshape(dlogits.shape[:-2] + (n * n,)),
    ], axis=-1)
    g = (da * mix).reshape(-1, da.shape[-1]).sum(axis=0)
    dscale = np.array([g[:n].sum(), g[n:2 * n].sum(), g[2 * n:].sum()], dtype=da.dtype)
    dbase = da.reshape(-1, da.shape[-1]).sum(axis=0)
    return da * se, dscale, dbase


def _sinkhorn_trace(logits, iterations, eps):
    """Forward Sinkhorn, also returning what the backward needs: P0 and each (axis, sum, result)."""
    if iterations < 1:
        raise ValueError("sinkhorn needs iterations >= 1")
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))   # softmax over j, row max subtracted
    P0 = e / e.sum(axis=-1, keepdims=True)
    P = P0 + eps
    # First a column normalisation (over the source index i, axis -2), then R-1 (row, column) pairs.
    axes = [-2] + [-1, -2] * (iterations - 1)
    steps = []
    for ax in axes:
        s = P.sum(axis=ax, keepdims=True)
        P = P / (s + eps)
        steps.append((ax, s, P))
    return P0, steps


def sinkhorn(logits, iterations=20, eps=1e-6, dtype=None):
    """comb = Sinkhorn(logits) on the trailing n x n, exactly spec section 3 (eps inside each divide)."""
    (logits,) = _cast(dtype, logits)
    _, steps = _sinkhorn_trace(logits, iterations, eps)
    return steps[-1][2]


def sinkhorn_backward(logits, dcomb, iterations=20, eps=1e-6, dtype=None):
    """dlogits, recomputing the forward iterates (as the kernels do) rather than taking them."""
    logits, dcomb = _cast(dtype, logits, dcomb)
    P0, steps = _sinkhorn_trace(logits, iterations, eps)
    g = dcomb
    for ax, s, Y in reversed(steps):
        # Y = X / (s + eps), s = sum_ax X  =>  dX = (g - sum_ax(g * Y)) / (s + eps)
        g = (g - np.sum(g * Y, axis=ax, keepdims=True)) / (s + eps)
    # "+ eps" passes g through; the row-max shift has zero gradient (softmax is shift invariant).
    return P0 * (g - np.sum(g * P0, axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------------------
# Stream mixing: pre_apply, post_res
# --------------------------------------------------------------------------------------------------

def pre_apply(x, pre, dtype=None):
    """u[c] = sum_i pre[i] * x[i, c].  ``[..., C]``"""
    x, pre = _cast(dtype, x, pre)
    return np.einsum("...i,...ic->...c", pre, x)


def pre_apply_backward(x, pre, du, dtype=None):
    """Returns (dx ``[..., n, C]``, dpre ``[..., n]``)."""
    x, pre, du = _cast(dtype, x, pre, du)
    dx = pre[..., :, None] * du[..., None, :]
    dpre = np.einsum("...c,...ic->...i", du, x)
    return dx, dpre


def post_res(y, x, post, comb, dtype=None):
    """x_next[j, c] = post[j] * y[c] + sum_i comb[i][j] * x[i, c].  ``[..., n, C]``"""
    y, x, post, comb = _cast(dtype, y, x, post, comb)
    return post[..., :, None] * y[..., None, :] + np.einsum("...ij,...ic->...jc", comb, x)


def post_res_backward(y, x, post, comb, dout, dtype=None):
    """Returns (dy ``[..., C]``, dx ``[..., n, C]``, dpost ``[..., n]``, dcomb ``[..., n, n]``)."""
    y, x, post, comb, dout = _cast(dtype, y, x, post, comb, dout)
    dy = np.einsum("...j,...jc->...c", post, dout)
    dx = np.einsum("...ij,...jc->...ic", comb, dout)
    dpost = np.einsum("...c,...jc->...j", y, dout)
    dcomb = np.einsum("...ic,...jc->...ij", x, dout)
    return dy, dx, dpost, dcomb


# --------------------------------------------------------------------------------------------------
# The sublayer's pre-norm (an extension op, mhc.rms_norm: fusable with pre_apply on the GPU)
# --------------------------------------------------------------------------------------------------

def _rms_factor(u, eps):
    return 1.0 / np.sqrt(np.mean(u * u, axis=-1, keepdims=True) + eps)


def rms_norm(u, weight, eps=1e-6, dtype=None):
    """out[c] = u[c] * rsqrt(mean_c u^2 + eps) * weight[c] (torch.nn.RMSNorm).  ``[..., C]``"""
    u, weight = _cast(dtype, u, weight)
    return u * _rms_factor(u, eps) * weight


def rms_norm_backward(u, weight, dout, eps=1e-6, dtype=None):
    """Returns (du ``[..., C]``, dweight ``[C]``, summed over all tokens)."""
    u, weight, dout = _cast(dtype, u, weight, dout)
    r = _rms_factor(u, eps)
    g = dout * weight
    s = np.sum(g * u, axis=-1, keepdims=True)
    du = r * g - u * r ** 3 * s / u.shape[-1]
    dweight = np.sum((dout * u * r).reshape(-1, u.shape[-1]), axis=0)
    return du, dweight


# --------------------------------------------------------------------------------------------------
# One full sublayer
# --------------------------------------------------------------------------------------------------

def mhc_sublayer(x, fn, scale, base, F, *, eps=1e-6, post_mult=2.0, pre_eps=1e-6, iterations=20,
                 sinkhorn_eps=1e-6, storage=None, return_intermediates=False, dtype=None):
    """Spec section 3 forward for one sublayer; ``F`` maps ``u [..., C]`` to ``y [..., C]``.

    ``storage`` (None, 'bf16', 'f16', 'f32') emulates the memory type of the residual stream:
    u, y and x_next are rounded to it (coefficients stay in the compute dtype, as on chip).
    Returns x_next, or (x_next, dict of intermediates) when ``return_intermediates``.
    """
    x, fn, scale, base = _cast(dtype, x, fn, scale, base)
    store = (lambda a: a) if storage is None else (lambda a: round_to(a, storage).astype(x.dtype))
    mix = norm_project(x, fn, eps)
    pre, post, logits = split_mixes(mix, scale, base, post_mult, pre_eps)
    comb = sinkhorn(logits, iterations, sinkhorn_eps)
    u = store(pre_apply(x, pre))
    y = store(np.asarray(F(u)).astype(x.dtype))
    x_next = store(post_res(y, x, post, comb))
    if not return_intermediates:
        return x_next
    return x_next, dict(mix=mix, pre=pre, post=post, logits=logits, comb=comb, u=u, y=y,
                        x_next=x_next)


def mhc_sublayer_backward(x, fn, scale, base, F, F_vjp, dout, *, eps=1e-6, post_mult=2.0,
                          pre_eps=1e-6, iterations=20, sinkhorn_eps=1e-6, dtype=None):
    """Spec section 5 chained through one sublayer (no storage rounding).

    ``F_vjp(u, dy) -> du`` is the vector-Jacobian product of F.  Returns dict(dx, dfn, dscale, dbase).
    x feeds three places (norm_project, pre_apply, post_res), so dx is the sum of three terms.
    """
    x, fn, scale, base, dout = _cast(dtype, x, fn, scale, base, dout)
    mix = norm_project(x, fn, eps)
    pre, post, logits = split_mixes(mix, scale, base, post_mult, pre_eps)
    comb = sinkhorn(logits, iterations, sinkhorn_eps)
    u = pre_apply(x, pre)
    y = np.asarray(F(u)).astype(x.dtype)
    dy, dx_res, dpost, dcomb = post_res_backward(y, x, post, comb, dout)
    du = np.asarray(F_vjp(u, dy)).astype(x.dtype)
    dx_pre, dpre = pre_apply_backward(x, pre, du)
    dlogits = sinkhorn_backward(logits, dcomb, iterations, sinkhorn_eps)
    dmix, dscale, dbase = split_mixes_backward(mix, scale, base, dpre, dpost, dlogits,
                                               post_mult, pre_eps)
    dx_np, dfn = norm_project_backward(x, fn, dmix, eps)
    return dict(dx=dx_res + dx_pre + dx_np, dfn=dfn, dscale=dscale, dbase=dbase)


# --------------------------------------------------------------------------------------------------
# Plain (dynamic) hyper-connections, spec section 5b
# --------------------------------------------------------------------------------------------------

def hc_coefficients(x, theta_pre, theta_post, theta_res, alpha, b_pre, b_post, b_res,
                    rms_eps=1e-6, dtype=None):
    """Dynamic HC coefficients (pre ``[..., n]``, post ``[..., n]``, res ``[..., n, n]``).

    x~ = RMSNorm(x) per stream, without a learned gain: x~[i] = x[i] * rsqrt(mean_c x[i]^2 + 1e-6).
    ``theta_pre``/``theta_post`` are ``[1, C]`` (or ``[C]``), ``theta_res`` and ``b_res`` are
    ``[n, C]`` / ``[n, n]`` in the paper's H_res orientation (row = destination stream).
    ``alpha`` is a scalar or (alpha_pre, alpha_post, alpha_res).

        H_pre  = a_pre  * tanh(theta_pre  x~^T) + b_pre          -> pre  (no sigmoid, no +eps)
        H_post = a_post * tanh(theta_post x~^T) + b_post         -> post (no post_mult)
        H_res  = a_res  * tanh(theta_res  x~^T) + b_res          (H_res[d][s]: source s -> dest d)

    The returned ``res`` is ``H_res^T``, i.e. oriented like ``comb`` (res[i][j]: source i -> dest j),
    so ``post_res(y, x, post, res)`` and ``pre_apply(x, pre)`` give the HC update unchanged.
    """
    x, theta_pre, theta_post, theta_res, alpha, b_pre, b_post, b_res = _cast(
        dtype, x, theta_pre, theta_post, theta_res, alpha, b_pre, b_post, b_res)
    a_pre, a_post, a_res = np.broadcast_to(alpha.reshape(-1), (3,))
    xt = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + rms_eps)
    pre = a_pre * np.tanh(xt @ theta_pre.reshape(-1)) + b_pre
    post = a_post * np.tanh(xt @ theta_post.reshape(-1)) + b_post
    # (theta_res x~^T)[d][s] = sum_c theta_res[d, c] x~[s, c]; comb orientation swaps d and s.
    res_T = a_res * np.tanh(np.einsum("dc,...sc->...sd", theta_res, xt)) + b_res.T
    return pre, post, res_T


def head_mix(x, fn_head, alpha, base, eps=1e-6, pre_eps=1e-6, dtype=None):
    """DeepSeek-V4's learned exit (spec section 3): ``sum_i w[i] x[i]`` ``[..., C]`` with
    ``w = sigmoid(alpha * norm_project(x, fn_head) + base) + pre_eps`` ``[..., n]``, computed like
    ``pre`` from its own ``fn_head`` ``[n, n*C]``, scalar ``alpha`` and ``base`` ``[n]``."""
    x, fn_head, alpha, base = _cast(dtype, x, fn_head, alpha, base)
    w = _sigmoid(norm_project(x, fn_head, eps) * alpha.reshape(()) + base) + pre_eps
    return pre_apply(x, w)


# --------------------------------------------------------------------------------------------------
# Stability metrics, spec section 6
# --------------------------------------------------------------------------------------------------

def forward_gain(P):
    """max_i sum_j |P_ij| on the trailing n x n, averaged over any leading (token) dims.

    Pass the paper's H_res to reproduce its numbers; for a ``comb`` (= H_res^T) the paper's forward
    gain is ``backward_gain(comb)``.
    """
    return float(np.mean(np.max(np.sum(np.abs(np.asarray(P, np.float64)), axis=-1), axis=-1)))


def backward_gain(P):
    """max_j sum_i |P_ij| (max absolute column sum), averaged over leading dims."""
    return float(np.mean(np.max(np.sum(np.abs(np.asarray(P, np.float64)), axis=-2), axis=-1)))


def composite(Ps):
    """Product of per-layer maps given in layer order [P_l, ..., P_{L-1}]: P_{L-1} @ ... @ P_l.

    That is the paper's composite for H_res matrices.  For comb (= H_res^T) matrices use
    ``composite([c.swapaxes(-1, -2) for c in combs])`` to get the paper's H_res composite.
    Broadcasts over leading (token) dims.
    """
    Ps = [np.asarray(P) for P in Ps]
    out = Ps[0]
    for P in Ps[1:]:
        out = P @ out
    return out


# --------------------------------------------------------------------------------------------------
# Storage rounding
# --------------------------------------------------------------------------------------------------

_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "f16": "f16", "float16": "f16", "half": "f16",
          "f32": "f32", "float32": "f32", "f64": "f64", "float64": "f64"}


def round_to(x, dtype_name):
    """Round x to the values storable in ``dtype_name`` ('bf16', 'f16', 'f32', 'f64').

    Rounding is round-to-nearest-even from float32, like the lowering's f32 -> bf16/f16 ``truncf``
    (an f64 input is first rounded to f32).  The result keeps a wide dtype (input dtype, at least
    float32) so it can flow straight back into the reference.  NaN stays NaN (sign kept), +-inf stay,
    finite values beyond the target's range round to +-inf.
    """
    kind = _NAMES.get(str(dtype_name).lower())
    if kind is None:
        raise ValueError(f"unknown storage type {dtype_name!r}")
    x = np.asarray(x)
    out_dtype = np.result_type(x.dtype, np.float32)
    if kind == "f64":
        return x.astype(out_dtype)
    f = x.astype(np.float32)
    if kind == "f32":
        return f.astype(out_dtype)
    if kind == "f16":
        with np.errstate(over="ignore"):                # overflow to inf is the intent
            return f.astype(np.float16).astype(out_dtype)   # numpy's f32 -> f16 cast is RNE
    bits = f.view(np.uint32).astype(np.uint64)           # 64-bit so the carry cannot wrap
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32)
    # A NaN's payload may carry into the sign/exponent or truncate to inf: emit a quiet NaN instead.
    nan_bits = ((bits.astype(np.uint32) | np.uint32(0x00400000)) & np.uint32(0xFFFF0000))
    rounded = np.where(np.isnan(f), nan_bits, rounded)
    return rounded.view(np.float32).astype(out_dtype)
