"""nn.Modules for mHC: ``HyperConnection`` around a sublayer, ``Expand`` after the embedding,
``Collapse`` / ``Head`` before the final norm.

How HyperConnection's autograd is wired (the private contract of this file)
--------------------------------------------------------------------------
One sublayer is ``u, post, comb, mix = hc_pre(x, ...)``, ``y = sublayer(u)``,
``x_next = hc_post(y, x, post, comb)``. x feeds three places (norm_project, pre_apply, and the
residual part of post_res), so its gradient has three terms. The GPU computes all three in one pass
of ``hc_pre_backward``, which therefore needs ``dx_next``. To get it there without a separate
autograd add over [T, n, C]:

* ``_PreStep`` (forward: hc_pre) returns, besides u/post/comb/mix, a *link*: a zero-stride tensor of
  x's shape that holds no data (``x.new_zeros(()).expand(x.shape)``);
* ``_PostStep`` (forward: hc_post) takes the link as an extra input. Its backward runs
  hc_post_backward -> (dy, dpost, dcomb), returns *no* gradient for x and hands ``dx_next`` itself
  as the "gradient" of the link;
* autograd delivers that to ``_PreStep``'s backward as the link's cotangent, which calls
  hc_pre_backward(..., dx_next) -> the true, whole dx (plus dfn, dscale, dbase).

The link exists only inside ``HyperConnection.forward``; it is never returned, stored or passed to
the sublayer, so nothing outside can read it or send a gradient into it. Gradients that reach x
from elsewhere (x used by other code) add up as usual. Tested with gradcheck (eager and
torch.compile fullgraph) in python/tests/test_torch_modules.py. On CUDA tensors in eager mode the
same two steps run in C++ (native.cpp's PreStep/PostStep, HyperConnection._forward_native), which
also chain consecutive HyperConnections and (unless MHC_EAGER_FOLD_DY=0) fold a sublayer's dy into
the backward of the one above (native.cpp explains both; the steps here do neither).

Recomputation (``recompute=True``, the paper's trade of compute for activation memory)
-------------------------------------------------------------------------------------
The mHC steps save only x, mix and y (plus the parameters); ``_PostStep``'s backward recomputes
u/post/comb with one ``hc_pre_mixed`` call (from the saved mix: no pass over x for the
projection) instead of keeping post/comb, and the sublayer's own saved
copy of its input u (e.g. a norm or linear layer's input) is replaced by a marker and recomputed
from that same call (``saved_tensors_hooks`` around the sublayer; other hooks the user installed
still see every other tensor). Under torch.compile the hooks are not used (the compiled graph
decides what it saves), u stays saved, and so post/comb are saved too: recomputing them alone
would relaunch a kernel that reads x to spare (n + n^2) f32 a token.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from . import checks
from . import kernels
from . import native
from . import reference as ref
from .ops import DirectOps

_BACKENDS = ("auto", "cuda", "ops", "reference")
_MODES = ("mhc", "hc")


def _ops(backend: str):
    """The four op implementations of a resolved backend (both tables have the same signatures):
    the mhc:: custom ops (called directly in eager mode: ops.DirectOps) or the reference math."""
    return DirectOps if backend == "cuda" else ref


_KERNELS_FOUND: set = set()            # shapes whose kernel set was found: no look-up per forward
_KERNELS_MISSING: dict = {}             # shape -> when a look-up last found none
_RECHECK_MISSING_S = 1.0


@torch.compiler.assume_constant_result
def _cuda_kernels_available(n: int, C: int, dtype: str, norm_eps: float | None = None) -> bool:
    """Whether the cache holds (or mhc can build) this shape's kernel set (with norm_eps: the set
    of the *_norm ops for that eps). A "no" is looked up again after a second, so that a set
    built or copied in while the process runs is picked up."""
    shape = (n, C, dtype, norm_eps)
    if shape in _KERNELS_FOUND:
        return True
    last = _KERNELS_MISSING.get(shape)
    if last is not None and time.monotonic() - last < _RECHECK_MISSING_S:
        return False
    if kernels.available(n, C, dtype, norm_eps=norm_eps):
        _KERNELS_FOUND.add(shape)
        _KERNELS_MISSING.pop(shape, None)
        return True
    _KERNELS_MISSING[shape] = time.monotonic()
    return False


def _native_kernel_set(x, attrs, norm_eps=None):
    """x's kernel set (with norm_eps: the fused pre-norm's set of that eps) when the C++ steps
    can run it, else None (the C++ path is off, not built or suspended; HyperConnection then runs
    the same kernels through _PreStep/_PostStep)."""
    if native.suspended:
        return None
    if norm_eps is None:
        ks = kernels.for_call("hc_pre", x, attrs)
    else:
        ks = kernels.for_call("hc_pre_norm", x, (*attrs, norm_eps))
    return ks if ks.native_handle() is not None else None


def resolve_backend(backend: str, x: torch.Tensor, n: int, C: int,
                    norm_eps: float | None = None) -> str:
    """'cuda' or 'reference' for this input. ``auto``: the kernels for CUDA tensors when their
    kernel set is in the cache (or can be compiled here), else the reference math (norm_eps: a
    fused pre-norm's eps, whose set it must be). ``ops``: the
    mhc:: custom ops on any device ('cuda': the ops path; off CUDA the ops run their reference
    math), i.e. on the CPU the graph that torch.compile gets on a GPU."""
    if backend == "reference":
        return "reference"
    if backend == "ops":
        return "cuda"
    if backend == "cuda":
        if x.device.type != "cuda":
            raise ValueError(f"HyperConnection(backend='cuda') needs CUDA tensors, got x on {x.device} "
                             "(use backend='reference' or 'auto' on other devices)")
        return "cuda"
    if x.device.type == "cuda" and _cuda_kernels_available(n, C, str(x.dtype).replace("torch.", ""),
                                                           norm_eps):
        return "cuda"
    return "reference"


class _URecompute:
    """saved_tensors_hooks around the sublayer: its saved copy of u becomes a marker, rebuilt in
    the backward from the u that _PostStep's backward recomputed (or by calling hc_pre_mixed again).
    The C++ path has its twin (native.cpp's URecompute)."""

    def __init__(self, u, inputs, backend, attrs, norm=None):
        self.u_storage = u.untyped_storage().data_ptr()
        self.u_dtype = u.dtype
        self.inputs, self.backend, self.attrs = inputs, backend, attrs   # (x, mix, scale, base)
        self.norm = norm      # (weight, norm_eps) where the sublayer reads o = rms_norm(u)
        self.recomputed_u = None
        self.outer = torch._C._autograd._top_saved_tensors_default_hooks(False)

    def pack(self, t):
        if (t.dtype == self.u_dtype and t.device.type != "meta"
                and t.untyped_storage().data_ptr() == self.u_storage):
            return ("u", self, tuple(t.shape), t.stride(), t.storage_offset())
        return ("other", self.outer[0](t) if self.outer else t)

    def unpack(self, packed):
        if packed[0] == "other":
            return self.outer[1](packed[1]) if self.outer else packed[1]
        _, holder, shape, stride, offset = packed
        u = holder.take_u()
        return u.as_strided(shape, stride, offset)

    def take_u(self):
        u, self.recomputed_u = self.recomputed_u, None   # hand it over once; later unpacks recompute
        if u is None:
            u = _pre_mixed(self.backend, self.inputs, self.attrs, self.norm)[0]
        return u


def _pre_mixed(backend, inputs, attrs, norm):
    """hc_pre_mixed(*inputs, *attrs), or with the fused pre-norm (norm = (weight, norm_eps))
    hc_pre_mixed_norm: (u or o, post, comb)."""
    if norm is None:
        return _ops(backend).hc_pre_mixed(*inputs, *attrs)
    x, mix, scale, base = inputs
    return _norm_ops(backend).hc_pre_mixed_norm(x, mix, scale, base, norm[0], *attrs, norm[1])


def _norm_eps(norm, x) -> float:
    """An nn.RMSNorm's eps as it applies to x (None: the dtype's epsilon, as nn.RMSNorm takes it)."""
    return float(norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps)


def _norm_ops(backend: str):
    """The *_norm ops of a resolved backend: the mhc:: custom ops or the reference math."""
    return torch.ops.mhc if backend == "cuda" else ref


def _refuse_double_backward(ctx):
    """A backward that records a graph (create_graph=True) on the cuda backend: its kernels have
    no autograd, so the gradients would come back without one (native.cpp refuses it alike).
    (torch.compile traces these backwards with grad mode off.)"""
    if ctx.backend == "cuda" and torch.is_grad_enabled():
        raise RuntimeError("HyperConnection (cuda backend): double backward (create_graph=True) "
                           "is not supported; mhc's backward kernels have no gradient of their own")


def _differentiable_mix(ctx, x, fn, mix):
    """The saved mix, or for a backward that records a graph (create_graph=True: double
    backward) on the reference backend the same mix computed again from x and fn: saved, it is
    a constant there, and the second order through the coefficients would be lost."""
    if ctx.backend == "reference" and torch.is_grad_enabled():
        return ref.norm_project(x, fn, ctx.attrs[1])
    return mix


def _cotangents(x, mix, du, dpost, dcomb, dx_next):
    """The pre step's cotangents, contiguous; absent ones (an output nobody used) are zeros."""
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    cd = mix.dtype
    du = x.new_zeros(*lead, C) if du is None else du.contiguous()
    dpost = x.new_zeros(*lead, n, dtype=cd) if dpost is None else dpost.contiguous()
    dcomb = x.new_zeros(*lead, n, n, dtype=cd) if dcomb is None else dcomb.contiguous()
    dx_next = torch.zeros_like(x) if dx_next is None else dx_next.contiguous()
    return du, dpost, dcomb, dx_next


class _PreStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, scale, base, backend, attrs):
        u, post, comb, mix = _ops(backend).hc_pre(x, fn, scale, base, *attrs)
        ctx.save_for_backward(x, fn, scale, base, mix)
        ctx.backend, ctx.attrs = backend, attrs
        ctx.mark_non_differentiable(mix)
        ctx.set_materialize_grads(False)
        link = x.new_zeros(()).expand(x.shape)      # no data: it only carries dx_next back
        return u, post, comb, mix, link

    @staticmethod
    def backward(ctx, du, dpost, dcomb, _dmix, dx_next):
        _refuse_double_backward(ctx)
        x, fn, scale, base, mix = ctx.saved_tensors
        mix = _differentiable_mix(ctx, x, fn, mix)
        du, dpost, dcomb, dx_next = _cotangents(x, mix, du, dpost, dcomb, dx_next)
        dx, dfn, dscale, dbase = _ops(ctx.backend).hc_pre_backward(
            x, fn, scale, base, mix, du, dpost, dcomb, dx_next, *ctx.attrs)
        return dx, dfn, dscale, dbase, None, None


class _PreNormStep(torch.autograd.Function):
    """_PreStep with the sublayer's pre-norm fused in (docs/PreNorm.md): the forward returns
    o = rms_norm(u, weight) for the sublayer, the backward takes o's cotangent and also gives
    the norm weight's gradient (u is made again from x and mix: never saved)."""

    @staticmethod
    def forward(ctx, x, fn, scale, base, weight, backend, attrs, norm_eps):
        o, post, comb, mix = _norm_ops(backend).hc_pre_norm(x, fn, scale, base, weight, *attrs,
                                                            norm_eps)
        ctx.save_for_backward(x, fn, scale, base, mix, weight)
        ctx.backend, ctx.attrs, ctx.norm_eps = backend, attrs, norm_eps
        ctx.mark_non_differentiable(mix)
        ctx.set_materialize_grads(False)
        link = x.new_zeros(()).expand(x.shape)      # as _PreStep's
        return o, post, comb, mix, link

    @staticmethod
    def backward(ctx, do, dpost, dcomb, _dmix, dx_next):
        _refuse_double_backward(ctx)
        x, fn, scale, base, mix, weight = ctx.saved_tensors
        mix = _differentiable_mix(ctx, x, fn, mix)
        do, dpost, dcomb, dx_next = _cotangents(x, mix, do, dpost, dcomb, dx_next)
        dx, dfn, dscale, dbase, dweight = _norm_ops(ctx.backend).hc_pre_backward_norm(
            x, fn, scale, base, mix, weight, do, dpost, dcomb, dx_next, *ctx.attrs, ctx.norm_eps)
        return dx, dfn, dscale, dbase, dweight, None, None, None


class _PostStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, link, post, comb, mix, fn, scale, base, backend, attrs, recompute):
        # recompute: the _URecompute of the sublayer's u (or o), or None (save post and comb).
        x_next = _ops(backend).hc_post(y, x, post, comb)
        ctx.backend, ctx.attrs, ctx.recompute = backend, attrs, recompute
        if recompute is None:
            ctx.save_for_backward(y, x, post, comb)
        else:
            # x, mix, fn, scale, base are saved by _PreStep too: the same tensors, no extra memory.
            ctx.save_for_backward(y, x, mix, fn, scale, base)
        return x_next

    @staticmethod
    def backward(ctx, dx_next):
        _refuse_double_backward(ctx)
        if ctx.recompute is None:
            y, x, post, comb = ctx.saved_tensors
        else:
            y, x, mix, fn, scale, base = ctx.saved_tensors
            mix = _differentiable_mix(ctx, x, fn, mix)
            # From the saved mix: the same u/post/comb as the forward's (hc_pre is hc_pre_mixed
            # after its norm_project), without the norm_project's pass over x.
            u, post, comb = _pre_mixed(ctx.backend, (x, mix, scale, base), ctx.attrs,
                                       ctx.recompute.norm)
            ctx.recompute.recomputed_u = u      # the sublayer's backward, next, reads it
        dx_next = dx_next.contiguous()
        dy, dpost, dcomb = _ops(ctx.backend).hc_post_backward(y, x, post, comb, dx_next)
        # No gradient for x here: dx_next goes through the link to _PreStep, which computes all of dx.
        return dy, None, dx_next, dpost, dcomb, None, None, None, None, None, None, None


