"""mhc.torch's C++ launch path (mhc/torch/native.cpp) on the CPU, through the mock runtime: the
argument checks, and HyperConnection's C++ autograd steps -- which kernels run in the forward and
the backward, and which buffers they get (the dx link, the recomputation and its hand-over of u,
the chain, the dy fold); and through reference_runtime.py, whose kernels are the reference ops,
the numbers those steps compute. The kernels' numbers are checked on the H200 by
bench/check_torch_backend.py (C++ and Python paths against each other and against the reference
backend)."""

import pytest
import torch
from torch import nn

from mhc.torch import build_native, inductor_fallbacks, kernels, native
from mhc.torch.kernels import KernelSet, OP_BUFFERS
from mhc.torch.modules import HyperConnection

from test_torch_kernels import KEY, N, C, inputs, launches, mock, write_set  # noqa: F401

ATTRS = (20, 1e-6, 1e-6, 2.0)
NORM_EPS = 1e-5   # the reference kernel set's pre-norm eps (its *_norm ops)


@pytest.fixture(scope="module")
def built():
    module = native.load()
    assert module is not None, f"the C++ launch path did not build: {native.failure()}"
    return module


@pytest.fixture
def plain_set(tmp_path, mock, built):  # noqa: F811
    """The hand-written kernel set (no chain ops), registered with the C++ side."""
    ks = KernelSet(write_set(tmp_path), KEY, runtime=mock)
    assert ks.native_handle() is not None
    return ks


@pytest.fixture
def handle(plain_set):
    return plain_set.native_handle()


def ptr(t):
    return (t.data_ptr(), t.numel())


def leaf(t):
    return t.clone().requires_grad_()


def test_results_follow_the_layout_table(built, handle):
    """The C++ side allocates from kernels.BUFFER_LAYOUT (handed over by native.load), the Python
    launch path too (allocate_results): both must give what the ops themselves return (their
    reference implementations on the CPU, written op by op)."""
    T, M = 8, N * N + 2 * N
    x, fn, scale, base = inputs(T=T)
    given = dict(x=x, fn=fn, scale=scale, base=base, y=torch.randn(T, C).bfloat16(),
                 du=torch.randn(T, C).bfloat16(), dx_next=torch.randn(T, N, C).bfloat16(),
                 post=torch.rand(T, N), comb=torch.rand(T, N, N), mix=torch.randn(T, M),
                 dpost=torch.randn(T, N), dcomb=torch.randn(T, N, N))
    attrs = {"hc_pre": ATTRS, "hc_pre_backward": ATTRS}
    for op in kernels.TRAINING_OPS:
        args = [given[name] for name in OP_BUFFERS[op][0]]
        expected = getattr(torch.ops.mhc, op)(*args, *attrs.get(op, ()))
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        for path, results in (("C++", built.run_op(handle, op, args)),
                              ("Python", kernels.allocate_results(op, args))):
            got = [(tuple(r.shape), r.dtype) for r in results]
            assert got == [(tuple(e.shape), e.dtype) for e in expected], (op, path)


def test_bad_arguments_get_clear_errors(built, handle):
    x, fn, scale, base = inputs(T=8)
    with pytest.raises(ValueError, match="mhc::hc_pre: fn has dtype BFloat16, expected Float"):
        built.run_op(handle, "hc_pre", [x, fn.bfloat16(), scale, base])
    with pytest.raises(ValueError, match="mhc::hc_pre: x is not contiguous"):
        built.run_op(handle, "hc_pre", [x.transpose(0, 1).contiguous().transpose(0, 1), fn, scale,
                                        base])
    with pytest.raises(ValueError, match=r"mhc::hc_pre: x must be \[\.\.\., 4, 64\], got \[8, 4, 32\]"):
        built.run_op(handle, "hc_pre", [x[..., :32].contiguous(), fn, scale, base])
    with pytest.raises(ValueError, match="x has dtype Float, expected BFloat16"):
        built.run_op(handle, "hc_pre", [x.float(), fn, scale, base])
    y, post, comb = torch.randn(8, C).bfloat16(), torch.rand(8, N), torch.rand(8, N, N)
    with pytest.raises(ValueError, match=r"mhc::hc_post: y has shape \[7, 64\], expected \[8, 64\]"):
        built.run_op(handle, "hc_post", [y[:7], x, post, comb])
    with pytest.raises(ValueError, match="expected 4 arguments, got 3"):
        built.run_op(handle, "hc_post", [y, x, post])
    with pytest.raises(ValueError, match="unknown op"):
        built.run_op(handle, "hc_middle", [y, x, post, comb])
    with pytest.raises(RuntimeError, match="no kernel set 123456"):
        built.run_op(123456, "hc_post", [y, x, post, comb])


def _forward(built, handle, T, recompute, slot=None):
    x, fn, scale, base = (leaf(t) for t in inputs(T))
    u, post, comb, mix, link = built.pre_step(x, fn, scale, base, None, handle, not recompute)
    y = (u * 2).contiguous()
    (x_next,) = built.post_step(y, x, link, post, comb, mix, fn, scale, base, None, handle,
                                recompute, slot)
    return (x, fn, scale, base), (u, post, comb, mix, link), x_next


@pytest.mark.parametrize("recompute", [False, True])
def test_steps_forward_and_backward(built, handle, mock, recompute):  # noqa: F811
    T = 40
    mock.mock_clear_log()
    (x, fn, scale, base), (u, post, comb, mix, link), x_next = _forward(built, handle, T, recompute)
    pre_norm, pre_apply, post_k = launches(mock)
    assert [l["kernel"] for l in (pre_norm, pre_apply, post_k)] == ["pre_norm", "pre_apply", "post"]
    assert pre_apply["buffers"][-1] == ptr(u) and post_k["buffers"][1:4] == [ptr(x), ptr(post),
                                                                            ptr(comb)]
    assert post_k["buffers"][4] == ptr(x_next) and x_next.shape == x.shape
    assert not mix.requires_grad and u.requires_grad and x_next.requires_grad
    assert link.shape == x.shape and link.stride() == (0, 0, 0)

    g = torch.randn_like(x_next)
    mock.mock_clear_log()
    x_next.backward(g)
    names = [l["kernel"] for l in launches(mock)]
    recomputed = ["pre_norm", "pre_apply"] if recompute else []
    assert names == recomputed + ["post_bwd", "pre_bwd_coef", "pre_bwd_dx", "pre_bwd_dfn"]
    post_bwd, coef, dxk, red = launches(mock)[len(recomputed):]
    assert post_bwd["buffers"][4] == ptr(g)            # dx_next into hc_post_backward ...
    assert dxk["buffers"][5] == ptr(g)                 # ... and, through the link, hc_pre_backward
    if recompute:   # post/comb come from the recomputation, not from the forward
        again = launches(mock)[1]
        assert post_bwd["buffers"][2:4] == again["buffers"][4:6] != [ptr(post), ptr(comb)]
    else:
        assert post_bwd["buffers"][2:4] == [ptr(post), ptr(comb)]
    assert x.grad is not None and dxk["buffers"][8][1] == x.numel()
    assert x.grad.data_ptr() == dxk["buffers"][8][0]   # dx is hc_pre_backward's, nothing added
    assert red["buffers"][1] == ptr(fn.grad)
    assert scale.grad.shape == (3,) and base.grad.shape == (24,)


