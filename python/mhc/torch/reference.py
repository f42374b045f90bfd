"""The kernel-level mHC ops in plain PyTorch: the ``reference`` backend (the four training ops,
the chain's two halves, ``hc_pre_mixed`` and ``hc_post_project``, and the dy fold's backward ops,
``hc_pre_backward_lower``, ``hc_joint_backward`` and ``hc_joint_backward_lower``).

Same math as :mod:`mhc.reference` (numpy, the golden model) and spec sections 3 and 5, written with
torch ops so that it runs on any device, is traced by ``torch.compile`` and serves as the CPU
implementation of the ``mhc::`` custom ops. Every function takes and returns tensors with any
leading (token) dims.

Precision (spec section 4): activations (x, u, y, x_next, dx, dy) keep the dtype of ``x``;
coefficients (mix, post, comb, dpost, dcomb) and parameter gradients are float32, every reduction
in float32. When ``x`` is float64 everything is float64 (gradient checks).

The backward is analytic (spec section 5), not autograd of the forward, so it is the same
computation the GPU backward kernels do, including the recomputation of pre/post/comb from ``mix``.
"""

from __future__ import annotations

import torch

__all__ = ["hc_pre", "hc_post", "hc_post_backward", "hc_pre_backward", "hc_pre_mixed",
           "hc_post_project", "hc_pre_backward_lower", "hc_joint_backward",
           "hc_joint_backward_lower", "norm_project", "coefficients_from_mix", "compute_dtype",
           "sinkhorn", "rms_norm", "rms_norm_backward", "hc_pre_norm", "hc_pre_mixed_norm",
           "hc_pre_backward_norm", "hc_pre_backward_lower_norm", "hc_joint_backward_norm",
           "hc_joint_backward_lower_norm"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 activations (gradient checks), float32 otherwise (spec section 4)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scale_expanded(scale: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([scale[0:1].expand(n), scale[1:2].expand(n), scale[2:3].expand(n * n)])


def _split(mix, scale, base, n, pre_eps, post_mult):
    """a = mix * scale_expanded + base, then (sigmoid(a_pre), pre, post, logits)."""
    a = mix * _scale_expanded(scale, n) + base
    s_pre = torch.sigmoid(a[:, :n])
    post = torch.sigmoid(a[:, n:2 * n]) * post_mult
    logits = a[:, 2 * n:].reshape(-1, n, n)      # logits[t, i, j] = a[t, 2n + i*n + j]
    return s_pre, s_pre + pre_eps, post, logits


def _sinkhorn_trace(logits, iterations: int, eps: float):
    """Sinkhorn (spec section 3) keeping what its backward needs: P0 and every (axis, sum, result)."""
    P0 = torch.softmax(logits, dim=-1)
    P = P0 + eps
    steps = []
    for axis in [-2] + [-1, -2] * (iterations - 1):   # first over the source index, then pairs
        s = P.sum(axis, keepdim=True)
        P = P / (s + eps)
        steps.append((axis, s, P))
    return P0, steps


def sinkhorn(logits: torch.Tensor, iterations: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """comb = Sinkhorn(logits) on the trailing n x n."""
    return _sinkhorn_trace(logits, iterations, eps)[1][-1][2]


def _flat(x: torch.Tensor):
    n, C = x.shape[-2:]
    return x.reshape(-1, n, C), x.shape[:-2], n, C


def coefficients_from_mix(mix, scale, base, iterations, eps, pre_eps, post_mult):
    """(pre, post, comb) ``[T, n]``, ``[T, n]``, ``[T, n, n]`` from mix ``[T, M]`` (recomputation)."""
    n = round((mix.shape[-1] + 1) ** 0.5) - 1
    _, pre, post, logits = _split(mix, scale.to(mix.dtype), base.to(mix.dtype), n, pre_eps, post_mult)
    return pre, post, sinkhorn(logits, iterations, eps)


def norm_project(x, fn, eps: float):
    """mix ``[..., M]`` = (x / rms(x)) @ fn^T over the flattened streams (f32 for bf16/f16 x)."""
    xt, lead, n, C = _flat(x)
    v = xt.reshape(-1, n * C).to(compute_dtype(x))
    r = torch.rsqrt((v * v).sum(-1, keepdim=True) / (n * C) + eps)
    mix = (v @ fn.to(v.dtype).t()) * r
    return mix.reshape(*lead, mix.shape[-1])


def hc_pre(x, fn, scale, base, iterations: int, eps: float, pre_eps: float, post_mult: float):
    """norm_project + split_mixes + sinkhorn + pre_apply -> (u, post, comb, mix)."""
    mix = norm_project(x, fn, eps)
    return (*hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult), mix)


def hc_pre_mixed(x, mix, scale, base, iterations: int, eps: float, pre_eps: float,
                 post_mult: float):
    """hc_pre's (u, post, comb) from a mix computed before (the chain's steady state, the
    recomputation): split_mixes + sinkhorn + pre_apply, no norm_project."""
    xt, lead, n, C = _flat(x)
    cd = compute_dtype(x)
    pre, post, comb = coefficients_from_mix(mix.reshape(-1, mix.shape[-1]).to(cd), scale, base,
                                            iterations, eps, pre_eps, post_mult)
    u = torch.einsum("ti,tic->tc", pre, xt.to(cd)).to(x.dtype)
    return u.reshape(*lead, C), post.reshape(*lead, n), comb.reshape(*lead, n, n)


def hc_post(y, x, post, comb):
    """x_next[j, c] = post[j] * y[c] + sum_i comb[i][j] * x[i, c] (f32 accumulation, stored like x)."""
    xt, lead, n, C = _flat(x)
    cd = compute_dtype(x)
    post_t = post.reshape(-1, n).to(cd)
    out = post_t[:, :, None] * y.reshape(-1, 1, C).to(cd) + torch.einsum(
        "tij,tic->tjc", comb.reshape(-1, n, n).to(cd), xt.to(cd))
    return out.to(x.dtype).reshape(x.shape)


def hc_post_project(y, x, post, comb, fn_next, eps: float):
    """hc_post and the next sublayer's norm_project of x_next (as stored, in x's dtype):
    (x_next, mix_next)."""
    x_next = hc_post(y, x, post, comb)
    return x_next, norm_project(x_next, fn_next, eps)


def hc_post_backward(y, x, post, comb, dx_next):
    """(dy, dpost, dcomb) of hc_post. The dx part (sum_j comb[i][j] dx_next[j]) is left to
    hc_pre_backward, which computes the whole dx in one pass."""
    return (_dy(post, dx_next, y.dtype).reshape(y.shape), *_dpost_dcomb(y, x, dx_next))


def _dy(post, dx_next, dtype):
    """hc_post's dy = sum_j post[j] dx_next[j] ``[T, C]``, stored as `dtype`: one function for
    hc_post_backward and the dy fold, so that both give the same bits."""
    g, lead, n, C = _flat(dx_next)
    cd = compute_dtype(dx_next)
    return torch.einsum("tj,tjc->tc", post.reshape(-1, n).to(cd), g.to(cd)).to(dtype)


def _dpost_dcomb(y, x, dx_next):
    """hc_post's dpost and dcomb (they need neither post nor comb)."""
    xt, lead, n, C = _flat(x)
    cd = compute_dtype(x)
    g = dx_next.reshape(-1, n, C).to(cd)
    dpost = torch.einsum("tc,tjc->tj", y.reshape(-1, C).to(cd), g)
    dcomb = torch.einsum("tic,tjc->tij", xt.to(cd), g)
    return dpost.reshape(*lead, n), dcomb.reshape(*lead, n, n)


def hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations: int, eps: float,
                    pre_eps: float, post_mult: float):
    """(dx, dfn, dscale, dbase). dx is the whole gradient of x: the norm_project and pre_apply paths
    plus the residual path sum_j comb[i][j] dx_next[j] of hc_post. pre, post and comb are recomputed
    from mix; parameter gradients are summed over tokens."""
    xt, lead, n, C = _flat(x)
    cd = compute_dtype(x)
    K = n * C
    v = xt.reshape(-1, K).to(cd)
    fn_c, scale_c, base_c = fn.to(cd), scale.to(cd), base.to(cd)
    mix = mix.reshape(-1, mix.shape[-1]).to(cd)
    s_pre, pre, post, logits = _split(mix, scale_c, base_c, n, pre_eps, post_mult)
    P0, steps = _sinkhorn_trace(logits, iterations, eps)
    comb = steps[-1][2]

    du_t = du.reshape(-1, C).to(cd)
    dpre = torch.einsum("tc,tic->ti", du_t, v.view(-1, n, C))
    # Sinkhorn backward: walk the normalisations back, then through the softmax.
    g = dcomb.reshape(-1, n, n).to(cd)
    for axis, s, Y in reversed(steps):
        g = (g - (g * Y).sum(axis, keepdim=True)) / (s + eps)
    dlogits = P0 * (g - (g * P0).sum(-1, keepdim=True))
    da = torch.cat([dpre * s_pre * (1 - s_pre),
                    dpost.reshape(-1, n).to(cd) * post * (1 - post / post_mult),
                    dlogits.reshape(-1, n * n)], dim=-1)
    per_coef = (da * mix).sum(0)
    dscale = torch.stack([per_coef[:n].sum(), per_coef[n:2 * n].sum(), per_coef[2 * n:].sum()])
    dbase = da.sum(0)
    dmix = da * _scale_expanded(scale_c, n)
    # norm_project backward: mix = m * r, m = v @ fn^T, r = rsqrt(sum v^2 / K + eps).
    r = torch.rsqrt((v * v).sum(-1, keepdim=True) / K + eps)
    m = v @ fn_c.t()
    dm = dmix * r
    dS = -(dmix * m).sum(-1, keepdim=True) * r ** 3 / (2 * K)
    dx = (dm @ fn_c + 2 * v * dS).view(-1, n, C)
    dx = dx + pre[:, :, None] * du_t[:, None, :]
    dx = dx + torch.einsum("tij,tjc->tic", comb, dx_next.reshape(-1, n, C).to(cd))
    dfn = dm.t() @ v
    return (dx.to(x.dtype).reshape(x.shape), dfn.to(fn.dtype), dscale.to(scale.dtype),
            dbase.to(base.dtype))


# The dy fold (mhc.torch.chain_pass): in a stack, the dx of a sublayer's hc_pre_backward is the
# dx_next of the sublayer below it, whose dy = sum_j post_lower[j] dx[j] the upper sublayer's
# backward computes while dx is on chip (dy_lower); the lower sublayer then runs hc_post_backward's
# dpost/dcomb and hc_pre_backward as one op after its own VJP (hc_joint_backward).

# `pre_backward`: the hc_pre_backward they compose (this module's; mhc.torch.ops passes an older
# kernel set's, which lacks the fold's kernels).

def hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower,
                          iterations: int, eps: float, pre_eps: float, post_mult: float,
                          pre_backward=hc_pre_backward):
    """hc_pre_backward's (dx, dfn, dscale, dbase) and dy_lower, the lower sublayer's dy from this
    dx as stored (post_lower: that sublayer's post)."""
    dx, dfn, dscale, dbase = pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next,
                                          iterations, eps, pre_eps, post_mult)
    return dx, dfn, dscale, dbase, _dy(post_lower, dx, x.dtype).reshape(du.shape)


def hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations: int, eps: float,
                      pre_eps: float, post_mult: float, pre_backward=hc_pre_backward):
    """A sublayer's whole backward after its VJP, its dy having come from above: hc_post_backward's
    dpost and dcomb fed into hc_pre_backward -> (dx, dfn, dscale, dbase)."""
    dpost, dcomb = _dpost_dcomb(y, x, dx_next)
    return pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps,
                        pre_eps, post_mult)


def hc_joint_backward_lower(x, y, fn, scale, base, mix, du, dx_next, post_lower, iterations: int,
                            eps: float, pre_eps: float, post_mult: float,
                            pre_backward=hc_pre_backward):
    """hc_joint_backward and dy_lower, as hc_pre_backward_lower adds it to hc_pre_backward."""
    dx, dfn, dscale, dbase = hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations,
                                               eps, pre_eps, post_mult, pre_backward)
    return dx, dfn, dscale, dbase, _dy(post_lower, dx, x.dtype).reshape(du.shape)


# The sublayer's pre-norm fused in (the *_norm ops; docs/PreNorm.md): o = rms_norm(u, weight)
# is what the sublayer reads, and the backward takes o's cotangent g, makes u again from x and
# mix, and passes du = rms_norm's gradient on (in the compute dtype: the kernels keep it in f32).