def _no_autocast(x):
    """The mHC math keeps its own precision (spec section 4: f32 coefficients and products) even
    inside a user's autocast region; the sublayer still runs under it."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()     # autocast is off: nothing to switch (saves host time)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class HyperConnection(nn.Module):
    """``x_next = HyperConnection(n, C, sublayer)(x)`` for x ``[..., n, C]``: one mHC (or HC) residual
    step around ``sublayer`` (attention, FFN, ...; it maps u ``[..., C]`` to y ``[..., C]``).

    Parameters (``mode="mhc"``, spec sections 2-3): ``fn f32[M, n*C]``, ``scale f32[3]``,
    ``base f32[M]``, M = n*n + 2n, initialised like mhc-opt's ``--mhc-hyperconnect init=paper``:
    alpha = 0.01 (scale), fn ~ U(-0.01, 0.01), base = [logit(1/n)]*n (pre = 1/n: u is the mean of
    the streams; n = 1: 6.0) ++ [0]*n (post = 2*sigmoid(0) = 1) ++ [0]*n*n (comb = J/n, averaging).

    ``mode="hc"``: plain dynamic hyper-connections (spec 5b, reference math only) with
    ``theta f32[n+2, C]`` (rows theta_pre, theta_post, theta_res[0..n-1]), ``scale`` and ``base`` in
    the same layout; init alpha = 0.01, theta ~ U(-0.01, 0.01), base = the HC identity
    (pre = one-hot e_{layer mod n}, post = 1, res = I).

    ``backend``: "reference" (PyTorch math, any device), "cuda" (mhc's compiled kernels through the
    ``mhc::`` custom ops; CUDA tensors), "auto" (cuda when its kernels are cached, else reference)
    or "ops" (the ``mhc::`` ops on any device: the kernels on CUDA, their reference math elsewhere;
    to check on the CPU what a model compiles to on a GPU).
    ``recompute``: see the module docstring. Extra positional/keyword arguments of ``forward`` go
    to the sublayer.

    ``norm``: the sublayer's pre-norm, taken out of the sublayer: the sublayer then gets
    ``norm(u)`` (a trained submodule of this one). An ``nn.RMSNorm(C)`` with a weight, in
    ``mode="mhc"``, is fused into mhc's kernels (docs/PreNorm.md): the pre kernel writes the
    normed row, the backward makes u again and computes the norm's gradient in its own passes
    (the weight is used in x's dtype; eps None means ``torch.finfo(x.dtype).eps``, as
    nn.RMSNorm's). Any other module runs as it is, between mhc and the sublayer.
    """

    def __init__(self, n: int, C: int, sublayer: nn.Module, mode: str = "mhc", iterations: int = 20,
                 eps: float = 1e-6, pre_eps: float = 1e-6, post_mult: float = 2.0,
                 backend: str = "auto", recompute: bool = True, layer: int = 0,
                 norm: nn.Module | None = None):
        super().__init__()
        if n < 1 or C < 1:
            raise ValueError(f"HyperConnection: need n >= 1 and C >= 1, got n={n}, C={C}")
        if mode not in _MODES:
            raise ValueError(f"HyperConnection: mode must be one of {_MODES}, got {mode!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"HyperConnection: backend must be one of {_BACKENDS}, got {backend!r}")
        checks.attributes("HyperConnection", iterations, eps, pre_eps, post_mult)
        self.n, self.C, self.mode, self.backend, self.recompute = n, C, mode, backend, recompute
        self.attrs = (int(iterations), float(eps), float(pre_eps), float(post_mult))
        self.sublayer = sublayer
        self.norm = norm
        if norm is not None and not callable(norm):
            raise ValueError(f"HyperConnection: norm must be a module (e.g. nn.RMSNorm({C})), got "
                             f"{type(norm).__name__}")
        self.record_coefficients = False   # when True, forward keeps comb/res (detached) in .last_res
        self.last_res = None
        self._mhc_next = None              # weakref to the next HyperConnection (chaining)
        M = n * n + 2 * n
        base = torch.zeros(M)
        g = torch.Generator().manual_seed(1000 + layer)
        if mode == "mhc":
            base[:n] = _logit(1.0 / n) if n > 1 else 6.0
            self.fn = nn.Parameter((torch.rand(M, n * C, generator=g) * 2 - 1) * 0.01)
        else:
            base[layer % n] = 1.0
            base[n:2 * n] = 1.0
            base[2 * n:] = torch.eye(n).reshape(-1)
            self.theta = nn.Parameter((torch.rand(n + 2, C, generator=g) * 2 - 1) * 0.01)
        self.scale = nn.Parameter(torch.full((3,), 0.01))
        self.base = nn.Parameter(base)

    def __getstate__(self):
        # The chain's weak reference to the next HyperConnection (native.cpp) is this process's
        # and this model's: a pickled or copied model learns its own chain again.
        state = super().__getstate__()
        state["_mhc_next"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("_mhc_next", None)     # pickled before chaining kept it in the module
        super().__setstate__(state)

    def successor(self):
        """The HyperConnection whose mix this one's post kernel computes (chaining), or None."""
        return self._mhc_next() if self._mhc_next is not None else None

    def extra_repr(self):
        it, eps, pre_eps, pm = self.attrs
        fused = ", norm fused" if self._fused_norm_module() is not None else ""
        return (f"n={self.n}, C={self.C}, mode={self.mode}, backend={self.backend}, "
                f"recompute={self.recompute}, iterations={it}{fused}")

    def _fused_norm_module(self):
        """self.norm where mhc's kernels compute it (an nn.RMSNorm over C with a weight, mode
        mhc; not a subclass, whose forward may differ), else None (no norm, or one that runs as
        it is)."""
        m = self.norm
        if (self.mode == "mhc" and type(m) is nn.RMSNorm and m.weight is not None
                and tuple(m.normalized_shape) == (self.C,)):
            return m
        return None

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or tuple(x.shape[-2:]) != (self.n, self.C):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"HyperConnection(n={self.n}, C={self.C}): x must be [..., {self.n}, "
                             f"{self.C}], got {shape}")
        checks.streams("HyperConnection", x)
        if x.device != self.scale.device:
            raise ValueError(f"HyperConnection: x is on {x.device}, the parameters on {self.scale.device}")

    def _check_output(self, y, x):
        if not isinstance(y, torch.Tensor) or y.shape != x.shape[:-2] + (self.C,):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"HyperConnection: the sublayer must return [..., C] = "
                             f"{tuple(x.shape[:-2]) + (self.C,)}, got {shape}")

    def _params(self, x):
        cd = checks.coefficient_dtype(x)
        cast = lambda p: p if p.dtype == cd else p.to(cd)   # noqa: E731 - f32 (f64 for checks)
        return cast(self.fn), cast(self.scale), cast(self.base)

    def forward(self, x, *args, **kwargs):
        # The fast path (a model's steady state, where host time matters): native.cpp's forward
        # runs the whole step for a shape this class has already run on the C++ path, when x
        # and the parameters are as the kernels want them (contiguous x, f32 parameters), and
        # returns None for anything else, which the general path below checks and runs.
        fast = native.fast_forward
        if fast is not None and not native.suspended and not torch.compiler.is_compiling():
            x_next = fast(self, x, args, kwargs)
            if x_next is not None:
                return x_next
        self._check_input(x)
        if self.mode == "hc":
            return self._forward_hc(x, *args, **kwargs)
        norm = self._fused_norm_module()
        norm_eps = None if norm is None else _norm_eps(norm, x)
        backend = resolve_backend(self.backend, x, self.n, self.C, norm_eps)
        fn, scale, base = self._params(x)
        if (backend == "cuda" and x.is_cuda and (norm is not None or self.norm is None)
                and not torch.compiler.is_compiling()):
            ks = _native_kernel_set(x, self.attrs, norm_eps)
            if ks is not None:
                native.load().enable_fast_path(self.n, self.C, *self.attrs, ks.key.dtype,
                                               x.get_device(), ks.native_handle(),
                                               norm_eps or 0.0)
                return self._forward_native(ks, x, fn, scale, base, args, kwargs)
        fused_norm = None   # (weight, norm_eps): the pre-norm in mhc's ops (the Python steps)
        if norm is not None:
            weight = norm.weight if norm.weight.dtype == x.dtype else norm.weight.to(x.dtype)
            fused_norm = (weight, norm_eps)
        with _no_autocast(x):
            if fused_norm is None:
                u, post, comb, mix, link = _PreStep.apply(x, fn, scale, base, backend,
                                                          self.attrs)
            else:   # u is the normed row here: what the sublayer reads and saves
                u, post, comb, mix, link = _PreNormStep.apply(x, fn, scale, base, fused_norm[0],
                                                              backend, self.attrs, fused_norm[1])
        if self.record_coefficients:
            self.last_res = comb.detach()
        hooks = None
        if self.recompute and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            hooks = _URecompute(u, (x, mix, scale, base), backend, self.attrs, fused_norm)
        y = self._sublayer(u, x, hooks, args, kwargs)
        # Only with the hooks does recomputing pay: the backward's hc_pre_mixed then also gives
        # the sublayer its u. Without them (torch.compile) it would relaunch a kernel that reads
        # x only to spare post and comb, (n + n^2) f32 a token: the post step saves them.
        recompute = hooks
        with _no_autocast(x):
            return _PostStep.apply(y, x, link, post, comb, mix, fn, scale, base, backend,
                                   self.attrs, recompute)

    def _sublayer(self, u, x, hooks, args, kwargs):
        """y = sublayer(u) (its saved u recomputed in the backward when hooks are given), checked
        and stored like the stream (as `x + y` would be; e.g. a bf16 sublayer under autocast).
        """
        if hooks is None:
            y = self._call_sublayer(u, args, kwargs)
        else:
            with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
                y = self._call_sublayer(u, args, kwargs)
        self._check_output(y, x)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if y.is_contiguous() else y.contiguous()

    def _call_sublayer(self, u, args, kwargs):
        """sublayer(u), or sublayer(norm(u)) with a norm that mhc's ops do not compute."""
        if self.norm is not None and self._fused_norm_module() is None:
            u = self.norm(u)
        return self.sublayer(u, *args, **kwargs)

    def _forward_native(self, ks, x, fn, scale, base, args=(), kwargs=None):
        """forward() on the C++ path (native.cpp's forward_with: the same kernels and autograd
        wiring as _PreStep/_PostStep, the sublayer's u recomputed like _URecompute does, chained
        to the neighbouring HyperConnections; see native.cpp), for x's kernel set ks
        (_native_kernel_set; the fused pre-norm's set where self.norm is fused, whose weight
        the C++ side casts to x's dtype). args/kwargs go to the sublayer (packed: a keyword
        argument of the sublayer may be called `scale`)."""
        norm = self._fused_norm_module()
        return native.load().forward_with(self, ks.native_handle(), x, fn, scale, base,
                                          None if norm is None else norm.weight,
                                          tuple(args), kwargs or {})

    # Plain HC (spec 5b), the parametrisation of mhc-opt's --mhc-hyperconnect mode=hc.
    def _forward_hc(self, x, *args, **kwargs):
        cd = checks.coefficient_dtype(x)
        theta, scale, base = self.theta.to(cd), self.scale.to(cd), self.base.to(cd)
        with _no_autocast(x):
            pre, post, res, xf = self._hc_coefficients(x, theta, scale, base, cd)
            u = torch.einsum("...i,...ic->...c", pre, xf).to(x.dtype)
        if self.record_coefficients:
            self.last_res = res.detach()
        y = self._call_sublayer(u, args, kwargs)
        self._check_output(y, x)
        with _no_autocast(x):
            out = post[..., :, None] * y.to(cd)[..., None, :] + torch.einsum("...ij,...ic->...jc",
                                                                                res, xf)
        return out.to(x.dtype)

    def _hc_coefficients(self, x, theta, scale, base, cd):
        n = self.n
        xf = x.to(cd)
        xt = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)      # RMSNorm per stream
        proj = xt @ theta.t()                                                # [..., n, n+2]
        pre = scale[0] * torch.tanh(proj[..., 0]) + base[:n]
        post = scale[1] * torch.tanh(proj[..., 1]) + base[n:2 * n]
        res = scale[2] * torch.tanh(proj[..., 2:]) + base[2 * n:].view(n, n)  # [i][j]: source i -> j
        return pre, post, res, xf


