"""The kernel-level mHC ops as PyTorch custom ops (namespace ``mhc``).

    torch.ops.mhc.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult) -> (u, post, comb, mix)
    torch.ops.mhc.hc_post(y, x, post, comb) -> x_next
    torch.ops.mhc.hc_post_backward(y, x, post, comb, dx_next) -> (dy, dpost, dcomb)
    torch.ops.mhc.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next,
                                  iterations, eps, pre_eps, post_mult) -> (dx, dfn, dscale, dbase)
    torch.ops.mhc.hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult)
                                  -> (u, post, comb)            hc_pre from a given mix
    torch.ops.mhc.hc_post_project(y, x, post, comb, fn_next, iterations, eps, pre_eps, post_mult)
                                  -> (x_next, mix_next)         hc_post + the next norm_project
    torch.ops.mhc.hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next,
                                        post_lower, iterations, eps, pre_eps, post_mult)
                                  -> (dx, dfn, dscale, dbase, dy_lower)
    torch.ops.mhc.hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations, eps,
                                    pre_eps, post_mult) -> (dx, dfn, dscale, dbase)
    torch.ops.mhc.hc_joint_backward_lower(x, y, fn, scale, base, mix, du, dx_next, post_lower,
                                          iterations, eps, pre_eps, post_mult)
                                  -> (dx, dfn, dscale, dbase, dy_lower)
    torch.ops.mhc.hc_pre_norm, hc_pre_mixed_norm, hc_pre_backward_norm,
        hc_pre_backward_lower_norm, hc_joint_backward_norm, hc_joint_backward_lower_norm
                                  the sublayer's pre-norm fused in (below; docs/PreNorm.md)

Each maps 1:1 onto a set of mhc's GPU kernels (docs/Torch.md). ``hc_post_backward`` does not return
dx: ``hc_pre_backward`` computes the *whole* dx of x, including hc_post's residual path
``sum_j comb[i][j] dx_next[j]``, so that the GPU produces dx in one pass. The last three are the
dy fold of mhc.torch.chain_pass (the backward of a stack, rewritten under torch.compile): the
``_lower`` ops also return the lower sublayer's dy from dx (``dy_lower``, from its ``post_lower``),
and ``hc_joint_backward`` is hc_post_backward's dpost/dcomb and hc_pre_backward in one, for a
sublayer whose dy came from the one above.

Implementations: on CUDA tensors the compiled kernels from the kernel cache (:mod:`mhc.torch.kernels`);
on any other device the reference math (:mod:`mhc.torch.reference`), so a model built on these ops
runs (and is tested) on the CPU. Where the C++ launch path is built, C++ kernels registered for the
CUDA key take the CUDA calls (mhc.torch.native.install_ops: no Python runs per call) and come back
to the Python implementations below for what they do not handle. Fake implementations give
torch.compile the output metadata, so the ops stay single nodes in a ``fullgraph=True`` graph and
are captured by CUDA graphs.

Autograd (registered here) makes each op correct on its own: hc_pre's backward passes
``dx_next = 0``, hc_post's adds its residual dx with a PyTorch einsum. ``HyperConnection`` does not
use these formulas: it wires the pair so that no separate dx pass exists (mhc.torch.modules).
The backward ops have no autograd (no double backward).
"""

from __future__ import annotations

import torch

from . import chain_pass
from . import checks
from . import inductor_fallbacks
from . import reference as ref

Tensor = torch.Tensor


def _on_gpu(x: Tensor) -> bool:
    return x.device.type == "cuda"


def _prepare_inductor() -> None:
    """Called by the fake implementations of hc_pre and hc_post (a compiled graph's first mhc
    ops): once Inductor is loaded, installs mhc's chain pass and registers the mhc ops' fallback
    lowerings (mhc.torch.chain_pass, mhc.torch.inductor_fallbacks)."""
    chain_pass.install_if_compiling()
    inductor_fallbacks.register_if_compiling()


_KERNELS = None


def _kernels():
    """mhc.torch.kernels, imported on the first CUDA op (ctypes/runtime loading only then) and
    kept: an import statement per call costs ~10 µs of host time."""
    global _KERNELS
    if _KERNELS is None:
        from . import kernels
        _KERNELS = kernels
    return _KERNELS


