"""The mhc:: custom ops (CPU implementation = mhc.torch.reference) against the numpy golden model.

float64: agreement to 1e-12 relative (the same formulas, different summation order).
bf16/f16 activations: the outputs stored in bf16/f16 within 1e-2 relative (one storage rounding,
as the kernels), f32 coefficients within 1e-5 relative of float64 (float32 arithmetic).
Random data only (seeded), never zeros.
"""

import functools

import numpy as np
import pytest
import torch

import mhc.torch  # noqa: F401  registers torch.ops.mhc
from mhc import reference as R
from mhc.testing import relative_error
from mhc.torch import reference as TR

# an all-zero reference fails anything but an exact zero
relerr = functools.partial(relative_error, zero_ref_norm=1e-300)

ATTRS = (20, 1e-6, 1e-6, 2.0)


def make(n, C, lead=(2, 3), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*lead, n, C, generator=g, dtype=torch.float64).to(dtype)
    fn = (torch.randn(M, n * C, generator=g, dtype=torch.float64) * 0.2).to(cd)
    scale = torch.tensor([0.6, 0.8, 1.1], dtype=cd)
    base = (torch.randn(M, generator=g, dtype=torch.float64) * 0.5).to(cd)
    y = torch.randn(*lead, C, generator=g, dtype=torch.float64).to(dtype)
    return x, fn, scale, base, y


def np64(t):
    return t.detach().double().numpy()


def golden_pre(x, fn, scale, base):
    mix = R.norm_project(np64(x), np64(fn), dtype=np.float64)
    pre, post, logits = R.split_mixes(mix, np64(scale), np64(base), dtype=np.float64)
    comb = R.sinkhorn(logits, dtype=np.float64)
    return R.pre_apply(np64(x), pre), post, comb, mix, pre, logits


@pytest.mark.parametrize("n,C", [(1, 5), (2, 7), (4, 16), (8, 3)])
def test_forward_ops_float64(n, C):
    x, fn, scale, base, y = make(n, C)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    gu, gpost, gcomb, gmix, _, _ = golden_pre(x, fn, scale, base)
    for got, ref in ((u, gu), (post, gpost), (comb, gcomb), (mix, gmix)):
        assert relerr(got, ref) < 1e-12
    x_next = torch.ops.mhc.hc_post(y, x, post, comb)
    assert relerr(x_next, R.post_res(np64(y), np64(x), gpost, gcomb)) < 1e-12


@pytest.mark.parametrize("n,C", [(1, 5), (4, 16), (3, 9)])
def test_backward_ops_float64(n, C):
    x, fn, scale, base, y = make(n, C, seed=1)
    g = torch.Generator().manual_seed(5)
    dx_next = torch.randn(x.shape, generator=g, dtype=torch.float64)
    du = torch.randn(y.shape, generator=g, dtype=torch.float64)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    dy, dpost, dcomb = torch.ops.mhc.hc_post_backward(y, x, post, comb, dx_next)
    rdy, rdx_res, rdpost, rdcomb = R.post_res_backward(np64(y), np64(x), np64(post), np64(comb),
                                                       np64(dx_next))
    for got, ref in ((dy, rdy), (dpost, rdpost), (dcomb, rdcomb)):
        assert relerr(got, ref) < 1e-12
    dx, dfn, dscale, dbase = torch.ops.mhc.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb,
                                                           dx_next, *ATTRS)
    _, _, _, gmix, pre, logits = golden_pre(x, fn, scale, base)
    rdx_pre, rdpre = R.pre_apply_backward(np64(x), pre, np64(du))
    rdlogits = R.sinkhorn_backward(logits, rdcomb)
    rdmix, rdscale, rdbase = R.split_mixes_backward(gmix, np64(scale), np64(base), rdpre, rdpost,
                                                    rdlogits)
    rdx_np, rdfn = R.norm_project_backward(np64(x), np64(fn), rdmix)
    assert relerr(dx, rdx_res + rdx_pre + rdx_np) < 1e-12   # the WHOLE dx, residual path included
    for got, ref in ((dfn, rdfn), (dscale, rdscale), (dbase, rdbase)):
        assert relerr(got, ref) < 1e-10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_ops(dtype):
    n, C = 4, 64
    x, fn, scale, base, y = make(n, C, dtype=dtype, seed=2)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    assert (u.dtype, post.dtype, comb.dtype, mix.dtype) == (dtype,) + (torch.float32,) * 3
    gu, gpost, gcomb, gmix, _, _ = golden_pre(x, fn, scale, base)   # float64 of the stored inputs
    act_tol = 1e-2 if dtype != torch.float32 else 1e-5
    assert relerr(u, gu) < act_tol
    for got, ref in ((post, gpost), (comb, gcomb), (mix, gmix)):
        assert relerr(got, ref) < 1e-5
    x_next = torch.ops.mhc.hc_post(y, x, post, comb)
    assert x_next.dtype == dtype
    assert relerr(x_next, R.post_res(np64(y), np64(x), gpost, gcomb)) < act_tol
    dx_next = torch.randn(x.shape).to(dtype)
    dy, dpost, dcomb = torch.ops.mhc.hc_post_backward(y, x, post, comb, dx_next)
    rdy, _, rdpost, rdcomb = R.post_res_backward(np64(y), np64(x), gpost, gcomb, np64(dx_next))
    assert dy.dtype == dtype and relerr(dy, rdy) < act_tol
    assert relerr(dpost, rdpost) < 1e-5 and relerr(dcomb, rdcomb) < 1e-5


