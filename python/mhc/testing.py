"""Execution tests of the CPU path: build MLIR programs on seeded random data, run them through
``mhc-opt --mhc-cpu-pipeline | mlir-runner`` and compare what they print with :mod:`mhc.reference`.

A test builds a :class:`Program`, adds constants and mhc ops to it (custom or generic assembly,
static, dynamic or empty leading dims), marks values for output, then calls :meth:`Program.run`
and checks each output with :func:`check_f32` or :func:`check_rounded` inside a :class:`Checker`.

Outputs are printed bit-exactly: every result is widened to f32 (``arith.extf`` for bf16/f16, which
is exact), bit-cast to i32 and printed with ``printMemrefI32``; ``printMemrefF32`` would keep only
six significant digits, too few for the f32 bar.

Tolerances (``Checker`` reports the measured error of every case):

* f32 results: normwise relative error ``max|got - ref| / max|ref| <= 1e-5`` against a float64
  reference evaluated on the same (exactly representable) inputs.
* bf16/f16 results: per element ``|got - round_to(ref, T)| <= ulp_T(ref) + 1e-5 * max|ref|``, i.e.
  equal to the correctly rounded reference up to one unit in the last place (an f32 result that
  lies within f32 error of a rounding boundary may round the other way), plus the f32 bar.

Setting ``MHC_CHECK_PERTURB=<r>`` multiplies the largest-magnitude element of every output by
``1 + r`` before checking; the self-test uses it to prove that the checks can fail.

Gradients: the builder emits the ``*_grad`` ops too (results hold ``reference.*_backward``).
:func:`check_vjp` checks a gradient twice on the data the program ran on: the float64 reference
backward against central differences of the reference forward (:func:`fd_gradient`,
:func:`check_fd`: ``|ref - fd| <= 1e-6 max|fd| + 1e-9`` at sampled elements), then the printed
result against the reference. :func:`check_controls` and :meth:`Checker.control` record checks on
deliberately spoiled data that must fail.
"""

import os
import re
import subprocess
import sys

import numpy as np

from mhc import reference as ref

__all__ = ["Program", "Value", "Checker", "check_f32", "check_rounded", "round_to_dtype",
           "Tools", "F32_RTOL", "LEADING", "per_token", "fd_gradient", "vjp_loss", "check_fd",
           "spoil", "FD_RTOL", "FD_ATOL", "check_vjp", "check_controls", "tanh_functions",
           "sublayer_text", "chain_text", "signature_results", "declare_module", "call_backward",
           "tensor_type", "relative_error"]

F32_RTOL = 1e-5


def relative_error(out, ref, zero_ref_norm=1.0):
    """Normwise relative error ``||out - ref|| / ||ref||`` in float64, ``inf`` where out has a
    non-finite element so that a NaN never passes a ``<= tolerance`` test. Against an all-zero
    reference the denominator is ``zero_ref_norm``: 1.0 (the GPU checks' rule) gives the absolute
    error; a tiny value fails anything but an exact zero. Numpy arrays, or torch tensors on any
    device, computed where they are (a GPU-sized output stays on the GPU); a torch tensor against
    a numpy array is brought to the host."""
    if _is_torch(out) and _is_torch(ref):
        out, ref = out.detach().double(), ref.detach().double()
        finite = bool(out.isfinite().all())
        err, den = float((out - ref).norm()), float(ref.norm())
    else:
        out, ref = _host_float64(out), _host_float64(ref)
        finite = bool(np.all(np.isfinite(out)))
        err, den = float(np.linalg.norm(out - ref)), float(np.linalg.norm(ref))
    if not finite:
        return float("inf")
    return err / (den if den > 0 else zero_ref_norm)


def _host_float64(value):
    return value.detach().double().cpu().numpy() if _is_torch(value) else np.asarray(value, np.float64)


def _is_torch(value):
    # duck-typed so that this module does not import torch (the CPU path's tests run without it)
    return hasattr(value, "detach") and hasattr(value, "double")


def round_to_dtype(array, elem):
    """Values representable in ``elem`` ('f32', 'bf16', 'f16'), as float32."""
    return ref.round_to(np.asarray(array, np.float64), elem).astype(np.float32)


def _format_float(v):
    # repr of the double is exact and round-trips; every value is representable in its element type.
    r = repr(float(v))
    if r in ("inf", "-inf", "nan"):
        raise ValueError("non-finite test data")
    if "e" not in r and "." not in r:
        r += ".0"
    return r


def _dense_literal(array):
    if array.ndim == 0:
        return _format_float(array)
    return "[" + ", ".join(_dense_literal(a) for a in array) + "]"


class Value:
    """An SSA value of the program: its name, MLIR type pieces and the data it holds."""

    def __init__(self, name, shape, elem, data):
        self.name = name
        self.shape = list(shape)   # ints, or None for a dynamic dim
        self.elem = elem           # 'f32', 'bf16', 'f16', 'i32'
        self.data = data           # the numpy value it holds at run time (float32 or float64)

    @property
    def type(self):
        return tensor_type(self.shape, self.elem)


def tensor_type(shape, elem):
    dims = "".join(("?" if d is None else str(d)) + "x" for d in shape)
    return f"tensor<{dims}{elem}>"


def _attr_f32(value):
    return f"{float(value):.9e} : f32"