def test_steps_behave_like_autograd_nodes(built, handle, mock):  # noqa: F811
    """The steps are autograd nodes written by hand (not torch::autograd::Function): what autograd
    gives every operation must still hold."""
    inputs_, (u, post, comb, mix, link), x_next = _forward(built, handle, 8, False)
    x, fn, scale, base = inputs_
    assert u.grad_fn.name() == "mhc::PreStepBackward" and link.grad_fn is u.grad_fn
    assert x_next.grad_fn.name() == "mhc::PostStepBackward"
    edges = [f for f, _ in x_next.grad_fn.next_functions]   # y, link, post, comb
    assert edges[1] is edges[2] is edges[3] is u.grad_fn
    # A second backward through released saved tensors raises; retain_graph keeps them.
    x_next.sum().backward(retain_graph=True)
    first = x.grad.clone()
    x_next.sum().backward()
    assert x.grad.shape == first.shape
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        x_next.sum().backward()
    # Saved tensors keep autograd's version check.
    inputs_, _, x_next = _forward(built, handle, 8, True)
    with torch.no_grad():
        inputs_[0].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x_next.sum().backward()
    # No graph without grad mode, or when nothing the steps differentiate requires grad.
    x, fn, scale, base = inputs(8)
    with torch.no_grad():
        u, post, comb, mix, link = built.pre_step(leaf(x), leaf(fn), scale, base, None, handle,
                                                  True)
    assert u.grad_fn is None and not link.requires_grad
    u, post, comb, mix, link = built.pre_step(x, fn, scale, base, None, handle, True)
    assert u.grad_fn is None and not u.requires_grad
    # Frozen parameters: x still gets its gradient, the parameters none.
    xl = leaf(x)
    u, post, comb, mix, link = built.pre_step(xl, fn, scale, base, None, handle, True)
    (x_next,) = built.post_step(u.contiguous(), xl, link, post, comb, mix, fn, scale, base, None,
                                handle, False, None)
    x_next.sum().backward()
    assert xl.grad is not None and fn.grad is None
    # Forward-mode AD has no rule here: a clear error before anything runs, not a wrong tangent.
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        mock.mock_clear_log()
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            built.pre_step(dual, fn, scale, base, None, handle, True)
        assert launches(mock) == []


def storage(t):
    return t.untyped_storage().data_ptr()


def disjoint(*tensors):
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors)
    return all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("recompute", [False, True])
def test_steps_allocate_together_what_dies_together(built, handle, recompute):
    """pre_step's results come from one allocation (host time); under recomputation mix, which
    pre_step saves, goes alone and u, post and comb (which die after the forward) share one; the
    dx link is a zero-stride tensor over mix's storage and allocates nothing."""
    (x, *_), (u, post, comb, mix, link), x_next = _forward(built, handle, 8, recompute)
    assert storage(u) == storage(post) == storage(comb) and storage(mix) == storage(link)
    assert (storage(u) == storage(mix)) == (not recompute)
    assert disjoint(u, post, comb, mix)
    assert link.shape == x.shape and link.dtype == x.dtype and link.stride() == (0, 0, 0)
    assert storage(x_next) not in (storage(u), storage(mix))
    assert [t.is_contiguous() for t in (u, post, comb, mix, x_next)] == [True] * 5


def test_recomputed_u_is_handed_over_once(built, handle, mock):  # noqa: F811
    slot = built.USlot()
    mock.mock_clear_log()
    _, _, x_next = _forward(built, handle, 16, True, slot)
    assert slot.take() is None                          # nothing before the backward
    x_next.backward(torch.randn_like(x_next))
    u = slot.take()
    assert u is not None and ptr(u) == launches(mock)[4]["buffers"][-1]   # the recomputed u
    assert slot.take() is None                          # handed over once
    gone = built.USlot()
    _, _, x_next = _forward(built, handle, 16, True, gone)
    del gone                                            # its owner is gone: the u is dropped
    x_next.backward(torch.randn_like(x_next))


class _SavesInput(torch.autograd.Function):
    """A sublayer that saves its input and records which tensor its backward got back."""
    seen = []

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return u * 3

    @staticmethod
    def backward(ctx, dy):
        (u,) = ctx.saved_tensors
        _SavesInput.seen.append(u.data_ptr())
        return dy * 3


@pytest.mark.parametrize("recompute", [False, True])
def test_hyperconnection_native_forward(built, plain_set, mock, recompute):  # noqa: F811
    """HyperConnection's C++ path (_forward_native) with a sublayer that saves u: under
    recomputation the sublayer's saved u is the one post_step's backward recomputed (no third
    hc_pre), otherwise the forward's u itself."""
    hc = HyperConnection(N, C, nn.Identity(), backend="cuda", recompute=recompute)
    hc.sublayer = type("S", (nn.Module,), {"forward": lambda self, u: _SavesInput.apply(u)})()
    x = leaf(inputs(24)[0])
    _SavesInput.seen.clear()
    mock.mock_clear_log()
    fn, scale, base = hc._params(x)
    x_next = hc._forward_native(plain_set, x, fn, scale, base)
    u_forward = launches(mock)[1]["buffers"][-1][0]
    mock.mock_clear_log()
    x_next.backward(torch.randn_like(x_next))
    names = [l["kernel"] for l in launches(mock)]
    assert names.count("pre_apply") == (1 if recompute else 0)
    expected = launches(mock)[1]["buffers"][-1][0] if recompute else u_forward
    assert _SavesInput.seen == [expected]
    assert hc.fn.grad is not None and x.grad is not None


def test_native_off(monkeypatch, tmp_path, mock):  # noqa: F811
    monkeypatch.setenv("MHC_NATIVE", "0")
    monkeypatch.setattr(native, "_MODULE", None)
    assert native.load() is None and "MHC_NATIVE=0" in native.failure()
    ks = KernelSet(write_set(tmp_path), KEY, runtime=mock)
    assert ks.native_handle() is None                  # KernelSet.run takes the Python path
    x, fn, scale, base = inputs(T=8)
    mock.mock_clear_log()
    ks.run("hc_pre", x, fn, scale, base, *ATTRS)
    assert [l["kernel"] for l in launches(mock)] == ["pre_norm", "pre_apply"]
    assert build_native.main([]) == 1


def test_build_failure_falls_back_or_raises(monkeypatch):
    monkeypatch.setattr(native, "_MODULE", None)
    monkeypatch.setattr(native, "_FAILURE", None)

    def broken():
        raise RuntimeError("Error building extension:\nnative.cpp:1:1: error: no compiler\nninja: stopped")
    monkeypatch.setattr(native, "_compile", broken)
    monkeypatch.setenv("MHC_NATIVE", "auto")
    assert native.load() is None
    assert native.failure() == "RuntimeError: native.cpp:1:1: error: no compiler"
    monkeypatch.setattr(native, "_FAILURE", None)
    monkeypatch.setenv("MHC_NATIVE", "1")
    with pytest.raises(RuntimeError, match="MHC_NATIVE=1 but .* no compiler"):
        native.load()
    kernels._LOADED.clear()


# ------------------------------------------------------------------------------------------------
# Chained HyperConnections: the first one's post computes the second one's mix
# ------------------------------------------------------------------------------------------------

def chain_manifest():
    from test_torch_kernels import hand_manifest
    m = hand_manifest()
    m["ops"]["hc_pre_mixed"] = {"launches": [
        {"kernel": "pre_mixed", "block": [256, 1, 1], "grid": {"tokens_per_block": 64},
         "buffers": ["mix", "scale", "base", "x", "post", "comb", "u"]}]}
    m["ops"]["hc_post_project"] = {"launches": [
        {"kernel": "post_project", "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
         "buffers": ["y", "x", "post", "comb", "fn_next", "x_next", "mix_next"]}]}
    return m


@pytest.fixture
def chain_set(tmp_path, mock, built):  # noqa: F811
    ks = KernelSet(write_set(tmp_path, chain_manifest()), KEY, runtime=mock)
    assert ks.native_handle() is not None and ks.chains
    return ks


def two_layers(recompute=False):
    hcs = [HyperConnection(N, C, nn.Identity(), backend="cuda", recompute=recompute, layer=i)
           for i in range(2)]
    return hcs


def run_chain(hcs, ks, x):
    for hc in hcs:
        x = hc._forward_native(ks, x, *hc._params(x))
    return x


def kernel_names(mock):  # noqa: F811
    return [l["kernel"] for l in launches(mock)]


