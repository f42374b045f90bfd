"""mhc.torch.chain_pass: chained HyperConnections under torch.compile (hc_post -> hc_pre becomes
hc_post_project -> hc_pre_mixed in the compiled forward graph) and the dy fold (each sublayer's
hc_post_backward's dy computed by the backward of the sublayer above it).

The models use backend="ops": the mhc:: custom ops on any device, whose CPU implementation is the
reference math, where hc_pre is literally norm_project + hc_pre_mixed and the fold's ops
are the ops they replace composed: the rewritten graphs must give bit-identical losses and
gradients, and the same as eager within float rounding.
"""

import operator

import pytest
import torch
from torch import nn
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import mhc.torch as mt
from mhc.torch import chain_pass
from sublayers import PreNormFFN


def model(blocks=3, n=2, C=16, vocab=11, recompute=True):
    torch.manual_seed(0)
    layers = [nn.Embedding(vocab, C), mt.Expand(n)]
    layers += [mt.HyperConnection(n, C, PreNormFFN(C), backend="ops", layer=i, recompute=recompute,
                                  iterations=3)
               for i in range(blocks)]
    layers += [mt.Head(n, C), nn.Linear(C, vocab)]
    return nn.Sequential(*layers)


def as_imported():
    """The pass out and not kept out: the next graph compiled with mhc ops installs it."""
    chain_pass.uninstall()
    chain_pass._KEPT_OUT = False


@pytest.fixture(autouse=True)
def fresh_chain_pass():
    """Each test starts, and leaves the later test files, with the state `import mhc.torch` gives."""
    as_imported()
    yield
    as_imported()


def loss_and_grads(m, tokens):
    loss = nn.functional.cross_entropy(m(tokens).flatten(0, 1), tokens.flatten())
    return loss, torch.autograd.grad(loss, list(m.parameters()))


def capture(fw):
    """A torch.compile backend: AOTAutograd with `fw` as the forward graph's compiler."""
    return aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, _: make_boxed_func(gm.forward))


def targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"
            and n.target is not operator.getitem]


@pytest.mark.parametrize("recompute", [False, True])
def test_rewrite_is_bit_identical(recompute):
    """aot_autograd with the pass applied to the forward graph by hand, against the same capture
    without it."""
    graphs = []

    def backend(rewrite):
        def fw(gm, example_inputs):
            if rewrite:
                graphs.append(chain_pass.chain_hyperconnections(gm.graph))
                gm.recompile()
                graphs.append(targets(gm))
            return make_boxed_func(gm.forward)
        return capture(fw)

    m = model(recompute=recompute)
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    eager_loss, eager_grads = loss_and_grads(m, tokens)
    plain_loss, plain_grads = loss_and_grads(torch.compile(m, backend=backend(False)), tokens)
    torch._dynamo.reset()
    loss, grads = loss_and_grads(torch.compile(m, backend=backend(True)), tokens)

    rewrites, ops = graphs
    mhc = torch.ops.mhc
    assert rewrites == 2                                       # blocks 0->1 and 1->2
    assert ops.count(mhc.hc_post_project.default) == 2 and ops.count(mhc.hc_pre_mixed.default) == 2
    assert ops.count(mhc.hc_pre.default) == 1 and ops.count(mhc.hc_post.default) == 1
    assert torch.equal(loss, plain_loss)
    for g, pg, eg in zip(grads, plain_grads, eager_grads):
        assert torch.equal(g, pg)
        assert torch.allclose(g, eg, rtol=1e-5, atol=1e-7)
    assert torch.allclose(loss, eager_loss, rtol=1e-6)


def test_bf16_parameters_chain_too():
    """With bf16 parameters HyperConnection casts fn to f32 in its forward, so the next fn's cast
    is traced after this sublayer's hc_post: the pass moves it in front and still chains."""
    graphs = []

    def fw(gm, example_inputs):
        graphs.append(chain_pass.chain_hyperconnections(gm.graph))
        gm.graph.lint()
        gm.recompile()
        return make_boxed_func(gm.forward)

    m = model().to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(3))
    eager_loss, _ = loss_and_grads(m, tokens)
    torch._dynamo.reset()
    loss, grads = loss_and_grads(torch.compile(m, backend=capture(fw)), tokens)
    assert graphs == [2]
    assert torch.allclose(loss.float(), eager_loss.float(), rtol=2e-2)
    assert all(torch.isfinite(g).all() for g in grads)