class Expand(nn.Module):
    """``[..., C] -> [..., n, C]``: n copies of the embedding's output (its gradient sums the streams)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, h):
        return h.unsqueeze(-2).expand(*h.shape[:-1], self.n, h.shape[-1]).contiguous()


class Collapse(nn.Module):
    """``[..., n, C] -> [..., C]``: the plain-HC exit. ``mean=True`` (default) divides by n so that
    identical streams give back the original stream (as mhc-opt's rewrite does); ``mean=False`` is
    the spec's plain sum."""

    def __init__(self, mean: bool = True):
        super().__init__()
        self.mean = mean

    def forward(self, x):
        s = x.float().sum(-2) if x.dtype in (torch.bfloat16, torch.float16) else x.sum(-2)
        return (s / x.shape[-2] if self.mean else s).to(x.dtype)


class Head(nn.Module):
    """DeepSeek-V4's learned exit (spec section 3): ``sum_i (sigmoid(a_i) + eps) * x[i]`` with
    ``a = norm_project(x, fn) * alpha + base`` from its own ``fn f32[n, n*C]``. Init: fn ~
    U(-0.01, 0.01), alpha = 0.01, base = logit(1/n) (the mean of the streams; n = 1: 6.0)."""

    def __init__(self, n: int, C: int, eps: float = 1e-6, rms_eps: float = 1e-6):
        super().__init__()
        self.n, self.C, self.eps, self.rms_eps = n, C, eps, rms_eps
        g = torch.Generator().manual_seed(7)
        self.fn = nn.Parameter((torch.rand(n, n * C, generator=g) * 2 - 1) * 0.01)
        self.scale = nn.Parameter(torch.full((1,), 0.01))
        self.base = nn.Parameter(torch.full((n,), _logit(1.0 / n) if n > 1 else 6.0))

    def forward(self, x):
        if x.dim() < 2 or tuple(x.shape[-2:]) != (self.n, self.C):
            raise ValueError(f"Head(n={self.n}, C={self.C}): x must be [..., {self.n}, {self.C}], "
                             f"got {tuple(x.shape)}")
        cd = checks.coefficient_dtype(x)
        v = x.reshape(*x.shape[:-2], self.n * self.C).to(cd)
        r = torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.rms_eps)
        a = (v @ self.fn.to(cd).t()) * r * self.scale.to(cd) + self.base.to(cd)
        w = torch.sigmoid(a) + self.eps
        return torch.einsum("...i,...ic->...c", w, x.to(cd)).to(x.dtype)
