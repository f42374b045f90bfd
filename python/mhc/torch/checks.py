"""Argument checks shared by the custom ops (real and fake implementations) and the modules.

Every check runs before any work, so a bad call fails with a message naming the op, the argument
and what was expected, instead of a shape error deep inside a kernel (or silent garbage from one).
"""

from __future__ import annotations

import torch

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def fail(op: str, message: str):
    raise ValueError(f"mhc::{op}: {message}")


def coefficient_dtype(x: torch.Tensor) -> torch.dtype:
    """f32 coefficients and parameters; f64 when the activations are f64 (gradient checks)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _desc(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def _tensor(op, name, t, shape, dtype, device):
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        fail(op, f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} ({name}: {_desc(t)})")
    if t.dtype != dtype:
        fail(op, f"{name} has dtype {t.dtype}, expected {dtype}")
    if t.device != device:
        fail(op, f"{name} is on {t.device} but x is on {device}")
    if not t.is_contiguous():
        fail(op, f"{name} is not contiguous (strides {t.stride()}); call .contiguous() first")


def streams(op: str, x: torch.Tensor):
    """Checks x [..., n, C] and returns (leading dims, n, C)."""
    if not isinstance(x, torch.Tensor):
        fail(op, f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        fail(op, f"x must be [..., n, C], got shape {tuple(x.shape)}")
    if x.dtype not in ACTIVATION_DTYPES:
        fail(op, f"x has dtype {x.dtype}; supported: bfloat16, float16, float32 (float64 for checks)")
    n, C = x.shape[-2], x.shape[-1]
    if n < 1 or C < 1:
        fail(op, f"x must have n >= 1 streams and C >= 1 channels, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        fail(op, f"x is not contiguous (strides {x.stride()}); call .contiguous() first")
    return tuple(x.shape[:-2]), n, C


def attributes(op, iterations, eps, pre_eps, post_mult):
    if int(iterations) < 1:
        fail(op, f"iterations must be >= 1, got {iterations}")
    for name, value in (("eps", eps), ("pre_eps", pre_eps)):
        if not value >= 0:
            fail(op, f"{name} must be >= 0, got {value}")
    if not post_mult > 0:
        fail(op, f"post_mult must be > 0, got {post_mult}")


def parameters(op, x, fn, scale, base):
    lead, n, C = streams(op, x)
    M = n * n + 2 * n
    _tensor(op, "fn", fn, (M, n * C), coefficient_dtype(x), x.device)
    _scale_base(op, x, M, scale, base)
    return lead, n, C, M


def _scale_base(op, x, M, scale, base):
    cd = coefficient_dtype(x)
    _tensor(op, "scale", scale, (3,), cd, x.device)
    _tensor(op, "base", base, (M,), cd, x.device)


def hc_pre(x, fn, scale, base, iterations, eps, pre_eps, post_mult):
    attributes("hc_pre", iterations, eps, pre_eps, post_mult)
    return parameters("hc_pre", x, fn, scale, base)


def hc_post(op, y, x, post, comb):
    lead, n, C = streams(op, x)
    cd = coefficient_dtype(x)
    _tensor(op, "y", y, lead + (C,), x.dtype, x.device)
    _tensor(op, "post", post, lead + (n,), cd, x.device)
    _tensor(op, "comb", comb, lead + (n, n), cd, x.device)
    return lead, n, C


def hc_post_backward(y, x, post, comb, dx_next):
    lead, n, C = hc_post("hc_post_backward", y, x, post, comb)
    _tensor("hc_post_backward", "dx_next", dx_next, lead + (n, C), x.dtype, x.device)
    return lead, n, C


def hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations, eps, pre_eps,
                    post_mult, op="hc_pre_backward", du_name="du"):
    lead, n, C, M = _backward(op, x, fn, scale, base, mix, du, iterations, eps, pre_eps, post_mult,
                              du_name)
    cd = coefficient_dtype(x)
    _tensor(op, "dpost", dpost, lead + (n,), cd, x.device)
    _tensor(op, "dcomb", dcomb, lead + (n, n), cd, x.device)
    _tensor(op, "dx_next", dx_next, lead + (n, C), x.dtype, x.device)
    return lead, n, C, M


def _backward(op, x, fn, scale, base, mix, du, iterations, eps, pre_eps, post_mult, du_name="du"):
    """What every pre-side backward op takes: the attributes, x, the parameters, mix and du (g,
    the normed output's cotangent, for the *_norm ops)."""
    attributes(op, iterations, eps, pre_eps, post_mult)
    lead, n, C, M = parameters(op, x, fn, scale, base)
    _tensor(op, "mix", mix, lead + (M,), coefficient_dtype(x), x.device)
    _tensor(op, du_name, du, lead + (C,), x.dtype, x.device)
    return lead, n, C, M


def _post_lower(op, x, post_lower, lead, n):
    """The lower sublayer's post, whose dy the fold computes from this sublayer's dx."""
    _tensor(op, "post_lower", post_lower, lead + (n,), coefficient_dtype(x), x.device)


def hc_pre_backward_lower(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, post_lower,
                          iterations, eps, pre_eps, post_mult):
    op = "hc_pre_backward_lower"
    lead, n, C, M = hc_pre_backward(x, fn, scale, base, mix, du, dpost, dcomb, dx_next, iterations,
                                    eps, pre_eps, post_mult, op)
    _post_lower(op, x, post_lower, lead, n)
    return lead, n, C, M


def hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations, eps, pre_eps, post_mult,
                      op="hc_joint_backward", du_name="du"):
    lead, n, C, M = _backward(op, x, fn, scale, base, mix, du, iterations, eps, pre_eps, post_mult,
                              du_name)
    _tensor(op, "y", y, lead + (C,), x.dtype, x.device)
    _tensor(op, "dx_next", dx_next, lead + (n, C), x.dtype, x.device)
    return lead, n, C, M