class Program:
    """An MLIR module with one ``@main`` that computes and prints values.

    Every helper returns :class:`Value` objects whose ``data`` is what the reference says the
    value holds; outputs are read back by :meth:`run` in the order :meth:`output` was called.
    """

    def __init__(self):
        self._module_lines = []   # module-level declarations (globals, helper functions)
        self._lines = []
        self._counter = 0
        self._outputs = []

    def _fresh(self, hint="v"):
        self._counter += 1
        return f"%{hint}{self._counter}"

    def emit(self, line):
        """Appends a line to @main's body."""
        self._lines.append("    " + line)

    def declare(self, line):
        """Appends a module-level line (e.g. an ml_program.global) before @main."""
        self._module_lines.append("  " + line)

    # -- data ---------------------------------------------------------------------------------

    def constant(self, data, elem):
        """``arith.constant dense<...>``; ``data`` must be representable in ``elem``."""
        data = np.asarray(data, np.float32)
        assert np.array_equal(round_to_dtype(data, elem), data), "constant not representable"
        name = self._fresh("cst")
        v = Value(name, data.shape, elem, data)
        if data.size == 0:   # no elements to write: an empty tensor is the same value
            self.emit(f"{name} = tensor.empty() : {v.type}")
        else:
            self.emit(f"{name} = arith.constant dense<{_dense_literal(data)}> : {v.type}")
        return v

    def random(self, rng, shape, elem, scale=1.0, offset=0.0):
        """A constant of seeded normal data (never zero-filled), rounded to ``elem``."""
        data = rng.standard_normal(shape) * scale + offset
        return self.constant(round_to_dtype(data, elem), elem)

    def dynamic(self, v, dims):
        """``tensor.cast`` of ``v`` with the listed dims made dynamic (``?``)."""
        shape = [None if i in dims else d for i, d in enumerate(v.shape)]
        out = Value(self._fresh("dyn"), shape, v.elem, v.data)
        self.emit(f"{out.name} = tensor.cast {v.name} : {v.type} to {out.type}")
        return out

    def dynamic_leading(self, v, lead):
        """Makes the first ``lead`` dims dynamic."""
        return self.dynamic(v, list(range(lead)))

    # -- mhc ops ------------------------------------------------------------------------------

    def _op(self, name, operands, attrs, result_shapes, result_elems, generic, datas):
        """Creates the result Values of op ``name`` (holding the reference ``datas``) and, for
        the generic form, emits the op with every attribute spelled out. The custom forms differ
        per op, so the caller emits those with :meth:`_custom`."""
        # A bf16/f16 result holds the rounded value: later ops see what memory holds.
        results = [Value(self._fresh(name.split(".")[-1][:6]), s, e,
                         d if e == "f32" else round_to_dtype(d, e).astype(np.float64))
                   for s, e, d in zip(result_shapes, result_elems, datas)]
        lhs = ", ".join(r.name for r in results)
        if generic:
            props = ", ".join(f"{k} = {v}" for k, v in sorted(attrs.items()))
            props = f" <{{{props}}}>" if props else ""
            ins = ", ".join(o.name for o in operands)
            in_types = ", ".join(o.type for o in operands)
            out_types = ", ".join(r.type for r in results)
            if len(results) > 1:
                out_types = f"({out_types})"
            self.emit(f'{lhs} = "{name}"({ins}){props} : ({in_types}) -> {out_types}')
        return results

    def _custom(self, results, text):
        lhs = ", ".join(r.name for r in results)
        self.emit(f"{lhs} = {text}")
        return results

    def expand(self, h, n, generic=False):
        shape = h.shape[:-1] + [n, h.shape[-1]]
        data = ref.expand(h.data, n, dtype=np.float64)
        attrs = {"streams": f"{n} : i64"}
        rs = self._op("mhc.expand", [h], attrs, [shape], [h.elem], generic, [data])
        if not generic:
            self._custom(rs, f"mhc.expand {h.name}, streams = {n} : {h.type} -> {rs[0].type}")
        return rs[0]

    def collapse(self, x, generic=False):
        shape = x.shape[:-2] + [x.shape[-1]]
        data = ref.collapse(x.data, dtype=np.float64)
        rs = self._op("mhc.collapse", [x], {}, [shape], [x.elem], generic, [data])
        if not generic:
            self._custom(rs, f"mhc.collapse {x.name} : {x.type} -> {rs[0].type}")
        return rs[0]

    def _eps_op(self, name, operands, shape, elem, reference, eps, generic):
        """A forward op of one result whose one attribute is eps (default 1e-6); ``reference``
        gives its data from the operands' data and eps."""
        e = 1e-6 if eps is None else eps
        data = reference(*(o.data for o in operands), _f32(e), dtype=np.float64)
        rs = self._op(name, operands, {"eps": _attr_f32(e)}, [shape], [elem], generic, [data])
        if not generic:
            a = "" if eps is None else f" {{eps = {_attr_f32(eps)}}}"
            self._custom(rs, f"{name} {', '.join(o.name for o in operands)}{a} : "
                             f"{', '.join(o.type for o in operands)} -> {rs[0].type}")
        return rs[0]

    def norm_project(self, x, fn, eps=None, generic=False):
        return self._eps_op("mhc.norm_project", [x, fn], x.shape[:-2] + [fn.shape[0]], "f32",
                            ref.norm_project, eps, generic)

    def split_mixes(self, mix, scale, base, post_mult=None, pre_eps=None, generic=False):
        m = mix.shape[-1]
        n = int(round(np.sqrt(m + 1) - 1))
        lead = mix.shape[:-1]
        pm = 2.0 if post_mult is None else post_mult
        pe = 1e-6 if pre_eps is None else pre_eps
        datas = ref.split_mixes(mix.data, scale.data, base.data, _f32(pm), _f32(pe),
                                dtype=np.float64)
        attrs = {"post_mult": _attr_f32(pm), "pre_eps": _attr_f32(pe)}
        rs = self._op("mhc.split_mixes", [mix, scale, base], attrs,
                      [lead + [n], lead + [n], lead + [n, n]], ["f32"] * 3, generic, datas)
        if not generic:
            opt = {}
            if post_mult is not None:
                opt["post_mult"] = _attr_f32(post_mult)
            if pre_eps is not None:
                opt["pre_eps"] = _attr_f32(pre_eps)
            a = (" {" + ", ".join(f"{k} = {v}" for k, v in opt.items()) + "}") if opt else ""
            self._custom(rs, f"mhc.split_mixes {mix.name}, {scale.name}, {base.name}{a} : "
                             f"{mix.type}, {scale.type}, {base.type} -> "
                             f"{rs[0].type}, {rs[1].type}, {rs[2].type}")
        return rs

    def sinkhorn(self, logits, iterations=None, eps=None, generic=False):
        it = 20 if iterations is None else iterations
        e = 1e-6 if eps is None else eps
        data = ref.sinkhorn(logits.data, it, _f32(e), dtype=np.float64)
        attrs = {"iterations": f"{it} : i64", "eps": _attr_f32(e)}
        rs = self._op("mhc.sinkhorn", [logits], attrs, [logits.shape], ["f32"], generic, [data])
        if not generic:
            opt = {}
            if iterations is not None:
                opt["iterations"] = f"{iterations} : i64"
            if eps is not None:
                opt["eps"] = _attr_f32(eps)
            a = (" {" + ", ".join(f"{k} = {v}" for k, v in opt.items()) + "}") if opt else ""
            self._custom(rs, f"mhc.sinkhorn {logits.name}{a} : {logits.type}")
        return rs[0]

    def pre_apply(self, x, pre, generic=False):
        shape = x.shape[:-2] + [x.shape[-1]]
        data = ref.pre_apply(x.data, pre.data, dtype=np.float64)
        rs = self._op("mhc.pre_apply", [x, pre], {}, [shape], [x.elem], generic, [data])
        if not generic:
            self._custom(rs, f"mhc.pre_apply {x.name}, {pre.name} : {x.type}, {pre.type} "
                             f"-> {rs[0].type}")
        return rs[0]

    def post_res(self, y, x, post, comb, generic=False):
        data = ref.post_res(y.data, x.data, post.data, comb.data, dtype=np.float64)
        rs = self._op("mhc.post_res", [y, x, post, comb], {}, [x.shape], [x.elem], generic,
                      [data])
        if not generic:
            self._custom(rs, f"mhc.post_res {y.name}, {x.name}, {post.name}, {comb.name} : "
                             f"{y.type}, {x.type}, {post.type}, {comb.type} -> {rs[0].type}")
        return rs[0]

    def rms_norm(self, u, weight, eps=None, generic=False):
        return self._eps_op("mhc.rms_norm", [u, weight], u.shape, u.elem, ref.rms_norm, eps,
                            generic)

    # -- gradient ops (spec section 9b): results take their operands' types ------------------

    @staticmethod
    def _attr_suffix(opt):
        return (" {" + ", ".join(f"{k} = {v}" for k, v in opt.items()) + "}") if opt else ""

    def _grad(self, name, operands, attrs, custom_attrs, primals, datas, generic):
        """Emits gradient op ``name``; result k has the type of operand ``primals[k]``."""
        rs = self._op(name, operands, attrs, [v.shape for v in primals],
                      [v.elem for v in primals], generic, datas)
        if not generic:
            names = ", ".join(o.name for o in operands)
            # sinkhorn_grad's operands all have one type, written once.
            types = ", ".join(o.type for o in operands[:1 if name == "mhc.sinkhorn_grad" else None])
            self._custom(rs, f"{name} {names}{self._attr_suffix(custom_attrs)} : {types}")
        return rs

    def _eps_grad(self, name, operands, primals, reference, eps, generic):
        """A gradient op whose one attribute is eps (default 1e-6); ``reference`` gives its
        results' data from the operands' data and eps."""
        e = 1e-6 if eps is None else eps
        datas = reference(*(o.data for o in operands), _f32(e), dtype=np.float64)
        opt = {} if eps is None else {"eps": _attr_f32(eps)}
        return self._grad(name, operands, {"eps": _attr_f32(e)}, opt, primals, datas, generic)

    def norm_project_grad(self, x, fn, dmix, eps=None, generic=False):
        """(dx, dfn); reference data from ``reference.norm_project_backward``."""
        return self._eps_grad("mhc.norm_project_grad", [x, fn, dmix], [x, fn],
                              ref.norm_project_backward, eps, generic)

    def split_mixes_grad(self, mix, scale, base, dpre, dpost, dlogits, post_mult=None,
                         pre_eps=None, generic=False):
        """(dmix, dscale, dbase)."""
        pm = 2.0 if post_mult is None else post_mult
        pe = 1e-6 if pre_eps is None else pre_eps
        datas = ref.split_mixes_backward(mix.data, scale.data, base.data, dpre.data, dpost.data,
                                         dlogits.data, _f32(pm), _f32(pe), dtype=np.float64)
        opt = {}
        if post_mult is not None:
            opt["post_mult"] = _attr_f32(post_mult)
        if pre_eps is not None:
            opt["pre_eps"] = _attr_f32(pre_eps)
        return self._grad("mhc.split_mixes_grad", [mix, scale, base, dpre, dpost, dlogits],
                          {"post_mult": _attr_f32(pm), "pre_eps": _attr_f32(pe)}, opt,
                          [mix, scale, base], datas, generic)

    def sinkhorn_grad(self, logits, dcomb, iterations=None, eps=None, generic=False):
        """dlogits (a single Value)."""
        it = 20 if iterations is None else iterations
        e = 1e-6 if eps is None else eps
        data = ref.sinkhorn_backward(logits.data, dcomb.data, it, _f32(e), dtype=np.float64)
        opt = {}
        if iterations is not None:
            opt["iterations"] = f"{iterations} : i64"
        if eps is not None:
            opt["eps"] = _attr_f32(eps)
        rs = self._grad("mhc.sinkhorn_grad", [logits, dcomb],
                        {"iterations": f"{it} : i64", "eps": _attr_f32(e)}, opt, [logits],
                        [data], generic)
        return rs[0]

    def pre_apply_grad(self, x, pre, du, generic=False):
        """(dx, dpre)."""
        datas = ref.pre_apply_backward(x.data, pre.data, du.data, dtype=np.float64)
        return self._grad("mhc.pre_apply_grad", [x, pre, du], {}, {}, [x, pre], datas, generic)

    def post_res_grad(self, y, x, post, comb, dout, generic=False):
        """(dy, dx, dpost, dcomb)."""
        datas = ref.post_res_backward(y.data, x.data, post.data, comb.data, dout.data,
                                      dtype=np.float64)
        return self._grad("mhc.post_res_grad", [y, x, post, comb, dout], {}, {},
                          [y, x, post, comb], datas, generic)

    def rms_norm_grad(self, u, weight, dout, eps=None, generic=False):
        """(du, dweight); reference data from ``reference.rms_norm_backward``."""
        return self._eps_grad("mhc.rms_norm_grad", [u, weight, dout], [u, weight],
                              ref.rms_norm_backward, eps, generic)

    def tanh(self, u):
        """A stand-in sublayer F: tanh computed in f32, stored like u (one rounding)."""
        data = np.tanh(np.asarray(u.data, np.float64))
        t = u.type
        wide = u.name
        if u.elem != "f32":
            wide = self._fresh("w")
            self.emit(f"{wide} = arith.extf {u.name} : {t} to {tensor_type(u.shape, 'f32')}")
        th = self._fresh("tanh")
        self.emit(f"{th} = math.tanh {wide} : {tensor_type(u.shape, 'f32')}")
        out = Value(th, u.shape, u.elem,
                    data if u.elem == "f32" else round_to_dtype(data, u.elem).astype(np.float64))
        if u.elem != "f32":
            out.name = self._fresh("y")
            self.emit(f"{out.name} = arith.truncf {th} : {tensor_type(u.shape, 'f32')} to {t}")
        return out

    def add(self, a, b):
        """``arith.addf`` of two tensors of one type (as the generated backward sums the
        cotangents of x); a bf16/f16 sum is rounded once."""
        assert a.type == b.type
        out = Value(self._fresh("sum"), a.shape, a.elem, None)
        data = np.asarray(a.data, np.float64) + np.asarray(b.data, np.float64)
        out.data = data if a.elem == "f32" else round_to_dtype(data, a.elem).astype(np.float64)
        self.emit(f"{out.name} = arith.addf {a.name}, {b.name} : {a.type}")
        return out

    def tanh_vjp(self, u, dy):
        """The VJP of :meth:`tanh`: ``dy - dy * tanh(u)^2`` in f32, stored like u."""
        w = tensor_type(u.shape, "f32")
        wide = []
        for v in (u, dy):
            if v.elem == "f32":
                wide.append(v.name)
            else:
                wide.append(self._fresh("w"))
                self.emit(f"{wide[-1]} = arith.extf {v.name} : {v.type} to {w}")
        t, dt, dtt, r = (self._fresh(h) for h in ("t", "dt", "dtt", "vjp"))
        self.emit(f"{t} = math.tanh {wide[0]} : {w}")
        self.emit(f"{dt} = arith.mulf {wide[1]}, {t} : {w}")
        self.emit(f"{dtt} = arith.mulf {dt}, {t} : {w}")
        self.emit(f"{r} = arith.subf {wide[1]}, {dtt} : {w}")
        tu = np.tanh(np.asarray(u.data, np.float64))
        data = np.asarray(dy.data, np.float64) * (1.0 - tu * tu)
        out = Value(r, u.shape, u.elem, data)
        if u.elem != "f32":
            out.name = self._fresh("du")
            out.data = round_to_dtype(data, u.elem).astype(np.float64)
            self.emit(f"{out.name} = arith.truncf {r} : {w} to {u.type}")
        return out

    # -- output -------------------------------------------------------------------------------

    def output(self, v):
        """Prints ``v`` bit-exactly (widened to f32, bit-cast to i32, printMemrefI32)."""
        wide = v.name
        f32_type = tensor_type(v.shape, "f32")
        if v.elem != "f32":
            wide = self._fresh("wide")
            self.emit(f"{wide} = arith.extf {v.name} : {v.type} to {f32_type}")
        bits = self._fresh("bits")
        i32_type = tensor_type(v.shape, "i32")
        self.emit(f"{bits} = arith.bitcast {wide} : {f32_type} to {i32_type}")
        buf = self._fresh("buf")
        memref = i32_type.replace("tensor<", "memref<")
        self.emit(f"{buf} = bufferization.to_buffer {bits} : {i32_type} to {memref}")
        unranked = self._fresh("unranked")
        self.emit(f"{unranked} = memref.cast {buf} : {memref} to memref<*xi32>")
        # printMemref reads elements even when a dim is 0: print only the shape of empty results
        # (the call still keeps their computation alive).
        printer = "printMemrefShapeI32" if np.size(v.data) == 0 else "printMemrefI32"
        self.emit(f"call @{printer}({unranked}) : (memref<*xi32>) -> ()")
        self._outputs.append(v)

    def text(self):
        body = "\n".join(self._lines)
        decls = "".join(line + "\n" for line in self._module_lines)
        return ("// Generated by mhc.testing.\n"
                "module {\n"
                f"{decls}"
                "  func.func private @printMemrefI32(memref<*xi32>)\n"
                "  func.func private @printMemrefShapeI32(memref<*xi32>) "
                "attributes {llvm.emit_c_interface}\n"
                "  func.func @main() {\n"
                f"{body}\n"
                "    return\n"
                "  }\n"
                "}\n")

    def run(self, tools):
        """Lowers and runs the program; returns the printed arrays (float32) in output order."""
        text = self.text()
        printed = tools.run(text)
        arrays = _parse_memrefs(printed)
        if len(arrays) != len(self._outputs):
            raise RuntimeError(f"program printed {len(arrays)} arrays, expected "
                               f"{len(self._outputs)}:\n{printed[:2000]}")
        results = []
        for a, v in zip(arrays, self._outputs):
            expected = tuple(np.shape(v.data))
            if a.shape != expected:
                raise RuntimeError(f"{v.name}: printed shape {a.shape}, expected {expected}")
            results.append(a)
        return results


