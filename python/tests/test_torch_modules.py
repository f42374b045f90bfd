"""mhc.torch modules: HyperConnection (mhc and hc), Expand, Collapse, Head.

Golden model: mhc.reference (numpy float64) through a sublayer F(u) = tanh(u @ W).
Tolerances: float64 1e-10 relative; bf16 activations: x_next 1e-2, gradients 3e-2 relative to the
float64 golden run on the same (bf16-stored) inputs (u, y, x_next and dx are bf16-rounded along the
way, as on the GPU). Both op paths are tested: backend="reference" (plain PyTorch functions) and the
mhc:: custom ops that backend="cuda" uses (backend="ops": on the CPU their implementation is the
reference math).
"""

import functools

import numpy as np
import pytest
import torch
from torch import nn

import mhc.torch as mt
from mhc import reference as R
from mhc.testing import relative_error
from sublayers import PreNormFFN

# an all-zero reference fails anything but an exact zero
relerr = functools.partial(relative_error, zero_ref_norm=1e-300)

N, C = 4, 16


class Tanh(nn.Module):
    """F(u) = tanh(u @ W) with a fixed W; W kept in float64 and cast to u's dtype."""

    def __init__(self, C, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(C, C, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, u):
        return torch.tanh(u @ self.W.to(u.dtype))


def np_F(W):
    return lambda u: np.tanh(u @ W)


def np_F_vjp(W):
    return lambda u, dy: (dy * (1 - np.tanh(u @ W) ** 2)) @ W.T


@pytest.fixture(params=["reference", "ops"])
def path(request):
    """The backend to build with: 'reference' (plain PyTorch functions) or 'ops' (the mhc:: custom
    ops, the cuda backend's path)."""
    return request.param


def make_hc(n=N, C=C, dtype=torch.float64, recompute=True, seed=0, backend="reference", **kw):
    hc = mt.HyperConnection(n, C, Tanh(C, seed), backend=backend, recompute=recompute, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # away from the init so every term of the gradient is non-trivial
        hc.fn.copy_(torch.randn(hc.fn.shape, generator=g) * 0.1)
        hc.scale.copy_(torch.tensor([0.6, 0.8, 1.1]))
        hc.base.copy_(torch.randn(hc.base.shape, generator=g) * 0.5)
    return hc.double() if dtype == torch.float64 else hc


def golden(hc, x, dout):
    p = lambda t: t.detach().double().numpy()   # noqa: E731
    W = p(hc.sublayer.W)
    args = (p(x), p(hc.fn), p(hc.scale), p(hc.base))
    x_next = R.mhc_sublayer(*args, np_F(W), dtype=np.float64)
    grads = R.mhc_sublayer_backward(*args, np_F(W), np_F_vjp(W), p(dout), dtype=np.float64)
    return x_next, grads


@pytest.mark.parametrize("recompute", [False, True])
def test_module_matches_golden_float64(path, recompute):
    hc = make_hc(recompute=recompute, backend=path)
    x = torch.randn(2, 3, N, C, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(2, 3, N, C, dtype=torch.float64)
    out = hc(x)
    dx, dfn, dscale, dbase = torch.autograd.grad(out, (x, hc.fn, hc.scale, hc.base), dout)
    ref_out, ref = golden(hc, x, dout)
    assert relerr(out, ref_out) < 1e-12
    for got, name in ((dx, "dx"), (dfn, "dfn"), (dscale, "dscale"), (dbase, "dbase")):
        assert relerr(got, ref[name]) < 1e-10, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_module_low_precision(path, dtype):
    # Seeded: dscale is a 3-vector summed over the tokens with cancellation, so its relative error
    # has a long tail over random inputs (median 0.6%, 1.8% worst of 40 seeds, 3.6% once seen).
    hc = make_hc(C=64, dtype=dtype, backend=path)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, N, 64, generator=g).to(dtype).requires_grad_()
    dout = torch.randn(8, N, 64, generator=g).to(dtype)
    out = hc(x)
    assert out.dtype == dtype
    dx, dfn, dscale, dbase = torch.autograd.grad(out, (x, hc.fn, hc.scale, hc.base), dout)
    assert dx.dtype == dtype and dfn.dtype == torch.float32
    ref_out, ref = golden(hc, x, dout)
    assert relerr(out, ref_out) < 1e-2
    for got, name in ((dx, "dx"), (dfn, "dfn"), (dscale, "dscale"), (dbase, "dbase")):
        assert relerr(got, ref[name]) < 3e-2, name


@pytest.mark.parametrize("recompute", [False, True])
def test_gradcheck_module(path, recompute):
    hc = make_hc(n=3, C=5, recompute=recompute, iterations=4, backend=path)   # 4 Sinkhorn steps
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    params = (hc.fn, hc.scale, hc.base, hc.sublayer.W)

    def f(x, fn, scale, base, W):
        # x also feeds code outside the module: its gradients must add up with the linked dx.
        return hc(x) * 1.5 + x.sin(), fn.sum()   # fn.sum(): gradcheck needs every input used

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("recompute", [False, True])
def test_gradgradcheck_reference_backend(recompute):
    """Double backward (create_graph=True) on the reference backend: the backward recomputes the
    mix from x and fn instead of taking the saved one as a constant (without that,
    gradgradcheck fails: the second order through the coefficients is lost). The cuda backend
    has none: test_torch_native.py's test_cpp_steps_refuse_double_backward."""
    a = make_hc(n=2, C=4, seed=0, iterations=4, recompute=recompute)
    b = make_hc(n=2, C=4, seed=3, iterations=4, recompute=recompute)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    params = (a.fn, a.scale, a.base, b.fn, b.scale, b.base)
    assert torch.autograd.gradgradcheck(lambda x, *p: b(a(x)), (x, *params))


def test_double_backward_refused_on_the_cuda_path(path):
    """The cuda backend's steps (the mhc:: ops: 'ops') refuse create_graph=True with a clear
    error; the reference backend differentiates twice (test_gradgradcheck_reference_backend)."""
    hc = make_hc(n=2, C=4, iterations=4, backend=path)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    if path == "reference":
        (g,) = torch.autograd.grad(hc(x).sum(), x, create_graph=True)
        assert g.requires_grad
    else:
        with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not"):
            torch.autograd.grad(hc(x).sum(), x, create_graph=True)


def test_double_backward_refused_when_compiled():
    """Compiled, the cuda backend's backward is AOT autograd's: create_graph=True gives a
    gradient with a graph, and differentiating that refuses with PyTorch's error (not a silently
    wrong second order)."""
    hc = make_hc(n=2, C=4, iterations=4, backend="ops")
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    (g,) = torch.autograd.grad(torch.compile(hc, fullgraph=True)(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not currently support double backward"):
        g.sum().backward()


def test_gradcheck_two_layers_and_unused_output(path):
    a = make_hc(n=2, C=4, seed=0, iterations=4, backend=path)
    b = make_hc(n=2, C=4, seed=3, iterations=4, backend=path)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: b(a(x)), (x,))
    # An output that does not depend on x_next at all still gives x its pre-step gradient.
    hc = make_hc(n=2, C=4, backend=path)
    out = hc(x)
    (g,) = torch.autograd.grad(out[..., 0, :].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_link_is_private():
    """The sublayer sees only u; the module returns only x_next, which shares nothing with x."""
    hc = make_hc(recompute=False)
    seen = []
    hc.sublayer.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs)),
                                      with_kwargs=True)
    x = torch.randn(5, N, C, dtype=torch.float64, requires_grad=True)
    out = hc(x)
    (args, kwargs), = seen
    assert len(args) == 1 and kwargs == {} and args[0].shape == (5, C)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert all(s != 0 for s in out.stride())


def saved_bytes(run):
    """Bytes of the distinct storages that autograd saves during run() (outer saved-tensor hooks:
    HyperConnection's own recompute hooks forward everything but u to them)."""
    storages = {}

    def pack(t):
        if not isinstance(t, nn.Parameter) and not t._is_view() or t._base is not None:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    params = {p.untyped_storage().data_ptr() for p in run.params}
    return sum(b for ptr, b in storages.items() if ptr not in params), out


def test_recompute_saves_activation_memory():
    T, n, C = 64, 4, 32
    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        hc = mt.HyperConnection(n, C, PreNormFFN(C), backend="reference", recompute=recompute)
        x = torch.randn(T, n, C, requires_grad=True)
        run = lambda: hc(x)   # noqa: E731
        run.params = list(hc.parameters())
        nbytes, out = saved_bytes(run)
        dx, dfn = torch.autograd.grad(out.square().sum(), (x, hc.fn))
        results[recompute] = (nbytes, dx, dfn)
    saved_plain, saved_recompute = results[False][0], results[True][0]
    # recompute drops u (T*C f32, saved by the RMSNorm) and post/comb (T*(n + n*n) f32).
    expected = T * C * 4 + T * (n + n * n) * 4
    assert saved_plain - saved_recompute == expected, (saved_plain, saved_recompute)
    print(f"\nsaved activations, T={T} n={n} C={C} f32: {saved_plain} B without recompute, "
          f"{saved_recompute} B with ({saved_plain - saved_recompute} B less)")
    # Same gradients either way (the recomputed u is bit-identical).
    assert torch.equal(results[False][1], results[True][1])
    assert torch.equal(results[False][2], results[True][2])


def test_recompute_keeps_user_hooks_working():
    """Another saved-tensor hook (e.g. activation offloading) still sees the sublayer's tensors."""
    hc = mt.HyperConnection(2, 8, PreNormFFN(8), backend="reference", recompute=True)
    x = torch.randn(4, 2, 8, requires_grad=True)
    packed, unpacked = [], []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    def unpack(t):
        unpacked.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = hc(x)
    ref_dx, = torch.autograd.grad(out.sum(), x)
    assert any(s == (4, 16) for s in packed)   # the FFN's hidden activation went through them
    out2 = hc(x)
    dx2, = torch.autograd.grad(out2.sum(), x)
    assert torch.equal(ref_dx, dx2)


def tiny_lm(n=2, C=16, vocab=11, blocks=2, backend="reference", **kw):
    torch.manual_seed(0)
    layers = [nn.Embedding(vocab, C), mt.Expand(n)]
    layers += [mt.HyperConnection(n, C, PreNormFFN(C), backend=backend, layer=i, **kw)
               for i in range(blocks)]
    layers += [mt.Head(n, C), nn.RMSNorm(C), nn.Linear(C, vocab)]
    return nn.Sequential(*layers)


def _grads(model, tokens):
    loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def test_torch_compile_fullgraph_inductor():
    """The cuda backend's path (mhc:: ops, the pre->post link, recomputation) under
    torch.compile(fullgraph=True) with inductor: same loss and gradients as eager."""
    model = tiny_lm(backend="ops")
    tokens = torch.randint(0, 11, (2, 6))
    loss, grads = _grads(model, tokens)
    compiled = torch.compile(model, fullgraph=True)
    closs, cgrads = _grads(compiled, tokens)
    assert torch.allclose(loss, closs, rtol=1e-5)
    for g, cg in zip(grads, cgrads):
        assert torch.allclose(g, cg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("recompute", [False, True])
def test_torch_compile_fullgraph_graph_capture(path, recompute):
    """Both paths, dynamic token counts: dynamo + AOTAutograd capture the whole model in one graph
    (aot_eager: the same capture as inductor without its slow CPU code generation). 3 Sinkhorn
    iterations: the reference path traces every iteration, 20 would only cost time."""
    model = tiny_lm(recompute=recompute, iterations=3, backend=path)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for shape in ((2, 6), (3, 5)):
        tokens = torch.randint(0, 11, shape)
        loss, grads = _grads(model, tokens)
        closs, cgrads = _grads(compiled, tokens)
        assert torch.allclose(loss, closs, rtol=1e-6)
        for g, cg in zip(grads, cgrads):
            assert torch.allclose(g, cg, rtol=1e-5, atol=1e-7)


def test_compiled_recompute_saves_the_coefficients():
    """Under torch.compile the recompute hooks are off (u stays saved), so recompute=True must not
    relaunch hc_pre_mixed in the backward just for post/comb: they are saved, the backward graph
    holds no pre op, and loss and gradients equal recompute=False's bit for bit."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    backward_ops = []

    def keep(gm, _):
        return make_boxed_func(gm.forward)

    def look(gm, _):
        backward_ops.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
        return keep(gm, _)

    results = []
    for recompute in (False, True):
        torch._dynamo.reset()
        model = tiny_lm(blocks=3, recompute=recompute, iterations=3, backend="ops")
        tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(4))
        compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep, bw_compiler=look))
        results.append(_grads(compiled, tokens))
    ops = torch.ops.mhc
    for targets in backward_ops:
        assert targets.count(ops.hc_pre_backward.default) == 3, targets
        assert ops.hc_pre_mixed.default not in targets and ops.hc_pre.default not in targets
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))


def test_gradcheck_under_compile():
    hc = make_hc(n=2, C=3, iterations=4, backend="ops")
    f = torch.compile(lambda x: hc(x), fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))


def test_training_loss_decreases():
    model = tiny_lm(blocks=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (4, 12), generator=g)
    losses = []
    for _ in range(40):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    hc = model[2]
    assert hc.fn.grad is not None and hc.scale.grad.abs().sum() > 0


def test_zero_tokens_forward_backward(path):
    hc = make_hc(backend=path)
    x = torch.randn(0, 3, N, C, dtype=torch.float64, requires_grad=True)
    out = hc(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.all(hc.fn.grad == 0)


def test_bad_module_inputs():
    hc = mt.HyperConnection(N, C, Tanh(C), backend="reference")
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 4, 16\]"):
        hc(torch.randn(2, 3, C))
    with pytest.raises(ValueError, match="dtype"):
        hc(torch.randint(0, 3, (2, N, C)))
    with pytest.raises(ValueError, match="not contiguous"):
        hc(torch.randn(2, C, N).transpose(-1, -2))
    with pytest.raises(ValueError, match="meta"):
        hc(torch.randn(2, N, C, device="meta"))
    bad = mt.HyperConnection(N, C, nn.Linear(C, C + 1), backend="reference")
    with pytest.raises(ValueError, match="sublayer must return"):
        bad(torch.randn(2, N, C))
    with pytest.raises(ValueError, match="backend"):
        mt.HyperConnection(N, C, Tanh(C), backend="triton")
    with pytest.raises(ValueError, match="mode"):
        mt.HyperConnection(N, C, Tanh(C), mode="static")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        mt.HyperConnection(N, C, Tanh(C), backend="cuda")(torch.randn(2, N, C))


def test_ops_backend_runs_the_custom_ops_anywhere():
    """backend='ops' (public, no patching): the mhc:: ops on the CPU, where they run the reference
    math -- the values of backend='reference', and a compiled graph of one node per op."""
    x = torch.randn(3, N, C, dtype=torch.float64)
    results = {}
    for backend in ("reference", "ops"):
        hc = make_hc()
        hc.backend = backend
        xr = x.clone().requires_grad_()
        out = hc(xr)
        out.backward(torch.ones_like(out))
        results[backend] = [out.detach(), xr.grad, hc.fn.grad, hc.scale.grad, hc.base.grad]
    for a, b in zip(results["reference"], results["ops"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    from mhc.torch import chain_pass
    graphs = []
    backend = chain_pass.passes_only_backend(lambda gm, backward: graphs.append(
        [str(node.target) for node in gm.graph.nodes if str(node.target).startswith("mhc.")]))
    hc = mt.HyperConnection(N, C, Tanh(C), backend="ops")
    xr = x.float().clone().requires_grad_()
    torch.compile(hc, fullgraph=True, backend=backend)(xr).sum().backward()
    assert graphs[0] == ["mhc.hc_pre.default", "mhc.hc_post.default"], graphs
    assert sorted(graphs[1]) == ["mhc.hc_post_backward.default", "mhc.hc_pre_backward.default"]


def test_paper_init():
    """alpha = 0.01; base gives pre = 1/n, post = 1, comb = J/n (exact with fn = 0)."""
    n = 4
    hc = mt.HyperConnection(n, 8, nn.Identity(), backend="reference")
    assert torch.equal(hc.scale.data, torch.full((3,), 0.01))
    assert hc.fn.abs().max() <= 0.01 and hc.fn.abs().max() > 0
    with torch.no_grad():
        hc.fn.zero_()
    x = torch.randn(5, n, 8)
    u, post, comb, mix = mt.reference.hc_pre(x, hc.fn, hc.scale, hc.base, *hc.attrs)
    assert torch.allclose(u, x.mean(-2), atol=1e-5)
    assert torch.allclose(post, torch.ones_like(post))
    assert torch.allclose(comb, torch.full_like(comb, 1 / n), atol=1e-6)


def test_hc_mode_matches_numpy_reference():
    n, C, layer = 3, 6, 4
    hc = mt.HyperConnection(n, C, Tanh(C), mode="hc", layer=layer).double()
    with torch.no_grad():
        hc.theta.normal_(0, 0.5)
        hc.scale.copy_(torch.tensor([0.3, 0.4, 0.5]))
    x = torch.randn(2, n, C, dtype=torch.float64, requires_grad=True)
    out = hc(x)
    p = lambda t: t.detach().numpy()   # noqa: E731
    th, b = p(hc.theta), p(hc.base)
    pre, post, res = R.hc_coefficients(p(x), th[0], th[1], th[2:], p(hc.scale), b[:n], b[n:2 * n],
                                       b[2 * n:].reshape(n, n).T)   # b_res in the paper's orientation
    u = R.pre_apply(p(x), pre)
    ref = R.post_res(np.tanh(u @ p(hc.sublayer.W)), p(x), post, res)
    assert relerr(out, ref) < 1e-12
    assert torch.autograd.gradcheck(lambda x: hc(x), (x,))


def test_hc_identity_init_is_a_plain_residual():
    n, C, layer = 4, 8, 6
    hc = mt.HyperConnection(n, C, Tanh(C), mode="hc", layer=layer)
    with torch.no_grad():
        hc.theta.zero_()
    x = torch.randn(3, n, C)
    y = hc.sublayer(x[:, layer % n])
    assert torch.allclose(hc(x), x + y[:, None, :], atol=1e-6)


def test_expand_collapse_head():
    h = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    x = mt.Expand(4)(h)
    assert x.shape == (2, 3, 4, 8) and x.is_contiguous()
    (dh,) = torch.autograd.grad(x, h, torch.ones_like(x))
    assert torch.equal(dh, torch.full_like(h, 4.0))
    assert torch.allclose(mt.Collapse()(x), h)
    assert torch.allclose(mt.Collapse(mean=False)(x), 4 * h)
    head = mt.Head(4, 8).double()
    with torch.no_grad():
        head.fn.normal_(0, 0.3)
    xs = torch.randn(5, 4, 8, dtype=torch.float64, requires_grad=True)
    v = xs.detach().reshape(5, 32).numpy()
    a = (v @ head.fn.detach().numpy().T) / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-6) \
        * head.scale.detach().numpy() \
        + head.base.detach().numpy()
    w = 1 / (1 + np.exp(-a)) + 1e-6
    assert relerr(head(xs), np.einsum("ti,tic->tc", w, xs.detach().numpy())) < 1e-12
    assert torch.autograd.gradcheck(head, (xs,))
    assert torch.allclose(mt.Head(4, 8)(mt.Expand(4)(h.float())), h.float(), atol=1e-2)


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_autocast_keeps_mhc_math_in_float32(mode):
    """Inside a bf16 autocast region the sublayer runs in bf16, the mHC math stays f32: the result
    equals the same model run with the sublayer's output rounded to bf16 by hand."""
    torch.manual_seed(0)
    C = 16
    sub = nn.Linear(C, C)
    hc = mt.HyperConnection(2, C, sub, mode=mode, backend="reference")
    x = torch.randn(5, 2, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hc(x)
    assert got.dtype == torch.float32

    class Rounded(nn.Module):
        def forward(self, u):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return sub(u)
    want = mt.HyperConnection(2, C, Rounded(), mode=mode, backend="reference")
    want.load_state_dict(hc.state_dict(), strict=False)
    assert torch.equal(got, want(x))


# ------------------------------------------------------------------------------------------------
# The sublayer's pre-norm handed to HyperConnection (norm=...; docs/PreNorm.md)
# ------------------------------------------------------------------------------------------------

def _norm_pair(backend, recompute=True, dtype=torch.float64, n=3, C=8, eps=1e-5):
    """(norm inside the sublayer, norm given to HyperConnection) with the same weights."""
    norm = nn.RMSNorm(C, eps=eps, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, C, dtype=dtype))
    inside = make_hc(n=n, C=C, dtype=dtype, recompute=recompute, iterations=4)
    W = inside.sublayer
    inside.sublayer = nn.Sequential(norm, W)
    fused = make_hc(n=n, C=C, dtype=dtype, recompute=recompute, iterations=4, backend=backend,
                    norm=nn.RMSNorm(C, eps=eps, dtype=dtype))
    with torch.no_grad():
        fused.norm.weight.copy_(norm.weight)
        fused.sublayer.W.copy_(W.W)
    return inside, fused


@pytest.mark.parametrize("recompute", [False, True])
def test_fused_norm_matches_the_norm_in_the_sublayer(path, recompute):
    """HyperConnection(norm=nn.RMSNorm) computes what the same RMSNorm inside the sublayer does
    (float64): output, dx and every parameter's gradient, the norm weight's included; the norm is
    reported fused."""
    inside, fused = _norm_pair(path, recompute)
    assert fused._fused_norm_module() is fused.norm and "norm fused" in repr(fused)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    w = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    results = []
    for m in (inside, fused):
        xx = x.clone().requires_grad_()
        out = m(xx)
        params = [m.fn, m.scale, m.base, m.sublayer[1].W if m is inside else m.sublayer.W,
                  m.sublayer[0].weight if m is inside else m.norm.weight]
        grads = torch.autograd.grad((out * w).sum(), [xx] + params)
        results.append((out, grads))
    (o0, g0), (o1, g1) = results
    assert torch.allclose(o1, o0, rtol=1e-12, atol=1e-14)
    for a, b, name in zip(g1, g0, ("dx", "dfn", "dscale", "dbase", "dW", "dweight")):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13), name


def test_gradcheck_fused_norm(path):
    """gradcheck in float64 through the fused norm (x also used outside, weight trained)."""
    _, hc = _norm_pair(path, n=2, C=5)
    x = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    params = (hc.fn, hc.scale, hc.base, hc.sublayer.W, hc.norm.weight)

    def f(x, fn, scale, base, W, weight):
        return hc(x) * 1.5 + x.sin(), fn.sum()

    assert torch.autograd.gradcheck(f, (x, *params))


def test_fused_norm_low_precision_and_default_eps():
    """bf16 activations with an f32 RMSNorm weight and eps=None: the weight is used in bf16 and
    eps is finfo(bf16).eps, as nn.RMSNorm on bf16 input would take it; the result agrees with the
    norm inside the sublayer within bf16 rounding, and the weight's gradient reaches the f32
    parameter."""
    torch.manual_seed(0)
    C = 32
    norm = nn.RMSNorm(C)
    inside = mt.HyperConnection(N, C, nn.Sequential(norm, nn.Linear(C, C)), backend="reference")
    fused = mt.HyperConnection(N, C, nn.Linear(C, C), backend="reference", norm=nn.RMSNorm(C))
    fused.load_state_dict({k.replace("sublayer.1", "sublayer").replace("sublayer.0", "norm"): v
                           for k, v in inside.state_dict().items()})
    x = torch.randn(4, 9, N, C).to(torch.bfloat16)
    inside_out = inside.to(torch.bfloat16)(x).float().detach()
    fused.sublayer.to(torch.bfloat16)
    out = fused(x)
    assert out.dtype == torch.bfloat16
    assert relerr(out.float(), inside_out.numpy()) < 2e-2
    out.float().sum().backward()
    assert fused.norm.weight.grad is not None and fused.norm.weight.grad.dtype == torch.float32


def test_norm_that_is_not_fused_runs_as_it_is(path):
    """A norm mhc does not compute (LayerNorm; an RMSNorm without weight; a subclass of RMSNorm)
    runs between mhc and the sublayer: the same as the norm inside the sublayer."""
    class ScaledRMSNorm(nn.RMSNorm):          # a subclass: its own forward
        def forward(self, u):
            return super().forward(u) * 2

    for norm in (nn.LayerNorm(8, dtype=torch.float64),
                 nn.RMSNorm(8, elementwise_affine=False, dtype=torch.float64),
                 ScaledRMSNorm(8, dtype=torch.float64)):
        hc = make_hc(n=3, C=8, iterations=4, backend=path, norm=norm)
        assert hc._fused_norm_module() is None and "norm fused" not in repr(hc)
        ref = make_hc(n=3, C=8, iterations=4)
        ref.sublayer = nn.Sequential(norm, ref.sublayer)
        x = torch.randn(5, 3, 8, dtype=torch.float64)
        assert torch.allclose(hc(x), ref(x), rtol=1e-12, atol=1e-14)


def test_fused_norm_recompute_saves_the_normed_row():
    """With recompute, the sublayer's saved input (o = norm(u), which the fused ops return) is
    not kept: it is made again in the backward (hc_pre_mixed_norm), as u is without a norm."""
    T, n, C = 64, 4, 32
    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        hc = mt.HyperConnection(n, C, PreNormFFN(C, norm=False), backend="reference",
                                recompute=recompute, norm=nn.RMSNorm(C))
        x = torch.randn(T, n, C, requires_grad=True)
        run = lambda: hc(x)   # noqa: E731
        run.params = list(hc.parameters())
        nbytes, out = saved_bytes(run)
        results[recompute] = (nbytes, torch.autograd.grad(out.square().sum(), (x, hc.norm.weight)))
    assert results[False][0] - results[True][0] == T * C * 4 + T * (n + n * n) * 4
    for a, b in zip(results[False][1], results[True][1]):
        assert torch.equal(a, b)


def test_fused_norm_bad_input():
    """A norm that is not a module, and the *_norm ops' own checks (a weight of the wrong shape or
    dtype, a bad norm_eps): clear errors naming the argument."""
    with pytest.raises(ValueError, match="norm must be a module"):
        mt.HyperConnection(2, 8, nn.Identity(), norm=3)
    x = torch.randn(3, 2, 8)
    fn, scale, base = torch.zeros(8, 16), torch.ones(3), torch.zeros(8)
    attrs = (2, 1e-6, 1e-6, 2.0)
    with pytest.raises(ValueError, match="hc_pre_norm: weight has shape"):
        torch.ops.mhc.hc_pre_norm(x, fn, scale, base, torch.ones(7), *attrs, 1e-6)
    with pytest.raises(ValueError, match="hc_pre_norm: weight has dtype"):
        torch.ops.mhc.hc_pre_norm(x, fn, scale, base, torch.ones(8, dtype=torch.float64), *attrs,
                                  1e-6)
    with pytest.raises(ValueError, match="norm_eps must be finite and > 0"):
        torch.ops.mhc.hc_pre_norm(x, fn, scale, base, torch.ones(8), *attrs, 0.0)
    mix = torch.zeros(3, 8)
    with pytest.raises(ValueError, match="hc_pre_backward_norm: g has shape"):
        torch.ops.mhc.hc_pre_backward_norm(x, fn, scale, base, mix, torch.ones(8),
                                           torch.zeros(3, 7), torch.zeros(3, 2),
                                           torch.zeros(3, 2, 2), torch.zeros_like(x), *attrs,
                                           1e-6)


def test_fused_norm_zero_tokens_and_leading_dims(path):
    """T = 0 (the weight's gradient comes back as zeros) and two leading dims with the fused norm."""
    _, hc = _norm_pair(path)
    x = torch.randn(0, 3, 3, 8, dtype=torch.float64, requires_grad=True)
    out = hc(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.all(hc.norm.weight.grad == 0)
    inside, hc = _norm_pair(path)
    x = torch.randn(2, 3, 4, 3, 8, dtype=torch.float64)
    assert torch.allclose(hc(x), inside(x), rtol=1e-12, atol=1e-14)