def test_chain_is_learnt_then_used(chain_set, mock):  # noqa: F811
    h1, h2 = two_layers()
    x = leaf(inputs(40)[0])
    mock.mock_clear_log()
    run_chain([h1, h2], chain_set, x)                # first call: each computes its own mix
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post"] * 2
    mock.mock_clear_log()
    out = run_chain([h1, h2], chain_set, x)          # learnt: h1's post computes h2's mix
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post_project", "pre_mixed", "post"]
    project, mixed = launches(mock)[2], launches(mock)[3]
    assert project["buffers"][4] == ptr(h2.fn)          # fn_next is the next layer's fn
    # x_next and the mix made for the next layer: one allocation (both live until the backward)
    x1 = h1._forward_native(chain_set, x, *h1._params(x))
    mix_next = x1._mhc_chain[2]
    assert storage(x1) == storage(mix_next) and disjoint(x1, mix_next)
    assert mixed["buffers"][0] == project["buffers"][6]  # pre_mixed reads the mix it wrote
    mock.mock_clear_log()
    out.backward(torch.randn_like(out))
    assert kernel_names(mock) == ["post_bwd", "pre_bwd_coef", "pre_bwd_dx", "pre_bwd_dfn"] * 2
    h2_coef = launches(mock)[1]
    assert h2_coef["buffers"][0] == project["buffers"][6]   # h2's backward uses that same mix
    assert h1.fn.grad is not None and h2.fn.grad is not None
    assert launches(mock)[3]["buffers"][1] == ptr(h2.fn.grad)   # h2's dfn: its own backward's


def test_chain_refuses_a_stale_mix(chain_set, mock):  # noqa: F811
    h1, h2 = two_layers()
    x = inputs(16)[0]
    with torch.no_grad():
        run_chain([h1, h2], chain_set, x)
        x1 = h1._forward_native(chain_set, x, *h1._params(x))
        x1.mul_(2)                                      # x_next changed after its mix was made
        mock.mock_clear_log()
        h2._forward_native(chain_set, x1, *h2._params(x1))
        assert kernel_names(mock)[:2] == ["pre_norm", "pre_apply"]
        x1 = h1._forward_native(chain_set, x, *h1._params(x))
        h2.fn.mul_(1.5)                                 # the consumer's fn changed
        mock.mock_clear_log()
        h2._forward_native(chain_set, x1, *h2._params(x1))
        assert kernel_names(mock)[:2] == ["pre_norm", "pre_apply"]
        h3 = HyperConnection(N, C, nn.Identity(), backend="cuda", layer=3)
        x1 = h1._forward_native(chain_set, x, *h1._params(x))
        mock.mock_clear_log()
        h3._forward_native(chain_set, x1, *h3._params(x1))   # not the intended consumer
        assert kernel_names(mock)[:2] == ["pre_norm", "pre_apply"]
        mock.mock_clear_log()
        h1._forward_native(chain_set, x, *h1._params(x))     # h3 is h1's successor now
        assert launches(mock)[2]["kernel"] == "post_project"
        assert launches(mock)[2]["buffers"][4] == ptr(h3.fn)


def test_recomputation_starts_from_the_saved_mix(chain_set, plain_set, mock):  # noqa: F811
    """Both layers recompute u/post/comb with pre_mixed from their saved mix, whether their
    forward computed it (h1: hc_pre) or took it from the chain (h2); a set without the chain ops
    recomputes with hc_pre."""
    h1, h2 = two_layers(recompute=True)
    x = leaf(inputs(24)[0])
    run_chain([h1, h2], chain_set, x)
    out = run_chain([h1, h2], chain_set, x)
    mock.mock_clear_log()
    out.backward(torch.randn_like(out))
    names = kernel_names(mock)
    assert names[:2] == ["pre_mixed", "post_bwd"] and names[5:7] == ["pre_mixed", "post_bwd"]
    assert "pre_norm" not in names
    h1, h2 = two_layers(recompute=True)
    out = run_chain([h1, h2], plain_set, x)
    mock.mock_clear_log()
    out.backward(torch.randn_like(out))
    assert kernel_names(mock)[:3] == ["pre_norm", "pre_apply", "post_bwd"]


def test_chain_without_the_ops_in_the_set(plain_set, mock):  # noqa: F811
    assert not plain_set.chains
    h1, h2 = two_layers()
    x = inputs(16)[0]
    with torch.no_grad():
        run_chain([h1, h2], plain_set, x)
        mock.mock_clear_log()
        run_chain([h1, h2], plain_set, x)
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post"] * 2


def test_models_with_chained_layers_still_pickle_and_copy(chain_set):
    import copy
    import io
    h1, h2 = two_layers()
    x = inputs(8)[0]
    with torch.no_grad():
        run_chain([h1, h2], chain_set, x)
    assert h1.successor() is h2
    model = nn.Sequential(h1, h2)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(model)
    assert torch.equal(clone[1].fn, h2.fn) and torch.equal(loaded[1].fn, h2.fn)
    # the chain is the model's own: a copy learns its own on its first call
    assert clone[0].successor() is None and loaded[0].successor() is None
    assert h1.successor() is h2
    with torch.no_grad():
        run_chain(list(clone), chain_set, x)
    assert clone[0].successor() is clone[1]


def test_chain_under_inference_mode(chain_set, mock):  # noqa: F811
    """Inference tensors have no version counter: the C++ path runs unchained there."""
    h1, h2 = two_layers()
    x = inputs(8)[0]
    with torch.no_grad():
        run_chain([h1, h2], chain_set, x)            # learn the chain
    with torch.inference_mode():
        mock.mock_clear_log()
        out = run_chain([h1, h2], chain_set, x)
        out2 = run_chain([h1, h2], chain_set, out)
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post"] * 4
    assert out2.shape == x.shape


def test_chain_skips_a_successor_whose_fn_is_not_a_plain_tensor(chain_set, mock):  # noqa: F811
    """E.g. FSDP2: the next block's fn is still a sharded DTensor when this block's post runs."""
    class Shard(torch.Tensor):
        pass
    h1, h2 = two_layers()
    x = inputs(8)[0]
    with torch.no_grad():
        run_chain([h1, h2], chain_set, x)             # learnt
        h2.fn = nn.Parameter(h2.fn.detach().as_subclass(Shard))
        assert type(h2.fn) is Shard
        mock.mock_clear_log()
        h1._forward_native(chain_set, x, *h1._params(x))
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post"]


@pytest.fixture
def enable_fast_path(built):
    """Gives HyperConnection.forward's fast path an entry, as the general path does on CUDA; the
    entries are per process, so they are cleared after the test."""
    def enable(hc, x, ks, norm_eps=0.0):
        built.enable_fast_path(hc.n, hc.C, *hc.attrs, ks.key.dtype, x.get_device(),
                               ks.native_handle(), norm_eps)
    yield enable
    built.clear_fast_path()


def test_forward_fast_path_and_its_fall_backs(plain_set, mock, enable_fast_path):  # noqa: F811
    """From the second call on, HyperConnection.forward goes straight to the C++ steps for a
    shape it has run there (native.cpp's fast-path entries, made on CUDA by the general path;
    by hand here); what the fast path cannot take goes to the general path, which checks x and
    picks the backend (and on the CPU refuses backend='cuda': how the fall-back shows here)."""
    hc = HyperConnection(N, C, nn.Identity(), backend="cuda", recompute=False)
    x = leaf(inputs(8)[0])
    enable_fast_path(hc, x, plain_set)
    mock.mock_clear_log()
    x_next = hc(x)
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post"] and x_next.shape == x.shape
    hc.sublayer, hc.recompute = _SavesTwo(), True       # arguments reach the sublayer
    hc(x, 0.25, scale=3.0).sum().backward()
    assert hc.sublayer.arguments == (0.25, 3.0) and len(hc.sublayer.seen) == 1
    hc.recompute = torch.ones(2)                        # an error, as `if hc.recompute:` gives
    with pytest.raises(RuntimeError, match="ambiguous"):
        hc(x)
    hc.recompute = True
    not_contiguous = torch.empty(N, 8, C, dtype=x.dtype).transpose(0, 1)
    with pytest.raises(ValueError, match="x is not contiguous"):
        hc(not_contiguous)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        hc(x.float())                               # no entry for f32 x
    with native.python_path(), pytest.raises(ValueError, match="needs CUDA tensors"):
        hc(x)
    hc.backend = "reference"
    assert hc(x).shape == x.shape                   # the reference math, on the CPU
    hc.backend = "cuda"
    hc.to(torch.float64)                            # parameters not f32: the general path
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        hc(x)