def _f32(x):
    """The f32 value an f32 attribute holds (the reference must use the same eps)."""
    return float(np.float32(x))


def _parse_memrefs(text):
    """Arrays printed by printMemrefI32, reinterpreted as float32."""
    arrays = []
    for chunk in text.split("Unranked Memref")[1:]:
        head, _, data = chunk.partition("data =")
        sizes_text = head.split("sizes = [")[1].split("]")[0]
        sizes = [int(s) for s in sizes_text.split(",") if s.strip()]
        if int(np.prod(sizes)) == 0:   # printed by printMemrefShapeI32: no data
            arrays.append(np.zeros(sizes, np.float32))
            continue
        numbers = [int(t) for t in data.replace("[", " ").replace("]", " ").replace(",", " ")
                   .split()]
        ints = np.array(numbers, dtype=np.int64).astype(np.uint32)
        if ints.size != int(np.prod(sizes)):
            raise RuntimeError(f"printed {ints.size} numbers for sizes {sizes}")
        arrays.append(ints.view(np.float32).reshape(sizes))
    return arrays


class Tools:
    """How to reach mhc-opt and mlir-runner: ``Tools.from_argv()`` reads the lit RUN line's
    ``mhc-opt mlir-runner runner_utils c_runner_utils`` arguments."""

    def __init__(self, mhc_opt, runner, runner_utils, c_runner_utils, opt_flags=None,
                 runner_flags=None):
        self.mhc_opt = mhc_opt
        self.runner = runner
        self.libs = f"{runner_utils},{c_runner_utils}"
        self.opt_flags = opt_flags or ["--mhc-cpu-pipeline"]
        self.runner_flags = runner_flags or []

    @classmethod
    def from_argv(cls, argv=None, **kwargs):
        argv = sys.argv[1:] if argv is None else argv
        if len(argv) < 4:
            raise SystemExit("usage: test.py MHC_OPT MLIR_RUNNER RUNNER_UTILS C_RUNNER_UTILS")
        return cls(*argv[:4], **kwargs)

    def run(self, program_text):
        lowered = subprocess.run([self.mhc_opt, "-", *self.opt_flags], input=program_text,
                                 capture_output=True, text=True)
        if lowered.returncode != 0:
            raise RuntimeError(f"mhc-opt failed:\n{lowered.stderr}\n--- program ---\n"
                               f"{program_text[:4000]}")
        ran = subprocess.run([self.runner, "-e", "main", "--entry-point-result=void",
                              *self.runner_flags, f"--shared-libs={self.libs}"],
                             input=lowered.stdout,
                             capture_output=True, text=True)
        if ran.returncode != 0:
            raise RuntimeError(f"mlir-runner failed ({ran.returncode}):\n{ran.stderr[-4000:]}")
        return ran.stdout