def hc_joint_backward_lower(x, y, fn, scale, base, mix, du, dx_next, post_lower, iterations, eps,
                            pre_eps, post_mult):
    op = "hc_joint_backward_lower"
    lead, n, C, M = hc_joint_backward(x, y, fn, scale, base, mix, du, dx_next, iterations, eps,
                                      pre_eps, post_mult, op)
    _post_lower(op, x, post_lower, lead, n)
    return lead, n, C, M


def hc_pre_mixed(x, mix, scale, base, iterations, eps, pre_eps, post_mult):
    op = "hc_pre_mixed"
    attributes(op, iterations, eps, pre_eps, post_mult)
    lead, n, C = streams(op, x)
    M = n * n + 2 * n
    _tensor(op, "mix", mix, lead + (M,), coefficient_dtype(x), x.device)
    _scale_base(op, x, M, scale, base)
    return lead, n, C, M


def hc_post_project(y, x, post, comb, fn_next, iterations, eps, pre_eps, post_mult):
    op = "hc_post_project"
    attributes(op, iterations, eps, pre_eps, post_mult)
    lead, n, C = hc_post(op, y, x, post, comb)
    M = n * n + 2 * n
    _tensor(op, "fn_next", fn_next, (M, n * C), coefficient_dtype(x), x.device)
    return lead, n, C, M


def norm(op, x, weight, norm_eps):
    """The pre-norm's weight [C] (x's dtype: the backward kernels read it so) and eps of the
    *_norm ops (docs/PreNorm.md)."""
    _tensor(op, "weight", weight, (x.shape[-1],), x.dtype, x.device)
    if not (norm_eps > 0 and norm_eps < float("inf")):
        fail(op, f"norm_eps must be finite and > 0, got {norm_eps}")


def norm_backward(op, x, fn, scale, base, mix, weight, g, dpost, dcomb, dx_next, y, post_lower,
                  attrs, norm_eps):
    """The *_norm backward ops: hc_pre_backward's or hc_joint_backward's checks (y given) with g
    for du, the weight, and post_lower where given."""
    if y is None:
        lead, n, C, M = hc_pre_backward(x, fn, scale, base, mix, g, dpost, dcomb, dx_next, *attrs,
                                        op=op, du_name="g")
    else:
        lead, n, C, M = hc_joint_backward(x, y, fn, scale, base, mix, g, dx_next, *attrs, op=op,
                                          du_name="g")
    norm(op, x, weight, norm_eps)
    if post_lower is not None:
        _post_lower(op, x, post_lower, lead, n)
    return lead, n, C, M
