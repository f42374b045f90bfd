"""Chained HyperConnections under torch.compile: a post-grad graph pass of TorchInductor, with
two rewrites, the chain (forward graphs) and the dy fold (backward graphs).

In eager mode the C++ path chains consecutive HyperConnections at run time (native.cpp). In a
compiled graph the same steady state is a rewrite. Where one sublayer's ``hc_post`` feeds the
next one's ``hc_pre``::

    x1 = mhc.hc_post(y, x, post, comb)
    u1, post1, comb1, mix1 = mhc.hc_pre(x1, fn1, scale1, base1, *attrs)

becomes::

    x1, mix1 = mhc.hc_post_project(y, x, post, comb, fn1, *attrs)   # post_res + the next projection
    u1, post1, comb1 = mhc.hc_pre_mixed(x1, mix1, scale1, base1, *attrs)

The results are the same bit for bit (hc_pre is hc_pre_mixed after its norm_project, and
hc_post_project projects x1 as stored); the next sublayer's pre no longer reads x1 for the
projection. hc_pre_backward differentiates through the projection from the mix either way.

The dy fold (:func:`fold_dy`, backward graphs). In a stack, a sublayer's dx is the dx_next of the
sublayer below it, whose backward starts with hc_post_backward's dy = sum_j post[j] dx[j]::

    dx, dfn, dscale, dbase = mhc.hc_pre_backward(x1, ..., dx_next1, *attrs)     # the upper one
    dy, dpost, dcomb = mhc.hc_post_backward(y, x, post, comb, dx)                # the lower one
    du = <the lower sublayer's VJP of dy>
    dx0, ... = mhc.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx, *attrs)

becomes::

    dx, dfn, dscale, dbase, dy = mhc.hc_pre_backward_lower(x1, ..., dx_next1, post, *attrs)
    du = <the lower sublayer's VJP of dy>
    dx0, ... = mhc.hc_joint_backward(x, y, fn, scale, base, mix, du, dx, *attrs)

The upper sublayer's kernels compute dy while dx is on chip, and the lower one's backward after
its VJP is one op (its dpost and dcomb need y, x and dx, not dy), so its hc_post_backward and its
reading of dx for dy are gone. Going down the graph, a sublayer that is both (an hc_joint_backward
whose dx feeds the next hc_post_backward) becomes hc_joint_backward_lower: a stack of k
sublayers ends with one hc_post_backward and one hc_pre_backward_lower at the top,
hc_joint_backward_lower in the middle and hc_joint_backward at the bottom. In the reference math
the results are the same bit for bit (the same formulas); the kernels compute dy from dx as
stored, as hc_post_backward does.

Installed as Inductor's ``post_grad_custom_pre_pass`` the first time a graph with mhc ops is
traced for compilation (the ops' fake implementations call :func:`install_if_compiling`; importing
Inductor just to install it would cost seconds at ``import mhc.torch``). A pass the user set
there first still runs, before this one. ``MHC_COMPILE_CHAIN=0`` in the environment turns the
pass off (both rewrites; read when it would be installed), ``MHC_COMPILE_FOLD_DY=0`` the dy fold
alone (read each time the pass runs; part of its uuid, so that a cached graph of the other setting
is not reused); :func:`uninstall` removes the pass for the rest of the process (until
:func:`install`).
"""

from __future__ import annotations

import operator
import os
import sys

import torch

_INSTALLED = False
_KEPT_OUT = False   # uninstall() was called: compiling does not install the pass again


def _arguments(node) -> dict:
    """A custom-op node's arguments by name (positional or keyword)."""
    schema = node.target._schema
    named = dict(zip((a.name for a in schema.arguments), node.args))
    named.update(node.kwargs)
    return named


def _is(node, op) -> bool:
    return node.op == "call_function" and node.target == op


def _hoist(node, before, order) -> bool:
    """Moves `node` (and what it needs from after `before`) in front of `before`, so that an op
    placed at `before` may read it: e.g. the next sublayer's ``fn.to(float32)``, traced after this
    sublayer's hc_post when the parameters are bf16. Only pure call_function nodes that do not
    depend on `before` move; returns whether `node` is in front now."""
    # Nodes an earlier rewrite made are not in `order`: they sit at an earlier hc_post's place.
    if not isinstance(node, torch.fx.Node) or order.get(node, -1) < order[before]:
        return True
    if node is before or node.op != "call_function" or node.is_impure():
        return False
    if not all(_hoist(a, before, order) for a in node.all_input_nodes):
        return False
    before.prepend(node)
    order[node] = order[before] - 0.5
    return True