def test_pass_left_alone_without_a_chain():
    """One HyperConnection: nothing to chain; a hc_post whose x_next feeds no hc_pre stays."""
    gm = torch.fx.symbolic_trace(nn.Identity())
    assert chain_pass.chain_hyperconnections(gm.graph) == 0

    def one(x, fn, scale, base, y):
        u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, 3, 1e-6, 1e-6, 2.0)
        return torch.ops.mhc.hc_post(y + u, x, post, comb) * 2
    gm = torch.fx.symbolic_trace(one)
    assert chain_pass.chain_hyperconnections(gm.graph) == 0


def test_inductor_installs_and_runs_the_pass(monkeypatch):
    """torch.compile with Inductor: the first mhc op traced installs the pass (keeping a pass the
    user set, which runs first), which chains the forward and folds the backward (Inductor lowers
    the fold's ops), and the compiled model matches eager."""
    import torch._inductor.config as config
    seen = []

    class Theirs:
        def __call__(self, graph):
            seen.append("theirs")

        def uuid(self):
            return "theirs"

    real, real_fold, folds = chain_pass.chain_hyperconnections, chain_pass.fold_dy, []
    monkeypatch.setattr(chain_pass, "chain_hyperconnections",
                        lambda graph: seen.append(real(graph)) or seen[-1])
    monkeypatch.setattr(chain_pass, "fold_dy", lambda graph: folds.append(real_fold(graph)))
    monkeypatch.delenv("MHC_COMPILE_FOLD_DY", raising=False)
    # No FX graph cache: the pass must run, not a cached graph be loaded.
    with config.patch(fx_graph_cache=False, post_grad_custom_pre_pass=Theirs()):
        try:
            m = model(blocks=2)
            tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
            eager_loss, eager_grads = loss_and_grads(m, tokens)
            torch._dynamo.reset()
            loss, grads = loss_and_grads(torch.compile(m, fullgraph=True), tokens)
        finally:
            chain_pass.uninstall()
        assert type(config.post_grad_custom_pre_pass).__name__ == "Theirs"   # put back
    assert seen[:2] == ["theirs", 1]           # forward graph: theirs, then one chain rewritten
    assert sorted(folds) == [0, 1]             # the forward has nothing to fold, the backward one
    assert torch.allclose(loss, eager_loss, rtol=1e-5)
    for g, eg in zip(grads, eager_grads):
        assert torch.allclose(g, eg, rtol=1e-4, atol=1e-6)


FOLD_OPS = ("hc_pre_backward_lower", "hc_joint_backward", "hc_joint_backward_lower")


def unfolded_and_folded(m, tokens, monkeypatch, record):
    """loss_and_grads of m compiled with the whole pass (passes_only_backend, `record` seeing each
    graph), with MHC_COMPILE_FOLD_DY=0 and then 1."""
    results = []
    for fold in ("0", "1"):
        monkeypatch.setenv("MHC_COMPILE_FOLD_DY", fold)
        torch._dynamo.reset()
        backend = chain_pass.passes_only_backend(record)
        results.append(loss_and_grads(torch.compile(m, fullgraph=True, backend=backend), tokens))
    return results


def same_unfolded_and_folded(results, eager_grads):
    """unfolded_and_folded's two runs give the same loss and gradients bit for bit, and the
    gradients are eager's within float64 rounding; returns the folded run's (loss, grads)."""
    (plain_loss, plain_grads), (loss, grads) = results
    assert torch.equal(loss, plain_loss)
    for g, pg, eg in zip(grads, plain_grads, eager_grads):
        assert torch.equal(g, pg)
        assert torch.allclose(g, eg, rtol=1e-10, atol=1e-13)
    return loss, grads


@pytest.mark.parametrize("recompute", [False, True])
def test_fold_dy_in_a_compiled_stack(monkeypatch, recompute):
    """Three blocks, float64, the whole pass (as Inductor runs it) on both graphs: the backward
    ends as hc_post_backward + hc_pre_backward_lower (top), hc_joint_backward_lower (middle),
    hc_joint_backward (bottom), with loss and gradients equal bit for bit to the same capture with
    MHC_COMPILE_FOLD_DY=0 (where no fold op appears) and to eager within rounding."""
    backward_ops = []

    def record(gm, backward):
        if backward:
            backward_ops.append(targets(gm))

    m = model(recompute=recompute).double()
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(5))
    eager_loss, eager_grads = loss_and_grads(m, tokens)
    results = unfolded_and_folded(m, tokens, monkeypatch, record)

    mhc = torch.ops.mhc
    plain, folded = backward_ops
    assert plain.count(mhc.hc_post_backward.default) == 3
    assert plain.count(mhc.hc_pre_backward.default) == 3
    assert not any(getattr(mhc, op).default in plain for op in FOLD_OPS)
    assert folded.count(mhc.hc_post_backward.default) == 1
    assert mhc.hc_pre_backward.default not in folded
    for op in FOLD_OPS:
        assert folded.count(getattr(mhc, op).default) == 1, op
    loss, grads = same_unfolded_and_folded(results, eager_grads)
    assert torch.allclose(loss, eager_loss, rtol=1e-12)