class _SavesTwo(nn.Module):
    """A sublayer that saves its input u and one other tensor, and records what its backward got
    back; `scale` (a keyword argument) checks that arguments reach it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, u, shift=0.0, *, scale=1.0):
        class Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, u, other):
                ctx.save_for_backward(u, other)
                return u * other

            @staticmethod
            def backward(ctx, dy):
                saved_u, saved_other = ctx.saved_tensors
                self.seen.append((saved_u.data_ptr(), saved_other.data_ptr()))
                return dy * saved_other, dy * saved_u
        self.arguments = (shift, scale)
        other = (u.detach() * scale + shift).contiguous()
        self.other = other
        return Op.apply(u, other)


def test_native_forward_keeps_the_users_saved_tensor_hooks(plain_set, mock):  # noqa: F811
    """Under recomputation the C++ path's hooks around the sublayer turn its saved u into a marker
    and hand every other tensor to the hooks the user installed (which never see u); the user's
    unpack gives those back; the hooks are popped after the sublayer, also when it raises."""
    hc = HyperConnection(N, C, _SavesTwo(), backend="cuda", recompute=True)
    x = leaf(inputs(24)[0])
    packed, unpacked = [], []

    def pack(t):
        packed.append(t.data_ptr())
        return ("user", t)

    def unpack(p):
        unpacked.append(p[1].data_ptr())
        return p[1]
    mock.mock_clear_log()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        x_next = hc._forward_native(plain_set, x, *hc._params(x), (0.5,), {"scale": 2.0})
    u_forward = launches(mock)[1]["buffers"][-1][0]
    other = hc.sublayer.other.data_ptr()
    assert hc.sublayer.arguments == (0.5, 2.0)
    assert other in packed and u_forward not in packed
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    mock.mock_clear_log()
    x_next.backward(torch.randn_like(x_next))
    recomputed_u = launches(mock)[1]["buffers"][-1][0]
    assert hc.sublayer.seen == [(recomputed_u, other)] and other in unpacked
    assert [l["kernel"] for l in launches(mock)].count("pre_apply") == 1   # no third hc_pre

    class Fails(nn.Module):
        def forward(self, u):
            raise KeyError("inside the sublayer")
    hc.sublayer = Fails()
    with pytest.raises(KeyError, match="inside the sublayer"):
        hc._forward_native(plain_set, x, *hc._params(x))
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    hc.sublayer = type("Narrow", (nn.Module,), {"forward": lambda self, u: u[..., :3]})()
    with pytest.raises(ValueError, match=r"the sublayer must return \[\.\.\., C\] = \(24, 64\), "
                                         r"got \(24, 3\)"):
        hc._forward_native(plain_set, x, *hc._params(x))


def test_native_forward_records_and_casts(plain_set, mock):  # noqa: F811
    """record_coefficients keeps comb; a sublayer returning another dtype (autocast) or a
    non-contiguous y gets the stream's dtype, contiguous."""
    hc = HyperConnection(N, C, nn.Identity(), backend="cuda", recompute=True)
    hc.record_coefficients = True
    x = leaf(inputs(8)[0])
    mock.mock_clear_log()
    x_next = hc._forward_native(plain_set, x, *hc._params(x))
    assert hc.last_res.shape == (8, N, N) and not hc.last_res.requires_grad
    # a copy of pre_apply's comb (which shares an allocation with u: not kept alive by it)
    assert hc.last_res.untyped_storage().nbytes() == 8 * N * N * 4
    hc.sublayer = type("F32T", (nn.Module,), {
        "forward": lambda self, u: u.float().t().contiguous().t()})()
    mock.mock_clear_log()
    x_next = hc._forward_native(plain_set, x, *hc._params(x))
    y = launches(mock)[2]["buffers"][0]
    assert y[1] == 8 * C and x_next.dtype == x.dtype


@pytest.mark.parametrize("lead", [(2, 3), (0,), ()])
def test_native_forward_any_leading_dims(chain_set, mock, lead):  # noqa: F811
    """x [*lead, n, C] (several leading dims, T = 0, a single token with no leading dim): the C++
    forward launches with T = prod(lead), chains, and gives x_next and gradients of x's shape."""
    h1, h2 = two_layers(recompute=True)
    x = torch.randn(*lead, N, C).bfloat16().requires_grad_()
    T = x.numel() // (N * C)
    run_chain([h1, h2], chain_set, x)                  # learn the chain
    mock.mock_clear_log()
    out = run_chain([h1, h2], chain_set, x)
    assert kernel_names(mock) == ["pre_norm", "pre_apply", "post_project", "pre_mixed", "post"]
    assert {l["T"] for l in launches(mock)} == {T} and out.shape == x.shape
    out.backward(torch.randn_like(out))
    assert x.grad.shape == x.shape and h1.fn.grad is not None


def test_native_forward_survives_a_sublayer_that_replaces_the_parameters(plain_set, mock,  # noqa: F811
                                                                         enable_fast_path):
    """A sublayer that swaps its parent's parameters mid-forward: the step finishes with the
    parameters it started with (the fast path holds its own references to them, so the old ones
    are not freed under it) and the new ones get no gradient from it."""
    hc = HyperConnection(N, C, nn.Identity(), backend="cuda", recompute=False)
    x = leaf(inputs(8)[0])
    enable_fast_path(hc, x, plain_set)
    first_fn = hc.fn

    class Swaps(nn.Module):
        def forward(self, u):
            hc.fn = nn.Parameter(torch.randn_like(hc.fn))
            hc.scale = nn.Parameter(torch.rand(3))
            return u
    hc.sublayer = Swaps()
    first = ptr(first_fn)
    del first_fn
    mock.mock_clear_log()
    hc(x).sum().backward()
    assert launches(mock)[0]["buffers"][1] == first        # pre_norm read the old fn
    assert hc.fn.grad is None and hc.scale.grad is None     # the new ones were not in this step


# The dy fold in eager mode (native.cpp): in a chain, a sublayer's pre_step backward also computes
# the dy of the sublayer below (hc_pre_backward_lower / hc_joint_backward_lower), whose post_step
# backward then launches nothing and whose pre_step backward runs the joint backward.

def fold_manifest():
    m = chain_manifest()
    bwd = m["ops"]["hc_pre_backward"]
    m["ops"]["hc_pre_backward_lower"] = {
        "scratch": bwd["scratch"], "zero": bwd["zero"], "launches": [
            bwd["launches"][0],
            {"kernel": "pre_bwd_dx_lower", "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
             "buffers": ["x", "fn", "mix", "dmix", "du", "dx_next", "post_lower", "dx", "dy_lower",
                         "dfn_partial"]},
            bwd["launches"][2]]}
    for op, lower in (("hc_joint_backward", ""), ("hc_joint_backward_lower", "_lower")):
        m["ops"][op] = {"scratch": bwd["scratch"], "zero": bwd["zero"], "launches": [
            {"kernel": "joint_rows", "block": [256, 1, 1], "grid": {"tokens_per_block": 16},
             "buffers": ["mix", "scale", "base", "x", "y", "du", "dx_next", "dmix", "dscale",
                         "dbase"]},
            {"kernel": "joint_dx" + lower, "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
             "buffers": ["x", "fn", "mix", "dmix", "du", "dx_next"]
             + (["post_lower"] if lower else []) + ["dx"] + (["dy_lower"] if lower else [])
             + ["dfn_partial"]},
            bwd["launches"][2]]}
    return m


@pytest.fixture
def fold_set(tmp_path, mock, fold_switch):  # noqa: F811
    ks = KernelSet(write_set(tmp_path, fold_manifest()), KEY, runtime=mock)
    assert ks.native_handle() is not None and ks.chains
    fold_switch(True)
    return ks


class _RecordsDy(nn.Module):
    """y = u * 2 (contiguous); keeps u and y and the gradient its backward got."""

    def forward(self, u):
        y = (u * 2).contiguous()
        y.register_hook(self.seen.append)
        self.u, self.y = u, y
        return y

    def __init__(self):
        super().__init__()
        self.seen = []


def three_layers(recompute):
    return [HyperConnection(N, C, _RecordsDy(), backend="cuda", recompute=recompute, layer=i)
            for i in range(3)]