def _perturb(got):
    r = os.environ.get("MHC_CHECK_PERTURB")
    if not r or got.size == 0:
        return got
    got = got.astype(np.float64)
    k = int(np.argmax(np.abs(got)))
    got.flat[k] *= 1.0 + float(r)
    return got


def _ulp(values, elem):
    """Spacing of ``elem`` at |values| (bf16: 8 significant bits, f16: 11)."""
    mant = {"bf16": 8, "f16": 11, "f32": 24}[elem]
    min_exp = {"bf16": -126, "f16": -14, "f32": -126}[elem]
    a = np.abs(np.asarray(values, np.float64))
    e = np.floor(np.log2(np.where(a > 0, a, 2.0 ** min_exp)))
    e = np.maximum(e, min_exp)
    return 2.0 ** (e - (mant - 1))


def _early_verdict(got):
    """(ok, message) when ``got`` can be judged without a tolerance (empty or non-finite),
    else None."""
    if got.size == 0:
        return True, "empty, shapes match"
    if not np.all(np.isfinite(got)):
        return False, "non-finite values"
    return None


def check_f32(got, expected, rtol=F32_RTOL):
    """(ok, message): normwise relative error of an f32 result against a float64 reference."""
    got = _perturb(np.asarray(got, np.float64))
    expected = np.asarray(expected, np.float64)
    verdict = _early_verdict(got)
    if verdict is not None:
        return verdict
    scale = np.max(np.abs(expected))
    err = np.max(np.abs(got - expected)) / (scale if scale > 0 else 1.0)
    return err <= rtol, f"normwise rel err {err:.2e} (tol {rtol:.0e})"