# ------------------------------------------------------------------------------------------------
# hc_pre
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("mhc::hc_pre", mutates_args=())
def hc_pre(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, iterations: int, eps: float,
           pre_eps: float, post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    if _on_gpu(x):
        return _kernels().run("hc_pre", x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    u, post, comb, mix = ref.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    return u.contiguous(), post.contiguous(), comb.contiguous(), mix.contiguous()


def hc_pre_outputs(x, M):
    """Empty (u, post, comb, mix) of the right shapes and dtypes (also the kernels' allocation)."""
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    cd = checks.coefficient_dtype(x)
    return (x.new_empty(*lead, C), x.new_empty(*lead, n, dtype=cd),
            x.new_empty(*lead, n, n, dtype=cd), x.new_empty(*lead, M, dtype=cd))


@hc_pre.register_fake
def _(x, fn, scale, base, iterations, eps, pre_eps, post_mult):
    checks.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    _prepare_inductor()
    return hc_pre_outputs(x, fn.shape[0])


# ------------------------------------------------------------------------------------------------
# hc_post
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("mhc::hc_post", mutates_args=())
def hc_post(y: Tensor, x: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    checks.hc_post("hc_post", y, x, post, comb)
    if _on_gpu(x):
        return _kernels().run("hc_post", y, x, post, comb)[0]
    return ref.hc_post(y, x, post, comb).contiguous()


@hc_post.register_fake
def _(y, x, post, comb):
    checks.hc_post("hc_post", y, x, post, comb)
    _prepare_inductor()
    return torch.empty_like(x)


# ------------------------------------------------------------------------------------------------
# hc_post_backward
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("mhc::hc_post_backward", mutates_args=())
def hc_post_backward(y: Tensor, x: Tensor, post: Tensor, comb: Tensor,
                     dx_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    checks.hc_post_backward(y, x, post, comb, dx_next)
    if _on_gpu(x):
        return _kernels().run("hc_post_backward", y, x, post, comb, dx_next)
    return tuple(t.contiguous() for t in ref.hc_post_backward(y, x, post, comb, dx_next))


@hc_post_backward.register_fake
def _(y, x, post, comb, dx_next):
    checks.hc_post_backward(y, x, post, comb, dx_next)
    return torch.empty_like(y), torch.empty_like(post), torch.empty_like(comb)


# ------------------------------------------------------------------------------------------------
# hc_pre_backward
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("mhc::hc_pre_backward", mutates_args=())
def hc_pre_backward(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, mix: Tensor, du: Tensor,
                    dpost: Tensor, dcomb: Tensor, dx_next: Tensor, iterations: int, eps: float,
                    pre_eps: float, post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps,
                           pre_eps, post_mult)
    if _on_gpu(x):
        return _kernels().run("hc_pre_backward", x, fn, scale, base, mix, du, dpost, dcomb, dx_next,
                              iterations, eps, pre_eps, post_mult)
    return tuple(t.contiguous() for t in ref.hc_pre_backward(
        x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps, pre_eps, post_mult))


@hc_pre_backward.register_fake
def _(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps, pre_eps, post_mult):
    checks.hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps,
                           pre_eps, post_mult)
    return (torch.empty_like(x), torch.empty_like(fn), torch.empty_like(scale),
            torch.empty_like(base))


# ------------------------------------------------------------------------------------------------
# The chain's two halves: hc_pre_mixed and hc_post_project
# ------------------------------------------------------------------------------------------------
# hc_pre_mixed is hc_pre from a mix computed before: by the previous sublayer's hc_post_project
# (chained HyperConnections, mhc.torch.chain_pass under torch.compile) or by this sublayer's own
# forward (recomputation). No autograd: HyperConnection calls them where it wires the backward
# itself. Kernel sets built before the chain ops have no kernels for them: the reference math
# then runs on the GPU (correct, slower; chain_pass rewrites whatever the set, so that its
# result does not depend on the cache). The dy fold's ops, below, fall back to the set's
# hc_pre_backward kernels instead (the reference's Sinkhorn backward would cost far more).

def _built_or_reference(op: str, x, args, reference):
    """An op that older kernel sets lack: the kernels on CUDA tensors whose kernel set has them,
    else `reference()`."""
    out = _kernels().run_if_built(op, *args) if _on_gpu(x) else None
    if out is not None:
        return out
    return tuple(t.contiguous() for t in reference())


@torch.library.custom_op("mhc::hc_pre_mixed", mutates_args=())
def hc_pre_mixed(x: Tensor, mix: Tensor, scale: Tensor, base: Tensor, iterations: int, eps: float,
                 pre_eps: float, post_mult: float) -> tuple[Tensor, Tensor, Tensor]:
    args = (x, mix, scale, base, iterations, eps, pre_eps, post_mult)
    checks.hc_pre_mixed(*args)
    return _built_or_reference("hc_pre_mixed", x, args, lambda: ref.hc_pre_mixed(*args))


@hc_pre_mixed.register_fake
def _(x, mix, scale, base, iterations, eps, pre_eps, post_mult):
    checks.hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult)
    return hc_pre_outputs(x, mix.shape[-1])[:3]


@torch.library.custom_op("mhc::hc_post_project", mutates_args=())
def hc_post_project(y: Tensor, x: Tensor, post: Tensor, comb: Tensor, fn_next: Tensor,
                    iterations: int, eps: float, pre_eps: float,
                    post_mult: float) -> tuple[Tensor, Tensor]:
    args = (y, x, post, comb, fn_next, iterations, eps, pre_eps, post_mult)
    checks.hc_post_project(*args)
    return _built_or_reference("hc_post_project", x, args,
                               lambda: ref.hc_post_project(y, x, post, comb, fn_next, eps))


@hc_post_project.register_fake
def _(y, x, post, comb, fn_next, iterations, eps, pre_eps, post_mult):
    lead, n, C, M = checks.hc_post_project(y, x, post, comb, fn_next, iterations, eps, pre_eps,
                                           post_mult)
    return torch.empty_like(x), x.new_empty(*lead, M, dtype=checks.coefficient_dtype(x))


# ------------------------------------------------------------------------------------------------
# The dy fold: hc_pre_backward_lower, hc_joint_backward, hc_joint_backward_lower
# ------------------------------------------------------------------------------------------------
# Made by mhc.torch.chain_pass in compiled backward graphs, where one sublayer's dx is the
# dx_next of the sublayer below (its hc_post_backward's dy moves into this sublayer's backward:
# dy_lower). No autograd, like the other backward ops.

def _fold_op(op: str, x, args, reference):
    """A fold op: its kernels on CUDA tensors whose kernel set has them; on CUDA tensors of a
    set built before the fold, `reference` composed around the set's hc_pre_backward kernels (not
    the whole reference math, whose Sinkhorn backward would make every sublayer's backward many
    times slower); else (other devices) `reference` itself."""
    if not _on_gpu(x):
        return tuple(t.contiguous() for t in reference(*args))
    out = _kernels().run_if_built(op, *args)
    if out is not None:
        return out
    return tuple(reference(*args, pre_backward=_pre_backward_kernels))


def _pre_backward_kernels(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, *attrs):
    """hc_pre_backward on the kernel set's kernels (reference.hc_pre_backward's signature)."""
    return _kernels().run("hc_pre_backward", x, fn, scale, base, mix, du, dpost.contiguous(),
                          dcomb.contiguous(), dx_next, *attrs)


def _fold_outputs(x, fn, scale, base, lower: bool):
    """Empty (dx, dfn, dscale, dbase) and, for the _lower ops, dy_lower."""
    grads = (torch.empty_like(x), torch.empty_like(fn), torch.empty_like(scale),
             torch.empty_like(base))
    if not lower:
        return grads
    return (*grads, x.new_empty(x.shape[:-2] + x.shape[-1:]))


@torch.library.custom_op("mhc::hc_pre_backward_lower", mutates_args=())
def hc_pre_backward_lower(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, mix: Tensor,
                          du: Tensor, dpost: Tensor, dcomb: Tensor, dx_next: Tensor,
                          post_lower: Tensor, iterations: int, eps: float, pre_eps: float,
                          post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower, iterations, eps,
            pre_eps, post_mult)
    checks.hc_pre_backward_lower(*args)
    return _fold_op("hc_pre_backward_lower", x, args, ref.hc_pre_backward_lower)


@hc_pre_backward_lower.register_fake
def _(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower, iterations, eps, pre_eps,
      post_mult):
    checks.hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower,
                                 iterations, eps, pre_eps, post_mult)
    return _fold_outputs(x, fn, scale, base, lower=True)


@torch.library.custom_op("mhc::hc_joint_backward", mutates_args=())
def hc_joint_backward(x: Tensor, y: Tensor, fn: Tensor, scale: Tensor, base: Tensor, mix: Tensor,
                      du: Tensor, dx_next: Tensor, iterations: int, eps: float, pre_eps: float,
                      post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, fn, scale, base, mix, du, dx_next, iterations, eps, pre_eps, post_mult)
    checks.hc_joint_backward(*args)
    return _fold_op("hc_joint_backward", x, args, ref.hc_joint_backward)


@hc_joint_backward.register_fake
def _(x, y, fn, scale, base, mix, du, dx_next, iterations, eps, pre_eps, post_mult):
    checks.hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations, eps, pre_eps,
                             post_mult)
    return _fold_outputs(x, fn, scale, base, lower=False)