def rms_norm(u, weight, eps: float):
    """torch.nn.RMSNorm's o = u * rsqrt(mean(u^2) + eps) * weight, reduced in f32 (f64 for f64
    u), stored like u."""
    cd = compute_dtype(u)
    uf = u.to(cd)
    r = torch.rsqrt((uf * uf).mean(-1, keepdim=True) + eps)
    return (uf * r * weight.to(cd)).to(u.dtype)


def rms_norm_backward(u, weight, g, eps: float):
    """(du, dweight) of rms_norm: du = r w g - u r^3 sum(w g u) / C (compute dtype), dweight =
    sum over tokens of g u r (weight's dtype)."""
    cd = compute_dtype(u)
    C = u.shape[-1]
    uf, gf = u.reshape(-1, C).to(cd), g.reshape(-1, C).to(cd)
    r = torch.rsqrt((uf * uf).mean(-1, keepdim=True) + eps)
    wg = weight.to(cd) * gf
    k = r * r * r * (wg * uf).sum(-1, keepdim=True) / C
    du = (r * wg - k * uf).reshape(u.shape)
    return du, (gf * uf * r).sum(0).to(weight.dtype)


def hc_pre_norm(x, fn, scale, base, weight, iterations: int, eps: float, pre_eps: float,
                post_mult: float, norm_eps: float):
    """hc_pre with the pre-norm: (o, post, comb, mix)."""
    u, post, comb, mix = hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    return rms_norm(u, weight, norm_eps), post, comb, mix