def _f64_inputs(n=3, C=5):
    x, fn, scale, base, y = make(n, C, lead=(2,), seed=3)
    return [t.clone().requires_grad_() for t in (x, fn, scale, base, y)]


def test_gradcheck_hc_pre_op():
    x, fn, scale, base, _ = _f64_inputs()
    f = lambda *a: torch.ops.mhc.hc_pre(*a, *ATTRS)[:3]   # noqa: E731 - mix has no gradient
    assert torch.autograd.gradcheck(f, (x, fn, scale, base))


def test_gradcheck_hc_post_op():
    x, fn, scale, base, y = _f64_inputs()
    with torch.no_grad():
        _, post, comb, _ = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    post, comb = post.clone().requires_grad_(), comb.clone().requires_grad_()
    assert torch.autograd.gradcheck(torch.ops.mhc.hc_post, (y, x, post, comb))


def test_opcheck_all_ops():
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration."""
    x, fn, scale, base, y = make(4, 8, lead=(3,), dtype=torch.float32, seed=4)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    dx_next = torch.randn_like(x)
    cases = [
        (torch.ops.mhc.hc_pre.default, (x, fn, scale, base, *ATTRS)),
        (torch.ops.mhc.hc_post.default, (y, x, post, comb)),
        (torch.ops.mhc.hc_post_backward.default, (y, x, post, comb, dx_next)),
        (torch.ops.mhc.hc_pre_backward.default,
         (x, fn, scale, base, mix, torch.randn_like(u), torch.randn_like(post),
          torch.randn_like(comb), dx_next, *ATTRS)),
        (torch.ops.mhc.hc_pre_mixed.default, (x, mix, scale, base, *ATTRS)),
        (torch.ops.mhc.hc_post_project.default, (y, x, post, comb, fn, *ATTRS)),
        (torch.ops.mhc.hc_pre_backward_lower.default,
         (x, fn, scale, base, mix, torch.randn_like(u), torch.randn_like(post),
          torch.randn_like(comb), dx_next, torch.rand_like(post), *ATTRS)),
        (torch.ops.mhc.hc_joint_backward.default,
         (x, y, fn, scale, base, mix, torch.randn_like(u), dx_next, *ATTRS)),
        (torch.ops.mhc.hc_joint_backward_lower.default,
         (x, y, fn, scale, base, mix, torch.randn_like(u), dx_next, torch.rand_like(post), *ATTRS)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chain_halves_are_hc_pre_and_hc_post(dtype):
    """hc_pre_mixed from hc_pre's mix gives hc_pre's u/post/comb, and hc_post_project gives hc_post's
    x_next and the mix hc_pre computes from it: bit for bit (what recomputation and the chain
    rely on)."""
    x, fn, scale, base, y = make(4, 8, lead=(2, 3), dtype=dtype, seed=7)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    for a, b in zip(torch.ops.mhc.hc_pre_mixed(x, mix, scale, base, *ATTRS), (u, post, comb)):
        assert torch.equal(a, b)
    fn_next = torch.randn_like(fn) * 0.1
    x_next, mix_next = torch.ops.mhc.hc_post_project(y, x, post, comb, fn_next, *ATTRS)
    assert torch.equal(x_next, torch.ops.mhc.hc_post(y, x, post, comb))
    assert torch.equal(mix_next, torch.ops.mhc.hc_pre(x_next, fn_next, scale, base, *ATTRS)[3])


def _fold_inputs(n, dtype):
    """A sublayer's backward inputs (x, fn, scale, base, y, mix, du, dx_next), and {post, comb,
    lower: the lower sublayer's (y, x, post, comb)}."""
    C = 8
    x, fn, scale, base, y = make(n, C, lead=(2, 3), dtype=dtype, seed=11)
    x_lower, _, _, _, y_lower = make(n, C, lead=(2, 3), dtype=dtype, seed=12)
    _, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    _, post_lower, comb_lower, _ = torch.ops.mhc.hc_pre(x_lower, fn, scale, base, *ATTRS)
    g = torch.Generator().manual_seed(13)
    du = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    dx_next = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    return ((x, fn, scale, base, y, mix, du, dx_next),
            dict(post=post, comb=comb, lower=(y_lower, x_lower, post_lower, comb_lower)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 3, 4])