@torch.library.custom_op("mhc::hc_joint_backward_lower", mutates_args=())
def hc_joint_backward_lower(x: Tensor, y: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
                            mix: Tensor, du: Tensor, dx_next: Tensor, post_lower: Tensor,
                            iterations: int, eps: float, pre_eps: float,
                            post_mult: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, fn, scale, base, mix, du, dx_next, post_lower, iterations, eps, pre_eps,
            post_mult)
    checks.hc_joint_backward_lower(*args)
    return _fold_op("hc_joint_backward_lower", x, args, ref.hc_joint_backward_lower)


@hc_joint_backward_lower.register_fake
def _(x, y, fn, scale, base, mix, du, dx_next, post_lower, iterations, eps, pre_eps, post_mult):
    checks.hc_joint_backward_lower(x, y, fn, scale, base, mix, du, dx_next, post_lower, iterations,
                                   eps, pre_eps, post_mult)
    return _fold_outputs(x, fn, scale, base, lower=True)


# ------------------------------------------------------------------------------------------------
# The sublayer's pre-norm fused in: the *_norm ops (docs/PreNorm.md)
# ------------------------------------------------------------------------------------------------
# hc_pre(_mixed)_norm return o = rms_norm(u, weight, norm_eps) in u's place; the backward ops
# take o's cotangent g in du's place (u made again from x and mix) and also return dweight. Their
# kernels are in the sets whose key has this norm_eps (build_cache --norm-eps); the last five
# arguments (the Sinkhorn attributes and norm_eps) pick the set. No autograd: HyperConnection
# wires them (mhc.torch.modules), like the other backward ops.