def hc_pre_mixed_norm(x, mix, scale, base, weight, iterations: int, eps: float, pre_eps: float,
                      post_mult: float, norm_eps: float):
    """hc_pre_mixed with the pre-norm: (o, post, comb)."""
    u, post, comb = hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult)
    return rms_norm(u, weight, norm_eps), post, comb


def _norm_du(x, mix, scale, base, weight, g, attrs, norm_eps):
    """(du, dweight) from o's cotangent g, u made again from x and mix."""
    u = hc_pre_mixed(x, mix, scale, base, *attrs)[0]
    return rms_norm_backward(u, weight, g, norm_eps)


def hc_pre_backward_norm(x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next,
                         iterations: int, eps: float, pre_eps: float, post_mult: float,
                         norm_eps: float, pre_backward=hc_pre_backward):
    """hc_pre_backward with the pre-norm: (dx, dfn, dscale, dbase, dweight)."""
    attrs = (iterations, eps, pre_eps, post_mult)
    du, dw = _norm_du(x, mix, scale, base, weight, g, attrs, norm_eps)
    return (*pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, *attrs), dw)


def hc_pre_backward_lower_norm(x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next,
                               post_lower, iterations: int, eps: float, pre_eps: float,
                               post_mult: float, norm_eps: float, pre_backward=hc_pre_backward):
    """hc_pre_backward_lower with the pre-norm: (dx, dfn, dscale, dbase, dweight, dy_lower)."""
    dx, dfn, dscale, dbase, dw = hc_pre_backward_norm(
        x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, iterations, eps, pre_eps,
        post_mult, norm_eps, pre_backward)
    return dx, dfn, dscale, dbase, dw, _dy(post_lower, dx, x.dtype).reshape(g.shape)


def hc_joint_backward_norm(x, y, fn, scale, base, mix, weight, g, dx_next, iterations: int,
                           eps: float, pre_eps: float, post_mult: float, norm_eps: float,
                           pre_backward=hc_pre_backward):
    """hc_joint_backward with the pre-norm: (dx, dfn, dscale, dbase, dweight)."""
    attrs = (iterations, eps, pre_eps, post_mult)
    du, dw = _norm_du(x, mix, scale, base, weight, g, attrs, norm_eps)
    return (*hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, *attrs,
                               pre_backward=pre_backward), dw)


def hc_joint_backward_lower_norm(x, y, fn, scale, base, mix, weight, g, dx_next, post_lower,
                                 iterations: int, eps: float, pre_eps: float, post_mult: float,
                                 norm_eps: float, pre_backward=hc_pre_backward):
    """hc_joint_backward_lower with the pre-norm: (dx, dfn, dscale, dbase, dweight, dy_lower)."""
    dx, dfn, dscale, dbase, dw = hc_joint_backward_norm(
        x, y, fn, scale, base, mix, weight, g, dx_next, iterations, eps, pre_eps, post_mult,
        norm_eps, pre_backward)
    return dx, dfn, dscale, dbase, dw, _dy(post_lower, dx, x.dtype).reshape(g.shape)