def learnt_chain(hcs, ks, x):
    run_chain(hcs, ks, x)                       # the first call learns the chain
    return run_chain(hcs, ks, x)


@pytest.mark.parametrize("recompute", [False, True])
def test_eager_fold_in_a_chain(fold_set, built, mock, recompute):  # noqa: F811
    """Three chained layers: the top one runs hc_post_backward and hc_pre_backward_lower, the
    middle one hc_joint_backward_lower and the bottom one hc_joint_backward; each lower layer's
    dy is the dy_lower that the layer above stored, with the post that layer's forward made (or
    its recomputation), and its joint backward reads its own y and the dx from above."""
    hcs = three_layers(recompute)
    x = leaf(inputs(24)[0])
    out = learnt_chain(hcs, fold_set, x)
    forward = launches(mock)[-7:]
    assert [l["kernel"] for l in forward] == ["pre_norm", "pre_apply", "post_project",
                                              "pre_mixed", "post_project", "pre_mixed", "post"]
    folded = built.folded_steps()
    mock.mock_clear_log()
    out.backward(torch.randn_like(out))
    log = launches(mock)
    recomputed = ["pre_mixed"] if recompute else []
    assert [l["kernel"] for l in log] == (
        recomputed + ["post_bwd"]                                        # top: as before
        + recomputed + ["pre_bwd_coef", "pre_bwd_dx_lower", "pre_bwd_dfn"]   # + the middle's dy
        + recomputed + ["joint_rows", "joint_dx_lower", "pre_bwd_dfn"]      # middle: joint
        + ["joint_rows", "joint_dx", "pre_bwd_dfn"])                        # bottom: joint
    assert built.folded_steps() == folded + 2
    by_name = lambda name, i=0: [l for l in log if l["kernel"] == name][i]  # noqa: E731
    top_dx, middle_dx = by_name("pre_bwd_dx_lower"), by_name("joint_dx_lower")
    # post_lower: the post of the layer below, as its forward made it (pre_apply / pre_mixed) or
    # as the layer above recomputed it for the fold (log: top, middle, bottom)
    if recompute:
        posts = [l["buffers"][4] for l in log if l["kernel"] == "pre_mixed"][1:]
    else:
        posts = [forward[3]["buffers"][4], forward[1]["buffers"][4]]
    assert top_dx["buffers"][6] == posts[0] and middle_dx["buffers"][6] == posts[1]
    # each lower layer's sublayer got the dy_lower stored above; its joint reads the dx from above
    assert ptr(hcs[1].sublayer.seen[-1]) == top_dx["buffers"][8]
    assert ptr(hcs[0].sublayer.seen[-1]) == middle_dx["buffers"][8]
    assert by_name("joint_rows")["buffers"][6] == top_dx["buffers"][7]
    assert by_name("joint_rows", 1)["buffers"][6] == middle_dx["buffers"][7]
    assert by_name("joint_rows")["buffers"][4] == ptr(hcs[1].sublayer.y)
    assert by_name("joint_rows", 1)["buffers"][4] == ptr(hcs[0].sublayer.y)
    for h in hcs:
        assert h.fn.grad is not None and h.base.grad is not None
    assert x.grad.shape == x.shape
    if recompute:       # the recomputed u still reaches each sublayer's backward, once
        assert [l["kernel"] for l in log].count("pre_apply") == 0


def unfolded(recompute, layers=3):
    one = (["pre_mixed"] if recompute else []) + ["post_bwd", "pre_bwd_coef", "pre_bwd_dx",
                                                  "pre_bwd_dfn"]
    return one * layers


@pytest.mark.parametrize("recompute", [False, True])
def test_eager_fold_declined(fold_set, built, mock, recompute):  # noqa: F811
    """The fold needs the gradient of x_next to be the dx the layer above made, untouched: a
    second use of x_next, a tensor hook on it, the switch off, or a set without the fold's
    kernels run each layer's backward as before (the layer above's dy_lower then goes unused)."""
    hcs = three_layers(recompute)
    x = leaf(inputs(16)[0])
    learnt_chain(hcs, fold_set, x)

    def backward_kernels(make_loss):
        loss = make_loss()
        mock.mock_clear_log()
        loss.backward()
        return [l["kernel"] for l in launches(mock)]

    def chain_with(between):
        x1 = hcs[0]._forward_native(fold_set, x, *hcs[0]._params(x))
        between(x1)
        x2 = hcs[1]._forward_native(fold_set, x1, *hcs[1]._params(x1))
        return x1, hcs[2]._forward_native(fold_set, x2, *hcs[2]._params(x2))

    def second_use():
        x1, out = chain_with(lambda t: None)
        return out.sum() + (x1.float() ** 2).sum()
    names = backward_kernels(second_use)
    # the top layer folded the middle one; the bottom one got dx + another gradient: unfolded
    assert names[-4:] == ["post_bwd", "pre_bwd_coef", "pre_bwd_dx", "pre_bwd_dfn"]
    assert "joint_dx_lower" in names

    def hooked():
        return chain_with(lambda t: t.register_hook(lambda g: g * 1))[1].sum()
    assert backward_kernels(hooked)[-4:] == ["post_bwd", "pre_bwd_coef", "pre_bwd_dx",
                                            "pre_bwd_dfn"]

    def hook_in_place():
        return chain_with(lambda t: t.register_hook(lambda g: g.mul_(1)))[1].sum()
    assert backward_kernels(hook_in_place)[-4:] == ["post_bwd", "pre_bwd_coef", "pre_bwd_dx",
                                                   "pre_bwd_dfn"]

    built.set_fold_dy(False)
    assert backward_kernels(lambda: run_chain(hcs, fold_set, x).sum()) == unfolded(recompute)
    built.set_fold_dy(True)
    assert "joint_rows" in backward_kernels(lambda: run_chain(hcs, fold_set, x).sum())


def test_eager_fold_with_partial_and_repeated_backwards(fold_set, built, mock):  # noqa: F811
    """A backward that stops at the middle layer's output leaves the top layer's hand-off unused:
    a later backward from there (another gradient) runs the middle layer unfolded; backwards
    through a retained graph fold each time."""
    hcs = three_layers(False)
    x = leaf(inputs(16)[0])
    learnt_chain(hcs, fold_set, x)
    x1 = hcs[0]._forward_native(fold_set, x, *hcs[0]._params(x))
    x2 = hcs[1]._forward_native(fold_set, x1, *hcs[1]._params(x1))
    out = hcs[2]._forward_native(fold_set, x2, *hcs[2]._params(x2))
    mock.mock_clear_log()
    torch.autograd.grad(out.sum(), [x2], retain_graph=True)    # stops at x2: hands off to hcs[1]
    assert [l["kernel"] for l in launches(mock)] == ["post_bwd", "pre_bwd_coef",
                                                     "pre_bwd_dx_lower", "pre_bwd_dfn"]
    mock.mock_clear_log()
    x2.sum().backward(retain_graph=True)    # not that dx: the middle layer unfolded, then it
    assert [l["kernel"] for l in launches(mock)] == [             # folds the bottom one's dy
        "post_bwd", "pre_bwd_coef", "pre_bwd_dx_lower", "pre_bwd_dfn",
        "joint_rows", "joint_dx", "pre_bwd_dfn"]
    for _ in range(2):
        mock.mock_clear_log()
        out.sum().backward(retain_graph=True)
        assert [l["kernel"] for l in launches(mock)].count("joint_rows") == 2


def test_eager_fold_needs_the_kernels_in_both_sets(chain_set, fold_set, built, mock):  # noqa: F811
    """A layer whose kernel set predates the fold neither folds nor is folded."""
    hcs = three_layers(False)
    x = leaf(inputs(16)[0])
    sets = [fold_set, chain_set, fold_set]

    def run():
        t = x
        for h, ks in zip(hcs, sets):
            t = h._forward_native(ks, t, *h._params(t))
        return t
    run()
    out = run()
    mock.mock_clear_log()
    out.sum().backward()
    assert [l["kernel"] for l in launches(mock)] == unfolded(False)