def _norm_op(op: str, x, args, reference):
    if _on_gpu(x):
        return _kernels().run(op, *args)
    return tuple(t.contiguous() for t in reference(*args))


@torch.library.custom_op("mhc::hc_pre_norm", mutates_args=())
def hc_pre_norm(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, weight: Tensor,
                iterations: int, eps: float, pre_eps: float, post_mult: float,
                norm_eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (x, fn, scale, base, weight, iterations, eps, pre_eps, post_mult, norm_eps)
    checks.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    checks.norm("hc_pre_norm", x, weight, norm_eps)
    return _norm_op("hc_pre_norm", x, args, ref.hc_pre_norm)


@hc_pre_norm.register_fake
def _(x, fn, scale, base, weight, iterations, eps, pre_eps, post_mult, norm_eps):
    checks.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
    checks.norm("hc_pre_norm", x, weight, norm_eps)
    _prepare_inductor()
    return hc_pre_outputs(x, fn.shape[0])


@torch.library.custom_op("mhc::hc_pre_mixed_norm", mutates_args=())
def hc_pre_mixed_norm(x: Tensor, mix: Tensor, scale: Tensor, base: Tensor, weight: Tensor,
                      iterations: int, eps: float, pre_eps: float, post_mult: float,
                      norm_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    args = (x, mix, scale, base, weight, iterations, eps, pre_eps, post_mult, norm_eps)
    checks.hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult)
    checks.norm("hc_pre_mixed_norm", x, weight, norm_eps)
    return _norm_op("hc_pre_mixed_norm", x, args, ref.hc_pre_mixed_norm)


@hc_pre_mixed_norm.register_fake
def _(x, mix, scale, base, weight, iterations, eps, pre_eps, post_mult, norm_eps):
    checks.hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult)
    checks.norm("hc_pre_mixed_norm", x, weight, norm_eps)
    return hc_pre_outputs(x, mix.shape[-1])[:3]


def _norm_grads(x, fn, scale, base, weight, lower: bool):
    """Empty (dx, dfn, dscale, dbase, dweight) and, for the _lower ops, dy_lower."""
    grads = (*_fold_outputs(x, fn, scale, base, lower=False), torch.empty_like(weight))
    return (*grads, x.new_empty(x.shape[:-2] + x.shape[-1:])) if lower else grads