def test_fold_ops_are_their_compositions(n, dtype):
    """The dy fold's ops give what the ops they replace give, bit for bit (the same reference
    math): dy_lower is the lower sublayer's hc_post_backward dy of this dx, hc_joint_backward is
    hc_post_backward's dpost/dcomb fed into hc_pre_backward."""
    ops = torch.ops.mhc
    (x, fn, scale, base, y, mix, du, dx_next), a = _fold_inputs(n, dtype)
    lower = a["lower"]
    _, dpost, dcomb = ops.hc_post_backward(y, x, a["post"], a["comb"], dx_next)
    grads = ops.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, *ATTRS)
    dy_lower = ops.hc_post_backward(*lower, grads[0])[0]
    expected = (*grads, dy_lower)
    assert dy_lower.dtype == dtype and dy_lower.shape == (2, 3, 8)
    assert all(t.abs().sum() > 0 for t in expected)          # nothing vanished
    got = {
        "hc_pre_backward_lower": ops.hc_pre_backward_lower(
            x, fn, scale, base, mix, du, dpost, dcomb, dx_next, lower[2], *ATTRS),
        "hc_joint_backward": ops.hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next,
                                                   *ATTRS) + (dy_lower,),
        "hc_joint_backward_lower": ops.hc_joint_backward_lower(
            x, y, fn, scale, base, mix, du, dx_next, lower[2], *ATTRS),
    }
    for op, results in got.items():
        assert len(results) == 5, op
        for r, e in zip(results, expected):
            assert (r.shape, r.dtype) == (e.shape, e.dtype), op
            assert torch.equal(r, e), op


def test_fold_ops_on_an_older_kernel_set(monkeypatch):
    """On CUDA tensors whose kernel set predates the fold, its ops compose the set's hc_pre_backward
    kernels with PyTorch (not the reference's whole backward): here the "kernels" are the
    reference hc_pre_backward, so the results equal the reference ops' bit for bit."""
    from mhc.torch import ops as mops
    (x, fn, scale, base, y, mix, du, dx_next), a = _fold_inputs(4, torch.bfloat16)
    dpost, dcomb = torch.randn_like(a["post"]), torch.randn_like(a["comb"])
    post_lower = a["lower"][2]
    calls = {
        "hc_pre_backward_lower": (x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower),
        "hc_joint_backward": (x, y, fn, scale, base, mix, du, dx_next),
        "hc_joint_backward_lower": (x, y, fn, scale, base, mix, du, dx_next, post_lower),
    }
    expected = {op: getattr(TR, op)(*args, *ATTRS) for op, args in calls.items()}
    launched = []

    class OlderSet:
        @staticmethod
        def run_if_built(op, *args):
            return None                     # no fold kernels in this set

        @staticmethod
        def run(op, *args):
            launched.append(op)
            return TR.hc_pre_backward(*args)

    monkeypatch.setattr(mops, "_on_gpu", lambda t: True)
    monkeypatch.setattr(mops, "_kernels", lambda: OlderSet)
    for op, args in calls.items():
        got = getattr(mops, op)(*args, *ATTRS)
        assert len(got) == len(expected[op]), op
        for r, e in zip(got, expected[op]):
            assert torch.equal(r, e), op
    assert launched == ["hc_pre_backward"] * 3