def chain_hyperconnections(graph: torch.fx.Graph) -> int:
    """Rewrites every hc_post -> hc_pre pair of `graph` (see the module docstring); returns how
    many. A pair is left alone when the next fn is computed after the hc_post from something that
    cannot move in front of it (the fused op takes hc_post's place) or when hc_pre's results are
    used other than through getitem (as the tuple itself)."""
    ops = torch.ops.mhc
    # hc_pre -> hc_pre_mixed; with the fused pre-norm (docs/PreNorm.md) hc_pre_norm ->
    # hc_pre_mixed_norm, which also takes the weight and norm_eps.
    mixed_of = {ops.hc_pre.default: ops.hc_pre_mixed.default,
                ops.hc_pre_norm.default: ops.hc_pre_mixed_norm.default}
    order = {node: i for i, node in enumerate(graph.nodes)}
    rewritten = 0
    for post in [n for n in graph.nodes if _is(n, ops.hc_post.default)]:
        pres = [u for u in post.users
                if u.op == "call_function" and u.target in mixed_of and _arguments(u)["x"] is post]
        if not pres:
            continue
        pre = pres[0]
        a = _arguments(pre)
        fn_next = a["fn"]
        if not all(_is(g, operator.getitem) for g in pre.users) or not _hoist(fn_next, post, order):
            continue
        attrs = (a["iterations"], a["eps"], a["pre_eps"], a["post_mult"])
        p = _arguments(post)
        with graph.inserting_after(post):
            fused = graph.call_function(
                ops.hc_post_project.default,
                (p["y"], p["x"], p["post"], p["comb"], fn_next, *attrs))
        with graph.inserting_after(fused):
            x_next = graph.call_function(operator.getitem, (fused, 0))
        with graph.inserting_after(x_next):
            mix = graph.call_function(operator.getitem, (fused, 1))
        x_val, pre_val = post.meta.get("val"), pre.meta.get("val")
        if x_val is not None and pre_val is not None:     # fake values, for later passes
            fused.meta["val"] = (x_val, pre_val[3])
            x_next.meta["val"], mix.meta["val"] = x_val, pre_val[3]
        post.replace_all_uses_with(x_next)
        graph.erase_node(post)
        norm = (a["weight"],) if "weight" in a else ()
        norm_eps = (a["norm_eps"],) if "weight" in a else ()
        with graph.inserting_before(pre):
            mixed = graph.call_function(
                mixed_of[pre.target], (x_next, mix, a["scale"], a["base"], *norm, *attrs,
                                       *norm_eps))
        if pre_val is not None:
            mixed.meta["val"] = tuple(pre_val[:3])
        for g in list(pre.users):            # getitem 0-2 -> hc_pre_mixed's, 3 (mix) -> fused's
            if g.args[1] == 3:
                g.replace_all_uses_with(mix)
            else:
                g.args = (mixed, g.args[1])
            if not g.users:
                graph.erase_node(g)
        graph.erase_node(pre)
        rewritten += 1
    return rewritten


def fold_dy_enabled() -> bool:
    """False when MHC_COMPILE_FOLD_DY=0 (the pass then only chains)."""
    return os.environ.get("MHC_COMPILE_FOLD_DY", "1") != "0"


def _same_streams(a, b) -> bool:
    """Whether the x nodes a and b are known to have one shape and dtype (one kernel set computes
    the other sublayer's dy); False where a graph holds no fake values to tell."""
    # Imported here: 0.3 s at `import mhc.torch`, loaded anyway when a graph is compiled.
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
        return False
    return (va.dtype == vb.dtype and va.dim() == vb.dim()
            and all(statically_known_true(i == j) for i, j in zip(va.shape, vb.shape)))


def _getitems(node, index):
    return [g for g in node.users if g.args[1] == index]