# The C++ steps computing: a kernel set whose kernels are mhc.torch.reference's ops
# (reference_runtime.py), so that the numbers of native.cpp's wiring are checked on the CPU.

def _reference_set(folder, built, dtype="f32"):
    import reference_runtime
    key = kernels.KernelKey(n=N, C=C, dtype=dtype, chip="sm_90", norm_eps=NORM_EPS)
    runtime = reference_runtime.ReferenceRuntime(key)
    ks = KernelSet(reference_runtime.write_set(folder, key), key, runtime=runtime)
    assert ks.native_handle() is not None and ks.chains
    return ks


@pytest.fixture
def fold_switch(built):
    """built.set_fold_dy, put back as the environment says after the test."""
    yield built.set_fold_dy
    built.set_fold_dy(native.fold_dy_wanted())


@pytest.fixture
def reference_set(tmp_path, built, fold_switch):
    return _reference_set(tmp_path / "ref", built)


def linear_stack(recompute=True, act=torch.float32):
    """Three HyperConnections around linear sublayers on the reference backend: the Python
    steps with the reference math, whose numbers the C++ steps must give (cpp_steps)."""
    return [HyperConnection(N, C, nn.Linear(C, C).to(act), backend="reference",
                            recompute=recompute, layer=i) for i in range(3)]


def cpp_steps(hcs, ks):
    """The same layers on the cuda backend (the chain skips a reference-backend successor);
    returns their C++ step on kernel set ks, (h, x) -> x_next."""
    for h in hcs:
        h.backend = "cuda"
    return lambda h, t: h._forward_native(ks, t, *h._params(t))


def assert_bit_identical(got, want, *context):
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), (*context, i, (g - w).abs().max().item())


def _stack_gradients(hcs, forward, x, dout):
    x = leaf(x)
    out = forward(x)
    params = [p for h in hcs for p in h.parameters()]
    return [out.detach()] + list(torch.autograd.grad(out, [x] + params, dout))


def normed_stack(recompute=True, act=torch.float32, norms=(True, True, True)):
    """linear_stack's three layers with their sublayers' pre-norms fused (norm=nn.RMSNorm(C) of
    the reference set's eps and a random f32 weight: cast to x's dtype where x is bf16) where
    `norms` says, none elsewhere (a model may mix them)."""
    hcs = linear_stack(recompute, act)
    for h, fused in zip(hcs, norms):
        if fused:
            h.norm = nn.RMSNorm(C, eps=NORM_EPS)
            nn.init.uniform_(h.norm.weight, 0.5, 1.5)
    return hcs


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("norms", [(False,) * 3, (True,) * 3, (True, False, True)],
                         ids=["", "norms", "some_norms"])
def test_cpp_steps_compute_what_the_python_steps_compute(tmp_path, built, fold_switch, recompute,
                                                        dtype, norms):
    """Three chained HyperConnections around linear sublayers: the C++ steps (chained forward,
    recomputation, the dy fold on and off) give the output and every gradient (x, each
    fn/scale/base, each sublayer's weight and bias) of the Python steps with the reference math,
    bit for bit (the reference's fold ops compose the ops they replace in the same order).
    norms: the layers whose pre-norm is fused (norm=nn.RMSNorm(C)): there the C++ steps run the
    *_norm ops chained (hc_post_project + hc_pre_mixed_norm), recompute o and fold
    (hc_joint_backward[_lower]_norm), the Python steps hc_pre_norm and hc_pre_backward_norm
    unchained; each norm's weight gradient is compared too."""
    reference_set = _reference_set(tmp_path / "ref", built, dtype)
    torch.manual_seed(0)
    act = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    hcs = normed_stack(recompute, act, norms)
    x = torch.randn(2, 5, N, C).to(act)
    dout = torch.randn(2, 5, N, C).to(act)
    want = _stack_gradients(hcs, lambda t: hcs[2](hcs[1](hcs[0](t))), x, dout)
    assert len(want) == 1 + 1 + 3 * 3 + 3 * 2 + sum(norms)
    runtime = reference_set.runtime
    cpp_steps(hcs, reference_set)
    suffix = ["_norm" if fused else "" for fused in norms]
    for fold in (False, True):
        built.set_fold_dy(fold)
        run_chain(hcs, reference_set, x)                 # learn the chain
        runtime.launches.clear()
        got = _stack_gradients(hcs, lambda t: run_chain(hcs, reference_set, t), x, dout)
        assert runtime.launches[0] == "hc_pre" + suffix[0]
        assert runtime.launches.count("hc_post_project") == 2       # it ran chained
        assert (runtime.launches.count("hc_pre_mixed_norm")
                == sum(norms[1:]) + recompute * sum(norms))
        # folded: the top layer's pre backward stores the middle one's dy, the middle one the
        # bottom one's
        assert ("hc_joint_backward" + suffix[0] in runtime.launches) == fold
        assert ("hc_joint_backward_lower" + suffix[1] in runtime.launches) == fold
        assert runtime.launches.count("hc_post_backward") == (1 if fold else 3)
        assert_bit_identical(got, want, fold)


def test_fused_norm_fast_path(reference_set, built, enable_fast_path):
    """forward()'s fast path takes a module with a fused norm when an entry for its norm's eps
    (None: x's dtype's epsilon) exists, and sends every other module to the general path (on
    the CPU: backend='cuda' refused): a norm of another eps, one that is not fused (another
    module type, a subclass of nn.RMSNorm, the wrong width), a module without a norm."""
    torch.manual_seed(6)
    hc = normed_stack(norms=(True, False, False))[0]
    hc.backend = "cuda"
    x = leaf(torch.randn(4, N, C))
    enable_fast_path(hc, x, reference_set, NORM_EPS)
    runtime = reference_set.runtime
    runtime.launches.clear()
    x_next = hc(x)
    assert runtime.launches == ["hc_pre_norm", "hc_post"]
    x_next.sum().backward()
    assert hc.norm.weight.grad is not None and "hc_pre_backward_norm" in runtime.launches
    assert torch.equal(x_next, hc._forward_native(reference_set, x, *hc._params(x)))

    def general_path(norm):
        hc.norm = norm
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            hc(x)

    class Subclass(nn.RMSNorm):
        pass
    general_path(nn.RMSNorm(C, eps=2 * NORM_EPS))
    general_path(nn.RMSNorm(C))                      # eps None: f32's epsilon, no entry
    general_path(nn.LayerNorm(C))
    general_path(Subclass(C, eps=NORM_EPS))
    general_path(None)                               # no entry without a norm either
    enable_fast_path(hc, x, reference_set, torch.finfo(torch.float32).eps)
    hc.norm = nn.RMSNorm(C)                          # eps None: now it has an entry
    runtime.launches.clear()
    hc(x)
    assert runtime.launches == ["hc_pre_norm", "hc_post"]


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_fused_norm_fast_path_default_eps(tmp_path, built, enable_fast_path, dtype):
    """A norm whose eps is None takes x's dtype's epsilon (torch.finfo, as nn.RMSNorm does) on
    the fast path too: the entry made with that eps serves it, one with another eps does not."""
    ks = _reference_set(tmp_path / "ref", built, dtype)
    act = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    hc = linear_stack(act=act)[0]
    hc.backend, hc.norm = "cuda", nn.RMSNorm(C)
    x = torch.randn(4, N, C).to(act)
    enable_fast_path(hc, x, ks, 2 * torch.finfo(act).eps)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        hc(x)                                        # the general path: no entry for this eps
    enable_fast_path(hc, x, ks, torch.finfo(act).eps)
    ks.runtime.launches.clear()
    hc(x)
    assert ks.runtime.launches == ["hc_pre_norm", "hc_post"]


