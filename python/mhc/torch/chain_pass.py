"""Chained HyperConnections under torch.compile: a post-grad graph pass of TorchInductor.

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
projection. The backward is untouched: hc_pre_backward differentiates through the projection
from the mix either way.

Installed as Inductor's ``post_grad_custom_pre_pass`` the first time a graph with mhc ops is
traced for compilation (the ops' fake implementations call :func:`install_if_compiling`; importing
Inductor just to install it would cost seconds at ``import mhc.torch``). A pass the user set
there first still runs, before this one. ``MHC_COMPILE_CHAIN=0`` in the environment turns the
rewrite off; :func:`uninstall` removes it for the rest of the process (until :func:`install`).
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
    order = {node: i for i, node in enumerate(graph.nodes)}
    rewritten = 0
    for post in [n for n in graph.nodes if _is(n, ops.hc_post.default)]:
        pres = [u for u in post.users
                if _is(u, ops.hc_pre.default) and _arguments(u)["x"] is post]
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
        with graph.inserting_before(pre):
            mixed = graph.call_function(
                ops.hc_pre_mixed.default, (x_next, mix, a["scale"], a["base"], *attrs))
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

        def uuid(self):
            # The pass's source decides what it does (FX graph caching keys on this).
            mine = get_hash_for_files((__file__,))
            if self.before is None:
                return mine
            theirs = getattr(self.before, "uuid", None)   # a plain callable has none
            return (mine, theirs()) if theirs is not None else None   # None: no caching

    return ChainHyperConnections


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