@torch.library.custom_op("mhc::hc_pre_backward_norm", mutates_args=())
def hc_pre_backward_norm(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, mix: Tensor,
                         weight: Tensor, g: Tensor, dpost: Tensor, dcomb: Tensor, dx_next: Tensor,
                         iterations: int, eps: float, pre_eps: float, post_mult: float,
                         norm_eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, iterations, eps, pre_eps,
            post_mult, norm_eps)
    checks.norm_backward("hc_pre_backward_norm", x, fn, scale, base, mix, weight, g, dpost, dcomb,
                         dx_next, None, None, args[-5:-1], norm_eps)
    return _norm_op("hc_pre_backward_norm", x, args, ref.hc_pre_backward_norm)


@hc_pre_backward_norm.register_fake
def _(x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, iterations, eps, pre_eps,
      post_mult, norm_eps):
    checks.norm_backward("hc_pre_backward_norm", x, fn, scale, base, mix, weight, g, dpost, dcomb,
                         dx_next, None, None, (iterations, eps, pre_eps, post_mult), norm_eps)
    return _norm_grads(x, fn, scale, base, weight, lower=False)


@torch.library.custom_op("mhc::hc_pre_backward_lower_norm", mutates_args=())
def hc_pre_backward_lower_norm(x: Tensor, fn: Tensor, scale: Tensor, base: Tensor, mix: Tensor,
                               weight: Tensor, g: Tensor, dpost: Tensor, dcomb: Tensor,
                               dx_next: Tensor, post_lower: Tensor, iterations: int, eps: float,
                               pre_eps: float, post_mult: float, norm_eps: float
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, post_lower, iterations, eps,
            pre_eps, post_mult, norm_eps)
    checks.norm_backward("hc_pre_backward_lower_norm", x, fn, scale, base, mix, weight, g, dpost,
                         dcomb, dx_next, None, post_lower, args[-5:-1], norm_eps)
    return _norm_op("hc_pre_backward_lower_norm", x, args, ref.hc_pre_backward_lower_norm)


@hc_pre_backward_lower_norm.register_fake
def _(x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, post_lower, iterations, eps,
      pre_eps, post_mult, norm_eps):
    checks.norm_backward("hc_pre_backward_lower_norm", x, fn, scale, base, mix, weight, g, dpost,
                         dcomb, dx_next, None, post_lower, (iterations, eps, pre_eps, post_mult),
                         norm_eps)
    return _norm_grads(x, fn, scale, base, weight, lower=True)


@torch.library.custom_op("mhc::hc_joint_backward_norm", mutates_args=())
def hc_joint_backward_norm(x: Tensor, y: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
                           mix: Tensor, weight: Tensor, g: Tensor, dx_next: Tensor,
                           iterations: int, eps: float, pre_eps: float, post_mult: float,
                           norm_eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, fn, scale, base, mix, weight, g, dx_next, iterations, eps, pre_eps, post_mult,
            norm_eps)
    checks.norm_backward("hc_joint_backward_norm", x, fn, scale, base, mix, weight, g, None, None,
                         dx_next, y, None, args[-5:-1], norm_eps)
    return _norm_op("hc_joint_backward_norm", x, args, ref.hc_joint_backward_norm)


@hc_joint_backward_norm.register_fake
def _(x, y, fn, scale, base, mix, weight, g, dx_next, iterations, eps, pre_eps, post_mult,
      norm_eps):
    checks.norm_backward("hc_joint_backward_norm", x, fn, scale, base, mix, weight, g, None, None,
                         dx_next, y, None, (iterations, eps, pre_eps, post_mult), norm_eps)
    return _norm_grads(x, fn, scale, base, weight, lower=False)


@torch.library.custom_op("mhc::hc_joint_backward_lower_norm", mutates_args=())
def hc_joint_backward_lower_norm(x: Tensor, y: Tensor, fn: Tensor, scale: Tensor, base: Tensor,
                                 mix: Tensor, weight: Tensor, g: Tensor, dx_next: Tensor,
                                 post_lower: Tensor, iterations: int, eps: float, pre_eps: float,
                                 post_mult: float, norm_eps: float
                                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, y, fn, scale, base, mix, weight, g, dx_next, post_lower, iterations, eps, pre_eps,
            post_mult, norm_eps)
    checks.norm_backward("hc_joint_backward_lower_norm", x, fn, scale, base, mix, weight, g, None,
                         None, dx_next, y, post_lower, args[-5:-1], norm_eps)
    return _norm_op("hc_joint_backward_lower_norm", x, args, ref.hc_joint_backward_lower_norm)