def check_rounded(got, expected, elem, rtol=F32_RTOL):
    """(ok, message): a bf16/f16 result against the correctly rounded float64 reference, within
    one ulp of the element type plus ``rtol * max|ref|`` (see the module docstring)."""
    if elem == "f32":
        return check_f32(got, expected, rtol)
    got = _perturb(np.asarray(got, np.float64))
    expected = np.asarray(expected, np.float64)
    verdict = _early_verdict(got)
    if verdict is not None:
        return verdict
    rounded = round_to_dtype(expected, elem).astype(np.float64)
    diff = np.abs(got - rounded)
    ulps = diff / _ulp(expected, elem)
    tol = _ulp(expected, elem) + rtol * np.max(np.abs(expected))
    ok = bool(np.all(diff <= tol))
    exact = float(np.mean(diff == 0))
    return ok, (f"max {np.max(ulps):.2f} {elem} ulp, {100 * exact:.1f}% exactly rounded "
                f"(tol 1 ulp + {rtol:.0e}*max|ref|)")


def fd_gradient(loss, args, k, rng, points=24, h=1e-6):
    """Central differences in float64 of the scalar ``loss(*args)`` with respect to up to
    ``points`` sampled elements of ``args[k]``: (flat indices, derivatives)."""
    a = np.asarray(args[k], np.float64)
    idx = np.arange(a.size)
    if a.size > points:
        idx = rng.choice(a.size, points, replace=False)
    out = np.empty(len(idx))
    for t, f in enumerate(idx):
        plus = [np.array(x, np.float64) for x in args]
        minus = [np.array(x, np.float64) for x in args]
        plus[k].flat[f] += h
        minus[k].flat[f] -= h
        out[t] = (loss(*plus) - loss(*minus)) / (2 * h)
    return idx, out