@pytest.mark.parametrize("between", ["second_use", "hook", "hook_in_place"])
def test_cpp_steps_with_the_fold_declined_compute_the_same(reference_set, built, between):
    """With the fold on, the middle layer's output also used elsewhere or its gradient changed
    by a hook (a new tensor, or the same one modified in place): the bottom layer must not take
    the dy computed above from the unchanged dx; the numbers equal the Python steps'."""
    torch.manual_seed(1)
    hcs = linear_stack()
    x = torch.randn(6, N, C)
    dout = torch.randn(6, N, C)
    extra = torch.randn(6, N, C)

    def gradients(step):
        t = leaf(x)
        t1 = step(hcs[0], t)
        if between == "hook":
            t1.register_hook(lambda g: g * 1.5)
        elif between == "hook_in_place":
            t1.register_hook(lambda g: g.mul_(1.5))
        loss = (step(hcs[2], step(hcs[1], t1)) * dout).sum()
        if between == "second_use":
            loss = loss + (t1 * extra).sum()
        return list(torch.autograd.grad(loss, [t] + [p for h in hcs for p in h.parameters()]))

    want = gradients(lambda h, t: h(t))
    native_step = cpp_steps(hcs, reference_set)
    built.set_fold_dy(True)
    run_chain(hcs, reference_set, x)                     # learn the chain
    runtime = reference_set.runtime
    runtime.launches.clear()
    got = gradients(native_step)
    assert runtime.launches.count("hc_joint_backward_lower") == 1    # the middle layer folded
    assert runtime.launches.count("hc_post_backward") == 2           # the bottom one did not
    assert_bit_identical(got, want, between)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("fold", [False, True])
def test_cpp_steps_under_activation_checkpointing(reference_set, built, recompute, fold):
    """torch.utils.checkpoint (non-reentrant) around three chained layers: its saved-tensor hooks
    allow one unpack of each saved tensor per backward (the post step's x is needed by the
    recomputation of post/comb -- early, for the fold -- and by hc_post_backward: unpacked
    once), and the recomputed forward folds like the first; the numbers are the Python steps'."""
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(2)
    hcs = linear_stack(recompute)
    x = torch.randn(5, N, C)
    dout = torch.randn(5, N, C)

    def gradients(step):
        t = leaf(x)
        out = checkpoint(lambda a: step(hcs[2], step(hcs[1], step(hcs[0], a))), t,
                         use_reentrant=False)
        return [out.detach()] + list(torch.autograd.grad(
            out, [t] + [p for h in hcs for p in h.parameters()], dout))

    want = gradients(lambda h, t: h(t))
    native_step = cpp_steps(hcs, reference_set)
    built.set_fold_dy(fold)
    gradients(native_step)                               # learn the chain
    runtime = reference_set.runtime
    runtime.launches.clear()
    got = gradients(native_step)
    assert runtime.launches.count("hc_post_backward") == (1 if fold else 3)
    assert_bit_identical(got, want)


def _reentrant_checkpoint(hcs, step, x, dout):
    from torch.utils.checkpoint import checkpoint
    t = leaf(x)
    out = checkpoint(lambda a: step(hcs[2], step(hcs[1], step(hcs[0], a))), t,
                     use_reentrant=True)
    (out * dout).sum().backward()                   # (the reentrant version has no .grad())
    return [out.detach(), t.grad] + [p.grad.clone() for h in hcs for p in h.parameters()]


def _save_on_cpu(hcs, step, x, dout):
    with torch.autograd.graph.save_on_cpu():
        return _stack_gradients(hcs, lambda t: step(hcs[2], step(hcs[1], step(hcs[0], t))), x,
                                dout)


def _retain_graph_twice(hcs, step, x, dout):
    t = leaf(x)
    out = step(hcs[2], step(hcs[1], step(hcs[0], t)))
    leaves = [t] + [p for h in hcs for p in h.parameters()]
    first = torch.autograd.grad(out, leaves, dout, retain_graph=True)
    return list(first) + list(torch.autograd.grad(out, leaves, dout))


def _accumulated(hcs, step, x, dout):
    for _ in range(2):
        (step(hcs[2], step(hcs[1], step(hcs[0], leaf(x)))) * dout).sum().backward()
    return [p.grad.clone() for h in hcs for p in h.parameters()]


def _autocast(hcs, step, x, dout):
    t = leaf(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):     # the sublayers in bf16
        out = step(hcs[2], step(hcs[1], step(hcs[0], t)))
    leaves = [t] + [p for h in hcs for p in h.parameters()]
    return [out.detach()] + list(torch.autograd.grad(out, leaves, dout))