def _lower_pair(upper, dx):
    """(P, R): the hc_post_backward and hc_pre_backward of the sublayer below `upper`, whose dx
    is their dx_next, where they can fold; else None."""
    ops = torch.ops.mhc
    for post_bw in dx.users:
        if not _is(post_bw, ops.hc_post_backward.default):
            continue
        p = _arguments(post_bw)
        if p["dx_next"] is not dx or not all(_is(g, operator.getitem) for g in post_bw.users):
            continue
        dpost, dcomb = _getitems(post_bw, 1), _getitems(post_bw, 2)
        if len(dpost) != 1 or len(dcomb) != 1:
            continue
        readers = set(dpost[0].users) | set(dcomb[0].users)
        pre_bw = readers.pop() if len(readers) == 1 else None
        if pre_bw is None or not (_is(pre_bw, ops.hc_pre_backward.default)
                                  or _is(pre_bw, ops.hc_pre_backward_norm.default)):
            continue
        r = _arguments(pre_bw)
        if (r["dpost"] is dpost[0] and r["dcomb"] is dcomb[0] and r["dx_next"] is dx
                and r["x"] is p["x"] and all(_is(g, operator.getitem) for g in pre_bw.users)
                and _same_streams(p["x"], _arguments(upper)["x"])):
            return post_bw, pre_bw
    return None


def _lower_ops() -> dict:
    """The fold's upper ops -> their _lower variants (the *_norm ones too)."""
    ops = torch.ops.mhc
    return {ops.hc_pre_backward.default: ops.hc_pre_backward_lower.default,
            ops.hc_joint_backward.default: ops.hc_joint_backward_lower.default,
            ops.hc_pre_backward_norm.default: ops.hc_pre_backward_lower_norm.default,
            ops.hc_joint_backward_norm.default: ops.hc_joint_backward_lower_norm.default}


def _fold_one(graph, upper, order):
    """Folds the sublayer below `upper` (an hc_pre_backward or hc_joint_backward) into it, if it
    can (see :func:`fold_dy`); returns the node that took `upper`'s place, or None."""
    ops = torch.ops.mhc
    if not all(_is(g, operator.getitem) for g in upper.users):
        return None
    pairs = (_lower_pair(upper, dx) for dx in _getitems(upper, 0))
    pair = next((found for found in pairs if found is not None), None)
    if pair is None:
        return None
    post_bw, pre_bw = pair
    p, r = _arguments(post_bw), _arguments(pre_bw)
    if not _hoist(p["post"], upper, order):
        return None
    # The lower variant takes the upper op's tensors, then post_lower, then the attributes (and
    # norm_eps: the *_norm ops, whose dy_lower comes after dweight).
    names = [a.name for a in upper.target._schema.arguments]
    u = _arguments(upper)
    lower = _lower_ops()[upper.target]
    k = 5 if "norm_eps" in u else 4
    with graph.inserting_before(upper):
        folded = graph.call_function(lower, (*(u[n] for n in names[:-k]), p["post"],
                                             *(u[n] for n in names[-k:])))
    upper_val, post_bw_val = upper.meta.get("val"), post_bw.meta.get("val")
    if upper_val is not None and post_bw_val is not None:     # fake values, for later passes
        folded.meta["val"] = (*upper_val, post_bw_val[0])
    order[folded] = order[upper]
    for g in list(upper.users):             # dx, dfn, dscale, dbase (, dweight)
        g.args = (folded, g.args[1])
    graph.erase_node(upper)
    for g in _getitems(post_bw, 0):         # dy: now the folded op's dy_lower
        g.args = (folded, k)

    attrs = (r["iterations"], r["eps"], r["pre_eps"], r["post_mult"])
    if "norm_eps" in r:
        joint_op, du = ops.hc_joint_backward_norm.default, (r["weight"], r["g"])
        attrs += (r["norm_eps"],)
    else:
        joint_op, du = ops.hc_joint_backward.default, (r["du"],)
    with graph.inserting_before(pre_bw):
        joint = graph.call_function(joint_op, (
            r["x"], p["y"], r["fn"], r["scale"], r["base"], r["mix"], *du, r["dx_next"],
            *attrs))
    if pre_bw.meta.get("val") is not None:
        joint.meta["val"] = pre_bw.meta["val"]
    order[joint] = order[pre_bw]
    for g in list(pre_bw.users):
        g.args = (joint, g.args[1])
    graph.erase_node(pre_bw)
    for g in list(post_bw.users):           # dpost and dcomb, read by pre_bw only
        graph.erase_node(g)
    graph.erase_node(post_bw)
    return folded