def _two_sublayers_backward(dpost_out=False):
    """make_fx graph (fake values on every node) of two sublayers' backward as a stack has it:
    the upper hc_pre_backward's dx is the lower hc_post_backward's and hc_pre_backward's dx_next."""
    mhc, attrs, n, C, T = torch.ops.mhc, (3, 1e-6, 1e-6, 2.0), 2, 4, 3
    M = n * n + 2 * n

    def backward(x1, fn1, mix1, du1, dpost1, dcomb1, dx_next1, scale, base, y, x, post, comb, mix,
                 fn):
        dx, dfn1, dscale1, dbase1 = mhc.hc_pre_backward(x1, fn1, scale, base, mix1, du1, dpost1,
                                                        dcomb1, dx_next1, *attrs)
        dy, dpost, dcomb = mhc.hc_post_backward(y, x, post, comb, dx)
        du = dy * 2                                  # the lower sublayer's VJP
        out = mhc.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx, *attrs)
        return (*out, dfn1, dscale1, dbase1) + ((dpost,) if dpost_out else ())

    r = torch.randn
    args = (r(T, n, C), r(M, n * C), r(T, M), r(T, C), r(T, n), r(T, n, n), r(T, n, C), r(3),
            r(M), r(T, C), r(T, n, C), r(T, n), r(T, n, n), r(T, M), r(M, n * C))
    from torch.fx.experimental.proxy_tensor import make_fx
    return make_fx(backward, tracing_mode="fake")(*args)


def test_fold_dy_only_where_it_may():
    """Folded where the pair is as a stack makes it; left alone where the lower sublayer's dpost
    is used elsewhere, or where the graph has no fake values to show that both sublayers' x
    have one shape and dtype (in a traced graph the ops' checks make them so: dx_next is x's)."""
    gm = _two_sublayers_backward()
    assert chain_pass.fold_dy(gm.graph) == 1
    gm.graph.lint()
    assert targets(gm) == [torch.ops.mhc.hc_pre_backward_lower.default, torch.ops.aten.mul.Tensor,
                           torch.ops.mhc.hc_joint_backward.default]
    assert chain_pass.fold_dy(_two_sublayers_backward(dpost_out=True).graph) == 0
    bare = _two_sublayers_backward()
    for node in bare.graph.nodes:
        node.meta.pop("val", None)
    assert chain_pass.fold_dy(bare.graph) == 0


def test_fold_switch_is_in_the_uuid(monkeypatch):
    """A graph compiled with the fold is not reused from the FX graph cache without it."""
    monkeypatch.setenv("MHC_COMPILE_FOLD_DY", "1")
    on = chain_pass._pass_class()().uuid()
    monkeypatch.setenv("MHC_COMPILE_FOLD_DY", "0")
    assert chain_pass._pass_class()().uuid() != on


def test_switched_off_by_the_environment(monkeypatch):
    import torch._inductor.config as config  # noqa: F401 - Inductor loaded, as when compiling
    monkeypatch.setenv("MHC_COMPILE_CHAIN", "0")
    chain_pass.install_if_compiling()
    assert type(config.post_grad_custom_pre_pass).__name__ != "ChainHyperConnections"
    monkeypatch.setenv("MHC_COMPILE_CHAIN", "1")
    chain_pass.install_if_compiling()
    assert type(config.post_grad_custom_pre_pass).__name__ == "ChainHyperConnections"


def test_uninstall_keeps_it_out():
    """After uninstall() compiling a graph with mhc ops does not put the pass back; install()
    does."""
    import torch._inductor.config as config  # noqa: F401 - Inductor loaded, as when compiling
    chain_pass.install_if_compiling()
    assert type(config.post_grad_custom_pre_pass).__name__ == "ChainHyperConnections"
    chain_pass.uninstall()
    chain_pass.install_if_compiling()
    assert type(config.post_grad_custom_pre_pass).__name__ != "ChainHyperConnections"
    chain_pass.install()
    assert type(config.post_grad_custom_pre_pass).__name__ == "ChainHyperConnections"