def _module_hooks(hcs, step, x, dout):
    handles = [h.register_full_backward_hook(lambda module, gi, go: None) for h in hcs]
    try:
        return _stack_gradients(hcs, lambda t: step(hcs[2], step(hcs[1], step(hcs[0], t))), x,
                                dout)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("idiom", [_reentrant_checkpoint, _save_on_cpu, _retain_graph_twice,
                                   _accumulated, _autocast, _module_hooks],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("norm", [False, True], ids=["", "norm"])
def test_cpp_steps_in_training_idioms(reference_set, fold_switch, enable_fast_path, idiom,
                                      recompute, norm):
    """HyperConnection.forward on the C++ path (its fast path, as on CUDA) with the dy fold on,
    in what training code does around it (reentrant checkpointing, saved tensors offloaded to
    the CPU, two backwards through a retained graph, gradients accumulated over two steps,
    autocast, module backward hooks): the numbers of the Python steps. norm: the first and last
    layers' pre-norms fused."""
    torch.manual_seed(3)
    hcs = normed_stack(recompute, norms=(True, False, True)) if norm else linear_stack(recompute)
    x, dout = torch.randn(5, N, C), torch.randn(5, N, C)
    want = idiom(hcs, lambda h, t: h(t), x, dout)
    cpp_steps(hcs, reference_set)          # (run through forward's fast path below)
    for h in hcs:
        for p in h.parameters():
            p.grad = None
    fold_switch(True)
    enable_fast_path(hcs[0], x, reference_set)
    if norm:
        enable_fast_path(hcs[0], x, reference_set, NORM_EPS)
    with torch.no_grad():
        hcs[2](hcs[1](hcs[0](x)))                       # learn the chain
    runtime = reference_set.runtime
    runtime.launches.clear()
    got = idiom(hcs, lambda h, t: h(t), x, dout)
    assert "hc_post_project" in runtime.launches         # the C++ path, chained
    joint = "hc_joint_backward_norm" if norm else "hc_joint_backward"   # the bottom layer's
    assert (joint in runtime.launches) == (idiom is not _module_hooks)
    assert_bit_identical(got, want)


def test_cpp_steps_refuse_double_backward(reference_set):
    """create_graph=True would give gradients without a graph (the kernels have no autograd):
    a clear error instead of second-order terms missing without a word."""
    hc = HyperConnection(N, C, nn.Linear(C, C), backend="cuda")
    x = leaf(inputs(4, torch.float32)[0])
    out = hc._forward_native(reference_set, x, *hc._params(x))
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    out = hc._forward_native(reference_set, x, *hc._params(x))
    (g,) = torch.autograd.grad(out.sum(), x)                # first order: as always
    assert g.shape == x.shape and not g.requires_grad


@pytest.mark.parametrize("norm", [False, True], ids=["", "norm"])
def test_eager_fold_waits_for_sharded_parameters(reference_set, fold_switch, norm):
    """A sharding wrapper (FSDP2, ZeRO-3) frees a block's parameters after its forward and
    gathers them again when the gradient reaches the block's output (a hook there). Folding
    the bottom layer's dy into the middle layer's backward would recompute the bottom layer's
    post (and o, with a fused norm) from its scale and base (the norm's weight) before that:
    the fold is declined for that pair (the middle one still folds into the top one) and the
    numbers are the Python steps'. norm: every layer's norm fused, the bottom one's weight
    freed."""
    torch.manual_seed(4)
    hcs = normed_stack() if norm else linear_stack()
    x, dout = torch.randn(5, N, C), torch.randn(5, N, C)
    bottom = (hcs[0].norm.weight,) if norm else (hcs[0].scale, hcs[0].base)
    kept = [p.detach().clone() for p in bottom]

    def gather(_grad):
        with torch.no_grad():
            for p, value in zip(bottom, kept):
                p.untyped_storage().resize_(value.numel() * value.element_size())
                p.data.copy_(value)          # (as the wrappers do: no version bump)

    def gradients(step):
        t = leaf(x)
        x1 = step(hcs[0], t)
        out = step(hcs[2], step(hcs[1], x1))
        with torch.no_grad():
            for p in bottom:                 # freed after the forward ...
                p.untyped_storage().resize_(0)
        x1.register_hook(gather)             # ... and gathered when x1's gradient is ready
        leaves = [t] + [p for h in hcs for p in h.parameters()]
        return [out.detach()] + list(torch.autograd.grad(out, leaves, dout))

    want = gradients(lambda h, t: h(t))
    native_step = cpp_steps(hcs, reference_set)
    fold_switch(True)
    run_chain(hcs, reference_set, x)                     # learn the chain
    runtime = reference_set.runtime
    runtime.launches.clear()
    got = gradients(native_step)
    # the top layer folds the middle one's dy, the middle one not the bottom one's
    suffix = "_norm" if norm else ""
    assert [op for op in runtime.launches if "backward" in op] == [
        "hc_post_backward", "hc_pre_backward_lower" + suffix, "hc_joint_backward" + suffix,
        "hc_post_backward", "hc_pre_backward" + suffix]
    assert_bit_identical(got, want)


# ------------------------------------------------------------------------------------------------
# The ops' C++ dispatcher kernels (native.install_ops; native.cpp, "dispatcher kernels"). On a GPU
# machine they serve the CUDA key; here they are installed for the CPU key over the reference
# runtime's kernel set, so that a torch.ops.mhc call runs native.cpp's kernels and the runtime
# records the ops launched (the ops' own Python implementations on the CPU launch nothing).

def _op_arguments(op, T=6, seed=0):
    """Random arguments of `op` (f32, the reference set's shape) with its attributes."""
    args = kernels.random_arguments(op, T, N, C, torch.Generator().manual_seed(seed))
    return args + _attributes_of(op)


def _attributes_of(op):
    if op in kernels.NORM_OPS:
        return [*ATTRS, NORM_EPS]
    return list(ATTRS) if op in kernels.OPS_WITH_ATTRIBUTES else []


@pytest.fixture
def cpu_dispatch(tmp_path, built):
    """install(resolve=None) installs the C++ kernels for the CPU key and returns the reference
    set; `asked` lists the default resolve's calls. Removed after the test."""
    ks = _reference_set(tmp_path / "ref", built)
    asked = []

    def default(op, x, attrs):
        asked.append((op, tuple(x.shape), attrs))
        return ks.native_handle()

    def install(resolve=None):
        assert native.install_ops(built, "CPU", resolve or default), "PyTorch before 2.9?"
        return ks

    yield install, asked
    built.uninstall_ops("CPU")


@pytest.mark.parametrize("op", inductor_fallbacks.MHC_OPS)
def test_dispatcher_kernels_run_each_op(cpu_dispatch, op):
    """Every op called through torch.ops.mhc runs its kernels from C++ once installed, with the
    numbers of its Python implementation; the kernel set is asked for once per op and shape."""
    install, asked = cpu_dispatch
    args = _op_arguments(op)
    call = getattr(torch.ops.mhc, op)
    want = call(*args)                                   # the Python implementation
    runtime = install().runtime
    runtime.launches.clear()
    got = call(*args)
    again = call(*_op_arguments(op, seed=1))
    assert runtime.launches == [op, op]
    assert len(asked) == 1 and asked[0][:2] == (op, (6, N, C))
    assert asked[0][2] == (tuple(_attributes_of(op)) or None)
    want, got, again = ([r] if isinstance(r, torch.Tensor) else list(r) for r in (want, got, again))
    assert len(got) == len(want) == len(again)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_dispatcher_kernels_fall_back_to_the_python_implementation(cpu_dispatch):
    """resolve's -1 (the set lacks the op), an unusual call (attributes out of range, an f64 x)
    and native.python_path() run the Python implementation: its numbers, its errors; uninstalling
    gives the ops back to Python."""
    install, asked = cpu_dispatch
    ks = install(lambda op, x, attrs: -1)
    runtime = ks.runtime
    args = _op_arguments("hc_pre")
    want = torch.ops.mhc.hc_pre(*args)
    assert runtime.launches == []
    ks = install()
    with pytest.raises(ValueError, match="mhc::hc_pre: iterations must be >= 1, got 0"):
        torch.ops.mhc.hc_pre(*args[:4], 0, *ATTRS[1:])
    with pytest.raises(ValueError, match="mhc::hc_pre: post_mult must be > 0"):
        torch.ops.mhc.hc_pre(*args[:4], *ATTRS[:3], 0.0)
    f64 = [a.double() for a in args[:4]]
    torch.testing.assert_close(torch.ops.mhc.hc_pre(*f64, *ATTRS)[0], want[0].double(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fn has dtype"):          # runOp's check, from C++
        torch.ops.mhc.hc_pre(args[0], args[1].bfloat16(), *args[2:])
    with native.python_path():
        torch.ops.mhc.hc_pre(*args)
    assert runtime.launches == [] and len(asked) == 1      # the bf16 fn's call resolved

    def missing(op, x, attrs):
        raise kernels.KernelsMissing(f"no mhc kernels for {op}")
    install(missing)                     # resolve's errors reach the caller as they are
    with pytest.raises(kernels.KernelsMissing, match="no mhc kernels for hc_pre"):
        torch.ops.mhc.hc_pre(*args)
    ks = install()
    torch.ops.mhc.hc_pre(*args)
    assert runtime.launches == ["hc_pre"]
    built = native.load()
    built.uninstall_ops("CPU")
    torch.ops.mhc.hc_pre(*args)
    assert runtime.launches == ["hc_pre"]


def test_dispatcher_kernels_keep_the_ops_autograd(cpu_dispatch):
    """A call that records a gradient goes through the custom op's autograd formula, whose ops
    then run on the C++ kernels: the gradients of hc_pre -> linear -> hc_post are the Python
    implementation's."""
    install, _ = cpu_dispatch
    torch.manual_seed(0)
    lin = nn.Linear(C, C)
    x, fn, scale, base = [leaf(t) for t in _op_arguments("hc_pre")[:4]]

    def gradients():
        u, post, comb, _ = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
        out = torch.ops.mhc.hc_post(lin(u).contiguous(), x, post, comb)
        return torch.autograd.grad(out.square().sum(), [x, fn, scale, base, lin.weight])

    want = gradients()
    runtime = install().runtime
    got = gradients()
    assert runtime.launches == ["hc_pre", "hc_post", "hc_post_backward", "hc_pre_backward"]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_compiled_graph_runs_the_dispatcher_kernels(cpu_dispatch):
    """torch.compile(fullgraph=True) of hc_pre -> linear -> hc_post: the compiled forward and
    backward call the ops' C++ kernels (the launches), with the eager numbers."""
    install, _ = cpu_dispatch
    torch.manual_seed(0)
    lin = nn.Linear(C, C)
    x, fn, scale, base = [leaf(t) for t in _op_arguments("hc_pre")[:4]]

    def f(t):
        u, post, comb, _ = torch.ops.mhc.hc_pre(t, fn, scale, base, *ATTRS)
        return torch.ops.mhc.hc_post(lin(u).contiguous(), t, post, comb)

    want = f(x)
    want_dx, = torch.autograd.grad(want.square().sum(), [x])
    runtime = install().runtime
    compiled = torch.compile(f, fullgraph=True)
    compiled(x)                                          # compile
    runtime.launches.clear()
    got = compiled(x)
    got_dx, = torch.autograd.grad(got.square().sum(), [x])
    assert runtime.launches == ["hc_pre", "hc_post", "hc_post_backward", "hc_pre_backward"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5, atol=1e-5)


def test_dispatch_binding_names_the_set_or_the_python_implementation(plain_set, monkeypatch):
    """kernels.dispatch_binding (the CUDA install's resolve): the set's C++ handle for an op it
    has kernels for, -1 (the Python implementation and its fall-backs) for one it lacks."""
    monkeypatch.setattr(kernels, "for_call", lambda op, x, attrs: plain_set)
    x = inputs(T=2)[0]
    assert kernels.dispatch_binding("hc_pre", x, ATTRS) == plain_set.native_handle()
    assert kernels.dispatch_binding("hc_post", x, None) == plain_set.native_handle()
    assert kernels.dispatch_binding("hc_pre_mixed", x, ATTRS) == -1