def fold_dy(graph: torch.fx.Graph) -> int:
    """The dy fold (see the module docstring) on every sublayer pair of `graph`, walking it in
    order; returns how many pairs it folded. For an hc_pre_backward or hc_joint_backward Q with
    dx = Q's result 0, the sublayer below is the hc_post_backward P whose dx_next is dx and the
    hc_pre_backward R that reads P's dpost and dcomb (and nothing else does) with dx_next dx and
    P's x. Q becomes its _lower variant (post_lower: P's post), P's dy its dy_lower, R an
    hc_joint_backward (P's y), which the walk meets next as a Q. A pair is left alone when a result
    tuple is used other than through getitem, when the x of P and Q may differ in shape or dtype
    (another kernel set), or when P's post is computed after Q from something that cannot move
    in front of it."""
    uppers = tuple(_lower_ops())
    order = {node: i for i, node in enumerate(graph.nodes)}
    folded = 0
    node = next(iter(graph.nodes), None)
    while node is not None and node.op != "root":
        if node.op == "call_function" and node.target in uppers:
            made = _fold_one(graph, node, order)
            if made is not None:
                node, folded = made, folded + 1
        node = node.next
    return folded


def _pass_class():
    """The CustomGraphPass subclass (defined on first use: its base class lives in Inductor)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class ChainHyperConnections(CustomGraphPass):
        """mhc's post-grad pass, after the one it replaced in the config (`before`), if any."""

        def __init__(self, before=None):
            self.before = before

        def __call__(self, graph):
            if self.before is not None:
                self.before(graph)
            chain_hyperconnections(graph)
            if fold_dy_enabled():
                fold_dy(graph)

        def uuid(self):
            # The pass's source and switch decide what it does (FX graph caching keys on this).
            mine = (get_hash_for_files((__file__,)), fold_dy_enabled())
            if self.before is None:
                return mine
            theirs = getattr(self.before, "uuid", None)   # a plain callable has none
            return (mine, theirs()) if theirs is not None else None   # None: no caching

    return ChainHyperConnections


def passes_only_backend(on_graph=None):
    """A torch.compile backend that runs mhc's pass on the forward and backward graphs, as Inductor
    would, and then runs them op by op, without Inductor's code generation. Two compiles that
    differ in the pass (MHC_COMPILE_FOLD_DY=0/1) then differ only in what the pass did, where
    under Inductor the code generated around the mhc ops may differ too (other fusions, reduction
    configurations picked by timing), and with it the rounding. For checks of the pass.
    on_graph(gm, backward: bool) sees each graph after the pass."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def compiler(backward):
        def compile_graph(gm, _example_inputs):
            _pass_class()()(gm.graph)
            gm.graph.lint()
            gm.recompile()
            if on_graph is not None:
                on_graph(gm, backward)
            return make_boxed_func(gm.forward)
        return compile_graph

    return aot_autograd(fw_compiler=compiler(False), bw_compiler=compiler(True))


def install():
    """Makes mhc's pass Inductor's post-grad custom pre-pass (keeping one already set, which runs
    first). Idempotent. Imports Inductor."""
    global _INSTALLED, _KEPT_OUT
    import torch._inductor.config as config
    current = config.post_grad_custom_pre_pass
    if type(current).__name__ != "ChainHyperConnections":
        config.post_grad_custom_pre_pass = _pass_class()(current)
    _INSTALLED, _KEPT_OUT = True, False


def uninstall():
    """Takes mhc's pass out again (leaving the one it wrapped) and keeps it out: compiling a graph
    with mhc ops no longer installs it; :func:`install` does."""
    global _INSTALLED, _KEPT_OUT
    import torch._inductor.config as config
    current = config.post_grad_custom_pre_pass
    if type(current).__name__ == "ChainHyperConnections":
        config.post_grad_custom_pre_pass = current.before
    _INSTALLED, _KEPT_OUT = False, True


def install_if_compiling():
    """Called by the mhc ops' fake implementations: installs the pass once Inductor is loaded
    (a graph is being compiled), unless MHC_COMPILE_CHAIN=0. Costs a dict look-up after that."""
    if _INSTALLED or _KEPT_OUT or "torch._inductor.config" not in sys.modules:
        return
    if os.environ.get("MHC_COMPILE_CHAIN", "1") == "0":
        return
    install()