def test_wraps_a_plain_function_pass():
    """A user's pass may be a plain callable (no uuid): both run, and the wrapper's uuid is None
    (Inductor then skips its FX graph cache rather than keying on half the passes)."""
    import torch._inductor.config as config
    seen = []
    with config.patch(post_grad_custom_pre_pass=lambda graph: seen.append("theirs")):
        try:
            chain_pass.install()
            wrapper = config.post_grad_custom_pre_pass
            wrapper(torch.fx.Graph())
            assert seen == ["theirs"] and wrapper.uuid() is None
        finally:
            chain_pass.uninstall()
        assert config.post_grad_custom_pre_pass is not None     # theirs, put back


def norm_model(blocks=3, n=2, C=16, vocab=11, recompute=True, fused=True):
    """model() with each FFN's RMSNorm taken out of the sublayer: HyperConnection(norm=...) (fused:
    the *_norm ops) or the same weights inside the sublayer (fused=False: the baseline)."""
    torch.manual_seed(0)
    layers = [nn.Embedding(vocab, C), mt.Expand(n)]
    for i in range(blocks):
        ffn = PreNormFFN(C)
        with torch.no_grad():
            ffn.norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i))
        if fused:
            norm, ffn.norm = ffn.norm, nn.Identity()
            layers.append(mt.HyperConnection(n, C, ffn, backend="ops", layer=i,
                                             recompute=recompute, iterations=3, norm=norm))
        else:
            layers.append(mt.HyperConnection(n, C, ffn, backend="ops", layer=i,
                                             recompute=recompute, iterations=3))
    layers += [mt.Head(n, C), nn.Linear(C, vocab)]
    return nn.Sequential(*layers)


NORM_FOLD_OPS = ("hc_pre_backward_lower_norm", "hc_joint_backward_norm",
                 "hc_joint_backward_lower_norm")


@pytest.mark.parametrize("recompute", [False, True])
def test_chain_and_fold_with_the_fused_norm(monkeypatch, recompute):
    """The pre-norm fused into the ops (HyperConnection(norm=nn.RMSNorm)): the forward chains
    hc_post -> hc_pre_norm into hc_post_project -> hc_pre_mixed_norm and the backward folds into
    the *_norm fold ops, with loss and gradients equal bit for bit to the same capture with
    MHC_COMPILE_CHAIN's fold off, and within rounding (float64) to eager with the norm inside the
    sublayer (nn.RMSNorm's own autograd)."""
    graphs = []

    def record(gm, backward):
        graphs.append((backward, targets(gm)))

    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(5))
    base = norm_model(recompute=recompute, fused=False).double()
    m = norm_model(recompute=recompute).double()
    base_loss, base_grads = loss_and_grads(base, tokens)
    eager_loss, eager_grads = loss_and_grads(m, tokens)
    results = unfolded_and_folded(m, tokens, monkeypatch, record)

    mhc = torch.ops.mhc
    forward = [ops for backward, ops in graphs if not backward][-1]
    plain, folded = [ops for backward, ops in graphs if backward]
    assert forward.count(mhc.hc_pre_norm.default) == 1
    assert forward.count(mhc.hc_pre_mixed_norm.default) == 2
    assert forward.count(mhc.hc_post_project.default) == 2
    assert mhc.hc_pre.default not in forward
    assert plain.count(mhc.hc_pre_backward_norm.default) == 3
    assert folded.count(mhc.hc_post_backward.default) == 1
    assert mhc.hc_pre_backward_norm.default not in folded
    for op in NORM_FOLD_OPS:
        assert folded.count(getattr(mhc, op).default) == 1, op
    loss, grads = same_unfolded_and_folded(results, eager_grads)
    # The baseline's parameters in the same order but for the norm weights (in the sublayers).
    names = [k.replace("sublayer.norm", "norm") for k, _ in base.named_parameters()]
    mine = dict(zip((k for k, _ in m.named_parameters()), grads))
    assert torch.allclose(loss, base_loss, rtol=1e-12)
    for name, bg in zip(names, base_grads):
        assert torch.allclose(mine[name], bg, rtol=1e-9, atol=1e-12), name