@hc_joint_backward_lower_norm.register_fake
def _(x, y, fn, scale, base, mix, weight, g, dx_next, post_lower, iterations, eps, pre_eps,
      post_mult, norm_eps):
    checks.norm_backward("hc_joint_backward_lower_norm", x, fn, scale, base, mix, weight, g, None,
                         None, dx_next, y, post_lower, (iterations, eps, pre_eps, post_mult),
                         norm_eps)
    return _norm_grads(x, fn, scale, base, weight, lower=True)


# ------------------------------------------------------------------------------------------------
# Stand-alone autograd of the forward ops
# ------------------------------------------------------------------------------------------------

def _hc_pre_setup(ctx, inputs, output):
    x, fn, scale, base, iterations, eps, pre_eps, post_mult = inputs
    ctx.save_for_backward(x, fn, scale, base, output[3])
    ctx.mark_non_differentiable(output[3])   # mix is saved for the backward, not a result to train
    ctx.attrs = (iterations, eps, pre_eps, post_mult)


def _hc_pre_backward(ctx, du, dpost, dcomb, dmix):
    x, fn, scale, base, mix = ctx.saved_tensors
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    cd = checks.coefficient_dtype(x)
    du = x.new_zeros(*lead, C) if du is None else du.contiguous()
    dpost = x.new_zeros(*lead, n, dtype=cd) if dpost is None else dpost.contiguous()
    dcomb = x.new_zeros(*lead, n, n, dtype=cd) if dcomb is None else dcomb.contiguous()
    dx, dfn, dscale, dbase = hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb,
                                             torch.zeros_like(x), *ctx.attrs)
    return dx, dfn, dscale, dbase, None, None, None, None


hc_pre.register_autograd(_hc_pre_backward, setup_context=_hc_pre_setup)


def _hc_post_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _hc_post_backward(ctx, dx_next):
    y, x, post, comb = ctx.saved_tensors
    dx_next = dx_next.contiguous()
    dy, dpost, dcomb = hc_post_backward(y, x, post, comb, dx_next)
    # The residual part that hc_pre_backward takes over inside HyperConnection.
    n, C = x.shape[-2:]
    dx = torch.einsum("tij,tjc->tic", comb.reshape(-1, n, n),
                      dx_next.reshape(-1, n, C).to(comb.dtype)).to(x.dtype).reshape(x.shape)
    return dy, dx, dpost, dcomb


hc_post.register_autograd(_hc_post_backward, setup_context=_hc_post_setup)


# ------------------------------------------------------------------------------------------------
# Eager fast path
# ------------------------------------------------------------------------------------------------

class DirectOps:
    """The four ops for HyperConnection's cuda backend. In eager mode on CUDA tensors they check
    the arguments and call the kernels directly, skipping the custom-op dispatcher (tens of µs of
    host time per sublayer); under torch.compile, and on other devices, they are the torch.ops.mhc
    ops themselves (single opaque graph nodes)."""

    @staticmethod
    def _direct(x) -> bool:
        return _on_gpu(x) and not torch.compiler.is_compiling()

    @staticmethod
    def hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult):
        if not DirectOps._direct(x):
            return torch.ops.mhc.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
        checks.hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult)
        return _kernels().run("hc_pre", x, fn, scale, base, iterations, eps, pre_eps, post_mult)

    @staticmethod
    def hc_post(y, x, post, comb):
        if not DirectOps._direct(x):
            return torch.ops.mhc.hc_post(y, x, post, comb)
        checks.hc_post("hc_post", y, x, post, comb)
        return _kernels().run("hc_post", y, x, post, comb)[0]

    @staticmethod
    def hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult):
        args = (x, mix, scale, base, iterations, eps, pre_eps, post_mult)
        if not DirectOps._direct(x):
            return torch.ops.mhc.hc_pre_mixed(*args)
        checks.hc_pre_mixed(*args)
        return _built_or_reference("hc_pre_mixed", x, args, lambda: ref.hc_pre_mixed(*args))

    @staticmethod
    def hc_post_backward(y, x, post, comb, dx_next):
        if not DirectOps._direct(x):
            return torch.ops.mhc.hc_post_backward(y, x, post, comb, dx_next)
        checks.hc_post_backward(y, x, post, comb, dx_next)
        return _kernels().run("hc_post_backward", y, x, post, comb, dx_next)

    @staticmethod
    def hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps,
                        pre_eps, post_mult):
        args = (x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps, pre_eps,
                post_mult)
        if not DirectOps._direct(x):
            return torch.ops.mhc.hc_pre_backward(*args)
        checks.hc_pre_backward(*args)
        return _kernels().run("hc_pre_backward", *args)
