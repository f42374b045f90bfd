"""PyTorch version of one mHC sublayer's forward (spec /work/shared/mhc-spec.md section 3).

The baselines the benchmark times (eager and torch.compile) and the reference the generated
kernels are checked against. Same math as python/mhc/reference.py (numpy), written with torch ops
so it runs on the GPU; ``check_against_numpy`` proves the two agree.

Storage: x, y, u, x_next in the input dtype (bf16); everything else f32, reductions in f32
(``compute=torch.float64`` gives a float64 reference for checks).
"""

from __future__ import annotations

import torch

EPS_RMS = 1e-6
EPS_PRE = 1e-6
POST_MULT = 2.0
SINKHORN_ITERS = 20
SINKHORN_EPS = 1e-6


def norm_project(x, fn, eps=EPS_RMS, compute=torch.float32):
    """mix[t] = (v @ fn^T) * rsqrt(mean(v^2) + eps), v = x[t] flattened stream-major. [T, M]"""
    T, n, C = x.shape
    v = x.reshape(T, n * C).to(compute)
    sqrsum = (v * v).sum(-1, keepdim=True)
    return (v @ fn.to(compute).t()) * torch.rsqrt(sqrsum / (n * C) + eps)


def split_mixes(mix, scale, base, n, post_mult=POST_MULT, pre_eps=EPS_PRE):
    s = scale.to(mix.dtype)
    expanded = torch.cat([s[0].expand(n), s[1].expand(n), s[2].expand(n * n)])
    a = mix * expanded + base.to(mix.dtype)
    pre = torch.sigmoid(a[:, :n]) + pre_eps
    post = torch.sigmoid(a[:, n:2 * n]) * post_mult
    logits = a[:, 2 * n:].reshape(-1, n, n)  # logits[t, i, j] = a[t, 2n + i*n + j]
    return pre, post, logits


def sinkhorn(logits, iterations=SINKHORN_ITERS, eps=SINKHORN_EPS):
    P = torch.softmax(logits, dim=-1) + eps          # over j, row max subtracted by softmax
    P = P / (P.sum(-2, keepdim=True) + eps)          # over the source index i
    for _ in range(iterations - 1):
        P = P / (P.sum(-1, keepdim=True) + eps)
        P = P / (P.sum(-2, keepdim=True) + eps)
    return P


def pre_apply(x, pre):
    """u[t, c] = sum_i pre[t, i] * x[t, i, c], f32 accumulation, stored like x."""
    return torch.einsum("ti,tic->tc", pre, x.to(pre.dtype)).to(x.dtype)


def post_res(y, x, post, comb):
    """x_next[t, j, c] = post[t, j] * y[t, c] + sum_i comb[t, i, j] * x[t, i, c], stored like x."""
    w = post.dtype
    out = post[:, :, None] * y.to(w)[:, None, :] + torch.einsum("tij,tic->tjc", comb, x.to(w))
    return out.to(x.dtype)


# ---- the kernels the generated code forms (spec section 7), as torch functions ------------------

def pre_kernel(x, mix, scale, base):
    """split + sinkhorn + pre_apply from a token's mix: returns (u, post, comb)."""
    n = x.shape[1]
    pre, post, logits = split_mixes(mix, scale, base, n)
    comb = sinkhorn(logits)
    return pre_apply(x, pre), post, comb


def post_kernel(y, x, post, comb, fn_next):
    """post_res of this layer + norm_project of the next: returns (x_next, mix_next)."""
    x_next = post_res(y, x, post, comb)
    return x_next, norm_project(x_next, fn_next)


def sublayer(x, y, fn, scale, base):
    """One full sublayer forward from x: coefficients, Sinkhorn, pre_apply, post_res.

    y stands for F(u) (the attention/FFN output), given so that only mHC's own work is timed.
    Returns (u, x_next).
    """
    mix = norm_project(x, fn)
    u, post, comb = pre_kernel(x, mix, scale, base)
    return u, post_res(y, x, post, comb)


def make_inputs(T, n, C, dtype=torch.bfloat16, device="cuda", seed=0):
    """Random inputs with the paper's scales (alpha = 0.01 would make every mix tiny; larger values
    exercise sigmoid/Sinkhorn away from their flat spots)."""
    g = torch.Generator(device=device).manual_seed(seed)
    M = n * n + 2 * n
    x = torch.randn(T, n, C, generator=g, device=device).to(dtype)
    y = torch.randn(T, C, generator=g, device=device).to(dtype)
    fn = torch.randn(M, n * C, generator=g, device=device) / (n * C) ** 0.5
    scale = torch.tensor([0.5, 0.7, 1.3], device=device)
    base = torch.randn(M, generator=g, device=device) * 0.5
    return dict(x=x, y=y, fn=fn, scale=scale, base=base)


def check_against_numpy(T=64, n=4, C=96, seed=1):
    """Max relative error of the torch forward against mhc.reference (numpy, f64) on CPU."""
    import numpy as np
    from mhc import reference as ref

    inp = make_inputs(T, n, C, device="cpu", seed=seed)
    x64 = inp["x"].double()
    mix = norm_project(inp["x"], inp["fn"], compute=torch.float64)
    pre, post, logits = split_mixes(mix, inp["scale"].double(), inp["base"].double(), n)
    comb = sinkhorn(logits)
    u = torch.einsum("ti,tic->tc", pre, x64)
    xn = post[:, :, None] * inp["y"].double()[:, None, :] + torch.einsum("tij,tic->tjc", comb, x64)

    xs, ys = x64.numpy(), inp["y"].double().numpy()
    rmix = ref.norm_project(xs, inp["fn"].double().numpy(), dtype=np.float64)
    rpre, rpost, rlog = ref.split_mixes(rmix, inp["scale"].double().numpy(),
                                        inp["base"].double().numpy(), dtype=np.float64)
    rcomb = ref.sinkhorn(rlog, dtype=np.float64)
    ru = ref.pre_apply(xs, rpre, dtype=np.float64)
    rxn = ref.post_res(ys, xs, rpost, rcomb, dtype=np.float64)

    def rel(a, b):
        return float(np.abs(a.numpy() - b).max() / max(np.abs(b).max(), 1e-30))

    return {"mix": rel(mix, rmix), "comb": rel(comb, rcomb), "u": rel(u, ru), "x_next": rel(xn, rxn)}