def vjp_loss(forward, cotangents):
    """``L(*args) = sum_k <cotangents[k], forward(*args)[k]>``: its gradient is the VJP."""
    def loss(*args):
        outs = forward(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum(float(np.sum(np.asarray(o, np.float64) * np.asarray(c, np.float64)))
                   for o, c in zip(outs, cotangents))
    return loss


FD_RTOL = 1e-6
FD_ATOL = 1e-9


def check_fd(analytic, idx, fd, rtol=FD_RTOL, atol=FD_ATOL):
    """(ok, message): an analytic gradient (float64) against central differences at the
    sampled flat indices, ``max|analytic - fd| <= rtol * max|fd| + atol``."""
    got = np.asarray(analytic, np.float64).reshape(-1)[idx]
    if got.size == 0:
        return True, "empty, nothing to sample"
    err = float(np.max(np.abs(got - fd)))
    scale = float(np.max(np.abs(fd)))
    tol = rtol * scale + atol
    return err <= tol, (f"reference vs central differences: max err {err:.1e} at max|fd| "
                        f"{scale:.1e} (tol {rtol:.0e}*max|fd| + {atol:.0e}), {got.size} points")


def spoil(array, factor):
    """A copy of ``array`` with its largest-magnitude element multiplied by ``1 + factor`` (for
    the controls that show a check can fail)."""
    bad = np.array(array, np.float64)
    k = int(np.argmax(np.abs(bad)))
    bad.flat[k] *= 1.0 + factor
    return bad


def check_vjp(check, name, forward, inputs, cotangents, results, rng, points=24):
    """Checks the printed results of one gradient op on the data it ran on.

    ``forward(*inputs)`` is the float64 reference forward op (one array or a tuple), ``inputs``
    and ``cotangents`` are the numpy data the program held, and ``results`` lists, per input
    that has a gradient, ``(label, index of the input, reference gradient, printed array,
    element type)``. For each: the reference gradient against central differences of the
    forward (it is itself checked, on the same data), then the printed array against the
    reference gradient (``check_f32`` / ``check_rounded``).
    """
    loss = vjp_loss(forward, cotangents)
    for label, k, expected, got, elem in results:
        idx, fd = fd_gradient(loss, inputs, k, rng, points=points)
        check.record(f"{name} {label}: reference", *check_fd(expected, idx, fd))
        if elem == "f32":
            check.record(f"{name} {label}", *check_f32(got, expected))
        else:
            check.record(f"{name} {label}", *check_rounded(got, expected, elem))


def check_controls(check, name, got, expected, elem, fd_inputs):
    """Controls showing that each kind of check can fail on this test's own data: the printed
    ``got`` spoiled by 3x the f32 bar (f32) or by 2^-6, two ulps or more (bf16/f16), and the
    reference gradient spoiled by 1e-4 against central differences. ``fd_inputs`` is
    ``(forward, inputs, cotangents, k, expected)`` for the last one."""
    if elem == "f32":
        check.control(f"{name} spoiled by 3e-5", check_f32(spoil(got, 3e-5), expected))
    else:
        check.control(f"{name} spoiled by 2^-6",
                      check_rounded(spoil(got, 2.0 ** -6), expected, elem))
    forward, inputs, cotangents, k, reference = fd_inputs
    idx, fd = fd_gradient(vjp_loss(forward, cotangents), inputs, k,
                          np.random.default_rng(0), points=16)
    bad = np.array(reference, np.float64)
    bad.flat[idx[int(np.argmax(np.abs(fd)))]] += 1e-4 * np.max(np.abs(fd))   # a sampled element
    check.control(f"{name} reference off by 1e-4 of max|fd|", check_fd(bad, idx, fd))


class Checker:
    """Collects per-case results, prints one line each, and exits non-zero if any failed."""

    def __init__(self):
        self.failures = 0
        self.cases = 0

    def check(self, case, got, value, elem=None):
        """Checks one printed array against the reference data of the Value it came from."""
        elem = elem or value.elem
        if elem == "f32":
            ok, msg = check_f32(got, value.data)
        else:
            ok, msg = check_rounded(got, value.data, elem)
        self.record(case, ok, msg)

    def control(self, case, ok_msg):
        """A control: ``ok_msg`` is the verdict of a check on deliberately wrong data, which must
        be a failure (it shows that the check can fail)."""
        ok, msg = ok_msg
        self.record(f"control, must be rejected: {case}", not ok, f"rejected ({msg})" if not ok
                    else f"NOT rejected ({msg})")

    def record(self, case, ok, msg):
        self.cases += 1
        if not ok:
            self.failures += 1
        print(f"{'PASS' if ok else 'FAIL'}: {case}: {msg}")

    def finish(self):
        print(f"{self.cases - self.failures} of {self.cases} checks passed")
        sys.exit(1 if self.failures else 0)


# Leading (token) dims every op is tested with: (label, shape, dynamic?). Dynamic cases pass a
# tensor.cast to `?` in front of the op; the T = 0 cases must run and print empty results.
LEADING = [
    ("no token dims", (), False),
    ("T=5", (5,), False),
    ("2x3", (2, 3), False),
    ("?=7", (7,), True),
    ("?x?=3x2", (3, 2), True),
    ("T=0", (0,), False),
    ("?=0", (0,), True),
]


# -- programs around --mhc-generate-backward (CPU integration test, GPU harness) -------------

def tanh_functions(name, shape, elem, vjp_attr=None):
    """MLIR text of ``@name`` = tanh in f32, stored like u, and its VJP dy - dy tanh(u)^2 (named
    ``@<name>_vjp``, or ``vjp_attr`` given through the callee's mhc.vjp attribute): an opaque
    sublayer F for --mhc-generate-backward."""
    t, w = tensor_type(shape, elem), tensor_type(shape, "f32")
    vjp = vjp_attr or f"{name}_vjp"

    def widen(v):       # an f32 operand is used as it is
        return "" if elem == "f32" else f"    {v}w = arith.extf {v} : {t} to {w}\n"

    def wide(v):
        return v if elem == "f32" else f"{v}w"

    def store(v):       # returns the stored value, rounded once
        if elem == "f32":
            return f"    return {v} : {t}\n  }}\n"
        return f"    %r = arith.truncf {v} : {w} to {t}\n    return %r : {t}\n  }}\n"

    attrs = f" attributes {{mhc.vjp = @{vjp}}}" if vjp_attr else ""
    return (f"  func.func private @{name}(%u: {t}) -> {t}{attrs} {{\n" + widen("%u")
            + f"    %t = math.tanh {wide('%u')} : {w}\n" + store("%t")
            + f"  func.func private @{vjp}(%u: {t}, %dy: {t}) -> {t} {{\n" + widen("%u")
            + widen("%dy") + f"    %t = math.tanh {wide('%u')} : {w}\n"
            f"    %dt = arith.mulf {wide('%dy')}, %t : {w}\n"
            f"    %dtt = arith.mulf %dt, %t : {w}\n"
            f"    %p = arith.subf {wide('%dy')}, %dtt : {w}\n" + store("%p"))


def sublayer_text(k, x, fn, scale, base, y, n, c, lead, elem, call=None):
    """One sublayer (norm_project ... post_res) in MLIR, its values suffixed with k; y is an SSA
    name, or None to compute y = call(u). lead: the token dims (None: dynamic)."""
    m = n * n + 2 * n
    xt, mt = tensor_type(lead + [n, c], elem), tensor_type(lead + [m], "f32")
    pt, lt = tensor_type(lead + [n], "f32"), tensor_type(lead + [n, n], "f32")
    ut, ft = tensor_type(lead + [c], elem), tensor_type([m, n * c], "f32")
    text = (f"    %mix{k} = mhc.norm_project {x}, {fn} : {xt}, {ft} -> {mt}\n"
            f"    %pre{k}, %post{k}, %l{k} = mhc.split_mixes %mix{k}, {scale}, {base} : {mt}, "
            f"tensor<3xf32>, tensor<{m}xf32> -> {pt}, {pt}, {lt}\n"
            f"    %c{k} = mhc.sinkhorn %l{k} : {lt}\n"
            f"    %u{k} = mhc.pre_apply {x}, %pre{k} : {xt}, {pt} -> {ut}\n")
    if y is None:
        y = f"%y{k}"
        text += f"    {y} = func.call @{call}(%u{k}) : ({ut}) -> {ut}\n"
    text += (f"    %x{k + 1} = mhc.post_res {y}, {x}, %post{k}, %c{k} : "
             f"{ut}, {xt}, {pt}, {lt} -> {xt}\n")
    return text


def chain_text(name, n, c, elem, lead, callees):
    """``@name(x0, fn0, s0, b0, fn1, s1, b1) -> x2``: two sublayers chained through the opaque
    calls ``callees`` (see :func:`tanh_functions`)."""
    m = n * n + 2 * n
    xt = tensor_type(lead + [n, c], elem)
    params = ", ".join(f"%fn{k}: tensor<{m}x{n * c}xf32>, %s{k}: tensor<3xf32>, "
                       f"%b{k}: tensor<{m}xf32>" for k in range(2))
    body = "".join(sublayer_text(k, f"%x{k}", f"%fn{k}", f"%s{k}", f"%b{k}", None, n, c, lead,
                                 elem, call=callees[k]) for k in range(2))
    return (f"  func.func @{name}(%x0: {xt}, {params}) -> {xt} {{\n" + body
            + f"    return %x2 : {xt}\n  }}\n")


def _split_types(text):
    """Splits 'tensor<...>, tensor<...> {attr = ...}' at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "<{(["
        depth -= ch in ">})]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def signature_results(text, name):
    """The result types of func @name in printed MLIR."""
    line = re.search(r"func\.func @%s\((.*)" % re.escape(name), text).group(1)
    results = line.split(") -> ", 1)[1].rsplit(" attributes ", 1)[0].rstrip(" {")
    if results.startswith("("):
        results = results[1:-1]
    return [re.sub(r" \{.*?\}$", "", t.strip()) for t in _split_types(results)]


def declare_module(p, generated):
    """Declares the functions of ``generated`` (a printed module, e.g. --mhc-generate-backward's
    output) in program ``p``, so that its @main can call them."""
    body = generated.strip()
    assert body.startswith("module {") and body.endswith("}")
    for line in body[len("module {"):-1].strip("\n").split("\n"):
        p.declare(line[2:] if line.startswith("  ") else line)


def call_backward(p, generated, name, inputs, in_elems, cotangents, elem, per_token, lead,
                  dynamic, num_results):
    """Emits into ``p`` (whose module declares ``generated``): the inputs and cotangents as
    constants (token dims made dynamic if asked), ``@<name>_forward``, then ``@<name>_backward``
    with what the forward saved, and outputs every input's gradient (in input order)."""
    vals = [p.constant(a, e) for a, e in zip(inputs, in_elems)]
    cots = [p.constant(a, elem) for a in cotangents]
    if dynamic:
        vals = [p.dynamic_leading(v, lead) if t else v for v, t in zip(vals, per_token)]
        cots = [p.dynamic_leading(v, lead) for v in cots]
    fwd_types = signature_results(generated, name + "_forward")
    in_types = ", ".join(v.type for v in vals)
    fw = p._fresh("fw")
    p.emit(f"{fw}:{len(fwd_types)} = func.call @{name}_forward("
           f"{', '.join(v.name for v in vals)}) : ({in_types}) -> ({', '.join(fwd_types)})")
    saved = [f"{fw}#{i}" for i in range(num_results, len(fwd_types))]
    bw = p._fresh("bw")
    args = [v.name for v in vals] + saved + [v.name for v in cots]
    arg_types = [v.type for v in vals] + fwd_types[num_results:] + [v.type for v in cots]
    p.emit(f"{bw}:{len(vals)} = func.call @{name}_backward({', '.join(args)}) : "
           f"({', '.join(arg_types)}) -> ({in_types})")
    for i, v in enumerate(vals):
        p.output(Value(f"{bw}#{i}", v.shape, v.elem, inputs[i]))


def token_op_cases(f16_leads=None):
    """The sweep of the per-token op tests under test/Integration/CPU: (n, elem, C, label, lead,
    dynamic) for n in {1, 2, 4, 8}, f32 / bf16 / f16 and C in {13, 100}; at C = 13 every case of
    LEADING, at C = 100 two (static 2x3, dynamic ?=7). `f16_leads`, a slice, narrows f16's cases
    (the backward checks' central differences cost the most there). Always in this order, so
    that a test's seeded data stay the same."""
    for n in (1, 2, 4, 8):
        for elem in ("f32", "bf16", "f16"):
            for c in (13, 100):
                leads = LEADING if c == 13 else [l for l in LEADING if l[0] in ("2x3", "?=7")]
                if elem == "f16" and f16_leads is not None:
                    leads = leads[f16_leads]
                for label, lead, dyn in leads:
                    yield n, elem, c, label, lead, dyn


def per_token(p, v, lead, dynamic):
    """``v`` as the op sees it: with its ``lead`` leading dims made dynamic if asked."""
    return p.dynamic_leading(v, lead) if dynamic else v