def test_fold_ops_bad_inputs():
    ops = torch.ops.mhc
    (x, fn, scale, base, y, mix, du, dx_next), a = _fold_inputs(4, torch.bfloat16)
    dpost, dcomb = torch.randn_like(a["post"]), torch.randn_like(a["comb"])
    post_lower = a["lower"][2]
    with pytest.raises(ValueError, match="mhc::hc_pre_backward_lower: post_lower has dtype"):
        ops.hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next,
                                  post_lower.to(torch.bfloat16), *ATTRS)
    with pytest.raises(ValueError, match="mhc::hc_joint_backward_lower: post_lower has shape "
                                         r"\(2, 3, 3\), expected \(2, 3, 4\)"):
        ops.hc_joint_backward_lower(x, y, fn, scale, base, mix, du, dx_next,
                                    post_lower[..., :3].contiguous(), *ATTRS)
    with pytest.raises(ValueError, match="mhc::hc_joint_backward: y has dtype"):
        ops.hc_joint_backward(x, y.float(), fn, scale, base, mix, du, dx_next, *ATTRS)
    with pytest.raises(ValueError, match="mhc::hc_joint_backward: dx_next has shape"):
        ops.hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next[:1], *ATTRS)
    with pytest.raises(ValueError, match="mhc::hc_pre_backward_lower: iterations"):
        ops.hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower,
                                  0, 1e-6, 1e-6, 2.0)


def test_fake_impls_match_real_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, fn, scale, base, y = make(2, 6, lead=(0, 3), dtype=torch.bfloat16)   # T = 0 too
    real = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.mhc.hc_pre(*(mode.from_tensor(t) for t in (x, fn, scale, base)), *ATTRS)
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())


def test_zero_tokens():
    x, fn, scale, base, y = make(4, 8, lead=(0,), dtype=torch.bfloat16)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    assert u.shape == (0, 8) and comb.shape == (0, 4, 4)
    assert torch.ops.mhc.hc_post(y, x, post, comb).shape == (0, 4, 8)


BAD = [
    # (what, mutate(args) -> args, message fragment)
    ("x dtype", lambda a: [a[0].to(torch.int32)] + a[1:], "dtype"),
    ("fn dtype", lambda a: [a[0], a[1].to(torch.bfloat16)] + a[2:], "fn has dtype"),
    ("fn shape", lambda a: [a[0], a[1][:, :-1]] + a[2:], "fn has shape"),
    ("scale shape", lambda a: a[:2] + [a[2][:2]] + a[3:], "scale has shape"),
    ("base shape", lambda a: a[:3] + [a[3][:5]], "base has shape"),
    ("x not contiguous", lambda a: [a[0].transpose(-1, -2).contiguous().transpose(-1, -2)] + a[1:],
     "not contiguous"),
    ("fn not contiguous", lambda a: [a[0], a[1].t().contiguous().t()] + a[2:], "not contiguous"),
    ("x rank", lambda a: [a[0].reshape(-1)] + a[1:], r"must be \[\.\.\., n, C\]"),
    ("fn device", lambda a: [a[0], a[1].to("meta")] + a[2:], "fn is on meta but x is on cpu"),
    ("n mismatch", lambda a: [a[0][..., :3, :].contiguous()] + a[1:], "fn has shape"),
]


@pytest.mark.parametrize("what,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(what, mutate, message):
    x, fn, scale, base, _ = make(4, 8, lead=(3,), dtype=torch.float32)
    args = mutate([x, fn, scale, base])
    with pytest.raises(ValueError, match=message) as info:
        torch.ops.mhc.hc_pre(*args, *ATTRS)
    assert "mhc::hc_pre" in str(info.value)


def test_bad_post_inputs():
    x, fn, scale, base, y = make(4, 8, lead=(3,), dtype=torch.bfloat16)
    _, post, comb, _ = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    with pytest.raises(ValueError, match="y has dtype"):
        torch.ops.mhc.hc_post(y.float(), x, post, comb)
    with pytest.raises(ValueError, match="comb has shape"):
        torch.ops.mhc.hc_post(y, x, post, comb[:2])
    with pytest.raises(ValueError, match="iterations"):
        torch.ops.mhc.hc_pre(x, fn, scale, base, 0, 1e-6, 1e-6, 2.0)
    with pytest.raises(ValueError, match="dx_next has shape"):
        torch.ops.mhc.hc_post_backward(y, x, post, comb, x[:1])


def test_reference_sinkhorn_is_doubly_stochastic():
    logits = torch.randn(10, 4, 4, dtype=torch.float64)
    P = TR.sinkhorn(logits)
    # The last normalisation is over the source index: columns sum to 1 up to eps; rows after 20
    # iterations are close but not exact (Sinkhorn converges, it does not finish).
    assert torch.allclose(P.sum(-2), torch.ones(10, 4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(P.sum(-1), torch.ones(10, 4, dtype=torch.float64), atol=2e-2)
    np.testing.assert_allclose(P.numpy(), R.sinkhorn(logits.numpy()), rtol=1e-12)
