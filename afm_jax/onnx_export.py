"""The scorer as one ONNX file: raw feature values in, click probability out (`export_onnx`).

The packed scorer (`inference.logits_fn`, params closed over as constants) is traced once to a
jaxpr with a symbolic batch dimension, and each primitive becomes ONNX nodes (`_Converter`).
Params become initializers in their stored dtype, so int8 tables and kernels stay int8 in the
file. Equations whose inputs are all constants (e.g. the triangle indices of a pairwise
interaction) are evaluated here and stored as small initializers, unless that would grow the
file (an int8 kernel's float cast stays a Cast node; a padding stays a Pad node, so tables whose
ranks are merged in the graph, `max_ranks`, are stored as compressed, and ONNX Runtime pads and
packs them once, when it loads the file). Small constants are stored once per value.

Products: a float `x @ W` is a MatMul; other contractions (attention, TT-Rec cores) are Einsum;
an int8 x int8 -> int32 product (`make_scorer(..., compute_dtype="int8")`) is `MatMulInteger`,
exact; bfloat16 products cast their bfloat16-rounded inputs back to float32 before the MatMul,
which equals bfloat16 inputs with float32 accumulation (a product of two bfloat16 values is
exact in float32).

With `encoder` the encoder goes into the graph (`raw_inputs`), one input per field:
  - a categorical field: strings [B]; its vocabulary lookup is an `ai.onnx.ml` LabelEncoder
    (missing, empty or unseen -> id 0);
  - a bucketized numeric field (Criteo's I1..I13): float64 [B], NaN = missing; the bucket
    "b<floor(log(x)^2)>" for x > 2, else floor(x), is computed in the graph and looked up;
  - a dense numeric field: float64 [B], NaN = missing; (log1p(max(x, 0)) - mean) / std, missing
    -> 0, in the graph.
  - a multi-valued or sequence field (`BagSpec`): one string per row, the items joined by the
    field's separator as in the CSV/TSV ("" = an empty bag); the graph splits it (`StringSplit`,
    opset 20), looks each item up in the vocabulary (a sequence: the vocabulary of the field it
    shares), keeps max_len items by the field's truncation (keep_last / keep_first) and pads
    with 0, equal to `Encoder.encode_bags`;
  - a hashed field (`hash_buckets`; standard ONNX cannot hash strings byte-wise): input
    `hashed:<field>`, the id int64 the client computed with `hashing.HASH_RULE` ([B], or for a
    hashed bag the padded ids [B, max_len] beside its lengths `bag_len:<field>` int64 [B]); ids
    outside [0, buckets) become 0. The rule is in the model's metadata (`HASH_NOTE_KEY`) and in
    signature.json.
Without it the graph takes the encoder's ids (`cat` int32 [B, Fc]) and transformed numbers
(`num` float32 [B, Fn]), as the jax.export artifact does, and per bag field its padded ids
(`bag:<field>` int32 [B, max_len]) and lengths (`bag_len:<field>` int32 [B]). The output
`score` is float32 [B].

onnx and onnxruntime come with the `[onnx]` extra (`pip install -e ".[onnx]"`).
jax2onnx was tried and left out: it pins orbax-checkpoint < 0.11.37, which would downgrade the
checkpoint library of every install that takes the extra.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from afm_jax.errors import AfmError

ONNX_OPSET = 18
STRING_OPSET = 20   # StringSplit (bag fields with raw inputs)
ML_OPSET = 3
ONNX_FILE = "model.onnx"
ONNX_SIGNATURE = "signature.json"
ONNX_FORMAT = "afm_jax.onnx/1"
FOLD_EXTRA_BYTES = 1 << 16   # a folded constant may exceed its inputs' bytes by this much
FOLD_CAST_EXTRA_BYTES = 1 << 10   # and a folded widening cast (of an int8 kernel) by this
HASH_NOTE_KEY = "afm_jax.hashed_inputs"   # metadata_props: the hashed inputs and their rule
MAX_RANKS = "auto"   # export_onnx's default (`compress.rank_plan`): the fewest table ranks
#                     whose padding at most doubles the model's bytes once loaded


class ExportError(AfmError):
    """A model, params form or primitive the ONNX export cannot carry; says which and why."""


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the extra is part of [dev]
        raise ExportError("the ONNX export needs the [onnx] extra: pip install -e '.[onnx]'") from e
    return onnx


def _tensor_type(dtype) -> int:
    onnx = _onnx()
    t = onnx.TensorProto
    table = {"float32": t.FLOAT, "float64": t.DOUBLE, "int32": t.INT32, "int64": t.INT64,
             "int8": t.INT8, "uint8": t.UINT8, "bool": t.BOOL, "bfloat16": t.BFLOAT16,
             "float16": t.FLOAT16, "uint32": t.UINT32, "int16": t.INT16}
    name = np.dtype(dtype).name
    if name not in table:
        raise ExportError(f"dtype {name} has no ONNX tensor type here")
    return table[name]


def _is_symbolic(d) -> bool:
    return not isinstance(d, (int, np.integer))


def _same_dim(a, b) -> bool:
    return a is b or (not _is_symbolic(a) and not _is_symbolic(b) and int(a) == int(b)) or \
        (_is_symbolic(a) and _is_symbolic(b) and str(a) == str(b))


class _Graph:
    """ONNX nodes, initializers and fresh names."""

    def __init__(self, batch_source: str | None):
        self.opset = ONNX_OPSET   # raised by nodes that need a newer one
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0
        self._consts: dict[int, tuple[str, np.ndarray]] = {}
        self._small: dict[tuple, str] = {}   # (dtype, shape, bytes) of a small constant -> name
        self._batch_source = batch_source   # a [B, ...] input: its Shape gives B at run time
        self._batch: str | None = None
        self.producer: dict[str, Any] = {}         # output name -> the node that makes it
        self.values: dict[str, np.ndarray] = {}    # initializer name -> its (small) value

    def fresh(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, domain: str | None = None,
             **attrs) -> Any:
        onnx = _onnx()
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        node = onnx.helper.make_node(op, list(inputs), outs, name=outs[0], domain=domain, **attrs)
        self.nodes.append(node)
        self.producer.update((o, node) for o in outs)
        return outs[0] if n_out == 1 else outs

    def made_by(self, name: str, op: str) -> Any:
        """The node of type `op` that makes `name`, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def is_value(self, name: str, value) -> bool:
        """Whether `name` is an initializer every element of which equals `value`."""
        v = self.values.get(name)
        return v is not None and v.size > 0 and bool(np.all(v == value))

    def const(self, value, dtype=None) -> str:
        """An initializer holding `value` (cached per array object, and small ones per value)."""
        onnx = _onnx()
        arr = np.asarray(value, dtype=dtype)
        key = id(value) if dtype is None and isinstance(value, np.ndarray) else None
        if key is not None and key in self._consts:
            return self._consts[key][0]
        small = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if small is not None and small in self._small:
            return self._small[small]
        name = self.fresh("c")
        if arr.dtype.name == "bfloat16":
            tensor = onnx.helper.make_tensor(name, _tensor_type(arr.dtype), arr.shape,
                                             arr.view(np.uint16).tobytes(), raw=True)
        else:
            tensor = onnx.numpy_helper.from_array(arr, name)
        self.initializers.append(tensor)
        if small is not None:
            self.values[name] = arr
            self._small[small] = name
        if key is not None:   # the array is kept, so its id cannot be reused by another
            self._consts[key] = (name, value)
        return name

    def batch(self) -> str:
        """int64 [1]: the batch size at run time."""
        if self._batch is None:
            shape = self.node("Shape", [self._batch_source])
            self._batch = self.node("Slice", [shape, self.const([0], np.int64),
                                              self.const([1], np.int64)])
        return self._batch

    def shape(self, dims: Sequence[Any], keep_symbolic_as_one: bool = False) -> str:
        """int64 [len(dims)]: static dims as they are; the symbolic batch dim as 1 (for Expand,
        which keeps the operand's dim) or as the run-time batch size."""
        if not any(_is_symbolic(d) for d in dims):
            return self.const([int(d) for d in dims], np.int64)
        parts = []
        for d in dims:
            if not _is_symbolic(d):
                parts.append(self.const([int(d)], np.int64))
            elif keep_symbolic_as_one:
                parts.append(self.const([1], np.int64))
            else:
                if str(d) != "B":
                    raise ExportError(f"dimension {d} of a shape is not the batch size")
                parts.append(self.batch())
        return self.node("Concat", parts, axis=0)


_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "erf": "Erf", "floor": "Floor",
          "ceil": "Ceil", "not": "Not", "sin": "Sin", "cos": "Cos"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
           "pow": "Pow", "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
           "ge": "GreaterOrEqual", "and": "And", "or": "Or", "add_any": "Add"}
_IDENTITY = ("stop_gradient", "copy", "copy_p", "optimization_barrier")
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "remat", "checkpoint", "custom_vjp_call_jaxpr")


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is not None:
            return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, ())
    raise ExportError(f"primitive {eqn.primitive.name}: no inner jaxpr to inline")


class _Converter:
    """Walks a jaxpr; env maps each variable to a numpy constant or an ONNX tensor name."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self._slices: dict[str, tuple[str, int, int, int]] = {}   # Slice output -> (x, axis, a, b)
        self._sizes: dict[tuple[str, int], Any] = {}   # (sliced tensor, axis) -> its size there
        self._int8_casts: dict[str, str] = {}   # float32 cast of an int8 tensor -> that tensor

    def read(self, env: dict, v) -> Any:
        if hasattr(v, "val"):                       # a Literal
            return np.asarray(v.val, dtype=v.aval.dtype)
        return env[v]

    def name(self, x) -> str:
        return x if isinstance(x, str) else self.g.const(x)

    def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
        env: dict = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = np.asarray(c)
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [self.read(env, v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                if type(v).__name__ != "DropVar":
                    env[v] = o
        return [self.read(env, v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins: list) -> list:
        prim = eqn.primitive.name
        if prim in _CALLS:
            inner, consts = _sub_jaxpr(eqn)
            return self.run(inner, consts, ins)
        if all(not isinstance(x, str) for x in ins) and self._foldable(eqn, ins):
            outs = eqn.primitive.bind(*[jnp.asarray(x) for x in ins], **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            return [np.asarray(o) for o in outs]
        handler = getattr(self, "p_" + prim.replace("-", "_"), None)
        if handler is not None:
            return [handler(eqn, ins)]
        if prim in _IDENTITY:
            return [ins[0]]
        if prim in _UNARY:
            return [self.g.node(_UNARY[prim], [self.name(ins[0])])]
        if prim in _BINARY:
            return [self.g.node(_BINARY[prim], self._broadcasting(eqn, ins))]
        raise ExportError(f"the ONNX export has no rule for primitive {prim!r} "
                          f"(in {eqn}); add one in afm_jax/onnx_export.py")

    @staticmethod
    def _foldable(eqn, ins) -> bool:
        out = eqn.outvars[0].aval
        if any(_is_symbolic(d) for d in getattr(out, "shape", ())):
            return False
        out_bytes = int(np.prod(out.shape, dtype=np.int64)) * np.dtype(out.dtype).itemsize
        in_bytes = sum(np.asarray(x).nbytes for x in ins)
        if eqn.primitive.name == "pad":   # padded tables: the file holds them unpadded
            return out_bytes <= in_bytes
        if eqn.primitive.name == "convert_element_type":   # int8 kernels: stored as int8
            return out_bytes <= in_bytes + FOLD_CAST_EXTRA_BYTES
        return out_bytes <= in_bytes + FOLD_EXTRA_BYTES

    def p_pad(self, eqn, ins):
        config = eqn.params["padding_config"]
        if any(lo < 0 or hi < 0 or interior for lo, hi, interior in config):
            raise ExportError(f"pad with negative or interior padding has no rule: {config}")
        pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
        fill = ins[1] if isinstance(ins[1], str) else np.asarray(ins[1]).reshape(())
        return self.g.node("Pad", [self.name(ins[0]), self.g.const(pads, np.int64), self.name(fill)])

    # ------------------------------------------------------------------ shape and layout
    def p_convert_element_type(self, eqn, ins):
        x = self.name(ins[0])
        y = self.g.node("Cast", [x], to=_tensor_type(eqn.params["new_dtype"]))
        if eqn.invars[0].aval.dtype == np.int8 and np.dtype(eqn.params["new_dtype"]) == np.float32:
            self._int8_casts[y] = x
        return y

    def p_mul(self, eqn, ins):
        """x * s. Where x is int8 values cast to float32 ([.., w]) and s one scale per vector of
        them ([.., 1]: the row scales of gathered int8 table rows), a DequantizeLinear of the
        int8 values as [N, w] with a scale per row (axis 0), exact as the Mul: ONNX Runtime
        runs its Mul broadcasting s along the last axis as a short loop per row, several times
        slower than the dequantization (experiments/results/onnx_export.md, DeepFM int8 against
        the float original in ONNX Runtime: 0.83-1.00x with the Mul and a scale Mul after each
        kernel's product, 0.86-1.01x with DequantizeLinear and the kernel scales folded)."""
        avals = [v.aval for v in eqn.invars]
        for i in (0, 1):
            # the operands as they are (not `_broadcasting`'s pre-Expand ones): the reshapes
            # below need every element of the scale
            q = self._int8_casts.get(ins[i]) if isinstance(ins[i], str) else None
            x, scale = avals[i], avals[1 - i]
            if (q is None or len(x.shape) < 2 or any(_is_symbolic(d) for d in x.shape[1:])
                    or tuple(scale.shape) != tuple(x.shape[:-1]) + (1,)
                    or scale.dtype != np.float32):
                continue
            g, w = self.g, int(x.shape[-1])
            rows = g.node("Reshape", [q, g.const([-1, w], np.int64)])
            scales = g.node("Reshape", [self.name(ins[1 - i]), g.const([-1], np.int64)])
            y = g.node("DequantizeLinear", [rows, scales], axis=0)
            return g.node("Reshape", [y, g.const([-1, *[int(d) for d in x.shape[1:]]], np.int64)])
        return self.g.node("Mul", self._broadcasting(eqn, ins))

    def p_reshape(self, eqn, ins):
        dims = list(eqn.params["new_sizes"])
        sym = [i for i, d in enumerate(dims) if _is_symbolic(d)]
        if len(sym) > 1:
            raise ExportError(f"reshape to {dims}: more than one symbolic dimension")
        if sym:
            dims[sym[0]] = -1
        return self.g.node("Reshape", [self.name(ins[0]), self.g.const(dims, np.int64)])

    def p_broadcast_in_dim(self, eqn, ins):
        shape, bdims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
        missing = [i for i in range(len(shape)) if i not in bdims]
        if missing and not isinstance(ins[0], str):   # a constant: its unit dims in the file
            x = self.g.const(np.expand_dims(np.asarray(ins[0]), missing))
        else:
            x = self.name(ins[0])
            if missing:
                x = self.g.node("Unsqueeze", [x, self.g.const(missing, np.int64)])
        operand = eqn.invars[0].aval.shape
        same = (all(_same_dim(shape[d], operand[i]) for i, d in enumerate(bdims))
                and all(not _is_symbolic(shape[i]) and shape[i] == 1 for i in missing))
        if same:   # only unit dims added (the Unsqueeze did it)
            return x
        from_operand = {d for d in bdims}
        dims = [shape[i] if not (_is_symbolic(shape[i]) and i in from_operand) else 1
                for i in range(len(shape))]
        return self.g.node("Expand", [x, self.g.shape(dims)])

    def p_squeeze(self, eqn, ins):
        return self.g.node("Squeeze", [self.name(ins[0]),
                                       self.g.const(list(eqn.params["dimensions"]), np.int64)])

    def p_expand_dims(self, eqn, ins):
        return self.g.node("Unsqueeze", [self.name(ins[0]),
                                         self.g.const(list(eqn.params["dimensions"]), np.int64)])

    def p_transpose(self, eqn, ins):
        return self.g.node("Transpose", [self.name(ins[0])], perm=list(eqn.params["permutation"]))

    def p_concatenate(self, eqn, ins):
        """Concat; pieces that are all unit-stride slices of one tensor along the concatenated
        axis (`packing.take_static`: one field's columns after another) become one Gather
        with constant indices, instead of a Slice per piece (the Slices are pruned)."""
        axis = eqn.params["dimension"]
        sizes = [v.aval.shape[axis] for v in eqn.invars]
        pieces = []                       # (source tensor, its size on axis, start, stop)
        for x, n in zip(ins, sizes):
            sl = self._slices.get(x) if isinstance(x, str) else None
            if sl is not None and sl[1] == axis:
                pieces.append((sl[0], self._source_size(sl[0], axis), sl[2], sl[3]))
            else:
                pieces.append((self.name(x), n, 0, n))
        sources = list(dict.fromkeys(p[0] for p in pieces))
        if (len(sources) == len(ins) or any(_is_symbolic(p[1]) or p[1] is None for p in pieces)):
            return self.g.node("Concat", [self.name(x) for x in ins], axis=axis)
        # one Concat of the whole sources and one Gather, instead of a Slice per piece
        size = {p[0]: p[1] for p in pieces}
        offset = dict(zip(sources, np.cumsum([0] + [size[s] for s in sources])[:-1].tolist()))
        idx = np.concatenate([offset[s] + np.arange(a, b) for s, _, a, b in pieces])
        whole = sources[0] if len(sources) == 1 else self.g.node("Concat", sources, axis=axis)
        return self.g.node("Gather", [whole, self.g.const(idx.astype(np.int64))], axis=axis)

    def p_stack(self, eqn, ins):
        axis = eqn.params["axis"]
        parts = [self.g.node("Unsqueeze", [x, self.g.const([axis], np.int64)]) if isinstance(x, str)
                 else self.g.const(np.expand_dims(np.asarray(x), axis)) for x in ins]
        return self.g.node("Concat", parts, axis=axis)

    def _source_size(self, name: str, axis: int):
        return self._sizes.get((name, axis))

    def p_slice(self, eqn, ins):
        shape = eqn.invars[0].aval.shape
        starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
        strides = eqn.params["strides"] or (1,) * len(starts)
        axes = [i for i in range(len(starts))
                if not (starts[i] == 0 and limits[i] is shape[i] and strides[i] == 1)
                and not (starts[i] == 0 and not _is_symbolic(limits[i])
                         and not _is_symbolic(shape[i]) and limits[i] == shape[i]
                         and strides[i] == 1)]
        if not axes:
            return self.name(ins[0])
        if any(_is_symbolic(limits[i]) or _is_symbolic(starts[i]) for i in axes):
            raise ExportError("slice with a symbolic bound along a sliced axis")
        c = self.g.const
        y = self.g.node("Slice", [self.name(ins[0]), c([starts[i] for i in axes], np.int64),
                                  c([limits[i] for i in axes], np.int64),
                                  c(axes, np.int64), c([strides[i] for i in axes], np.int64)])
        if len(axes) == 1 and strides[axes[0]] == 1:
            self._slices[y] = (self.name(ins[0]), axes[0], int(starts[axes[0]]), int(limits[axes[0]]))
            self._sizes[(self.name(ins[0]), axes[0])] = shape[axes[0]]
        return y

    def p_select_n(self, eqn, ins):
        if len(ins) != 3:
            raise ExportError("select_n with more than two cases")
        pred = self.name(ins[0])
        if np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
            pred = self.g.node("Cast", [pred], to=_tensor_type(np.bool_))
        cases = self._broadcasting(eqn, ins[1:], full=eqn.invars[0].aval.shape)
        return self.g.node("Where", [pred, cases[1], cases[0]])

    def _broadcasting(self, eqn, ins, full=None) -> list[str]:
        """Names of an elementwise op's operands (ONNX broadcasts them numpy-style): where one
        operand (or `full`, a shape the op sees besides) has the output's shape, an operand
        that an Expand only widened is taken before the Expand (one Unsqueeze + Expand fewer,
        e.g. for jnp.where(ok, ids, 0))."""
        out = eqn.outvars[0].aval.shape
        shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars[-len(ins):]]

        def whole(shape) -> bool:
            return len(shape) == len(out) and all(_same_dim(a, b) for a, b in zip(shape, out))

        names = [self.name(x) for x in ins]
        for i, name in enumerate(names):
            node = self.g.made_by(name, "Expand")
            if node is not None and (
                    (full is not None and whole(full))
                    or any(whole(sh) for j, sh in enumerate(shapes) if j != i)):
                names[i] = node.input[0]
        return names

    def p_ne(self, eqn, ins):
        return self.g.node("Not", [self.g.node("Equal", [self.name(x) for x in ins])])

    def p_rem(self, eqn, ins):
        return self.g.node("Mod", [self.name(x) for x in ins], fmod=1)

    def p_integer_pow(self, eqn, ins):
        x, y = self.name(ins[0]), eqn.params["y"]
        if y == 2:
            return self.g.node("Mul", [x, x])
        return self.g.node("Pow", [x, self.g.const(np.asarray(y, eqn.invars[0].aval.dtype))])

    def p_square(self, eqn, ins):
        x = self.name(ins[0])
        return self.g.node("Mul", [x, x])

    def p_rsqrt(self, eqn, ins):
        return self.g.node("Reciprocal", [self.g.node("Sqrt", [self.name(ins[0])])])

    def p_log1p(self, eqn, ins):
        one = self.g.const(np.asarray(1, eqn.invars[0].aval.dtype))
        return self.g.node("Log", [self.g.node("Add", [self.name(ins[0]), one])])

    def p_round(self, eqn, ins):
        if int(eqn.params.get("rounding_method", 1)) != 1:   # 1: to nearest even
            raise ExportError("round away from zero has no ONNX op; jnp.round rounds to even")
        return self.g.node("Round", [self.name(ins[0])])

    def p_clamp(self, eqn, ins):
        lo, x, hi = (self.name(v) for v in ins)
        return self.g.node("Max", [self.g.node("Min", [x, hi]), lo])

    def _reduce(self, op, eqn, ins):
        return self.g.node(op, [self.name(ins[0]), self.g.const(list(eqn.params["axes"]), np.int64)],
                           keepdims=0)

    def p_reduce_sum(self, eqn, ins):
        return self._reduce("ReduceSum", eqn, ins)

    def p_reduce_max(self, eqn, ins):
        return self._reduce("ReduceMax", eqn, ins)

    def p_reduce_min(self, eqn, ins):
        return self._reduce("ReduceMin", eqn, ins)

    def _reduce_bool(self, op, eqn, ins):
        """any / all of a bool tensor (DIN's softmax over a possibly empty sequence): ReduceMax /
        ReduceMin over its 0/1 int32 cast (ONNX Runtime's reductions take no bool before opset 20)."""
        x = self.g.node("Cast", [self.name(ins[0])], to=_tensor_type(np.int32))
        y = self.g.node(op, [x, self.g.const(list(eqn.params["axes"]), np.int64)], keepdims=0)
        return self.g.node("Cast", [y], to=_tensor_type(np.bool_))

    def p_reduce_or(self, eqn, ins):
        return self._reduce_bool("ReduceMax", eqn, ins)

    def p_reduce_and(self, eqn, ins):
        return self._reduce_bool("ReduceMin", eqn, ins)

    # ------------------------------------------------------------------ gathers and products
    def p_gather(self, eqn, ins):
        """`x[ids]` along one axis `a` (table lookups, pair indices, TT-Rec cores): every other
        axis is taken whole (a start index there is clamped to 0, so it is ignored). ids are in
        range (`nn.in_vocab`), as ONNX Gather requires."""
        dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
        operand = eqn.invars[0].aval.shape
        k = len(eqn.invars[1].aval.shape) - 1                     # the ids' own dims
        narrow = [i for i in range(len(operand)) if not _same_dim(sizes[i], operand[i])]
        if (getattr(dn, "operand_batching_dims", ()) or len(narrow) != 1 or sizes[narrow[0]] != 1
                or narrow[0] not in dn.start_index_map
                or any(c != narrow[0] for c in dn.collapsed_slice_dims)):
            raise ExportError(f"gather of this form has no rule: {dn}, slice sizes {sizes}")
        a = narrow[0]
        ids = self.name(ins[1])
        unsq = self.g.made_by(ids, "Unsqueeze")
        if (len(dn.start_index_map) == 1 and unsq is not None
                and self.g.is_value(unsq.input[1], k) and self.g.values[unsq.input[1]].size == 1):
            ids = unsq.input[0]       # the index vector is a unit dim added to the ids
        else:
            ids = self.g.node("Gather", [ids, self.g.const(
                np.asarray(list(dn.start_index_map).index(a), np.int64))], axis=-1)
        ids = self._unwrapped(ids, operand[a])
        y = self.g.node("Gather", [self.name(ins[0]), ids], axis=a)
        kept = a not in dn.collapsed_slice_dims
        if kept:
            y = self.g.node("Unsqueeze", [y, self.g.const([a + k], np.int64)])
        onnx_order = ([("o", i) for i in range(a)] + [("b", j) for j in range(k)]
                      + ([("o", a)] if kept else []) + [("o", i) for i in range(a + 1, len(operand))])
        offsets = iter(("o", i) for i in range(len(operand))
                       if i not in dn.collapsed_slice_dims)
        ids_dims = iter(("b", j) for j in range(k))
        jax_order = [next(offsets) if p in dn.offset_dims else next(ids_dims)
                     for p in range(len(onnx_order))]
        perm = [onnx_order.index(label) for label in jax_order]
        return y if perm == sorted(perm) else self.g.node("Transpose", [y], perm=perm)

    def _unwrapped(self, ids: str, n) -> str:
        """ids = Where(x < 0, x + n, x) (jnp's wrap of negative indices) -> x: ONNX Gather wraps
        negative indices in [-n, 0) itself, the same way."""
        where = self.g.made_by(ids, "Where")
        if where is None or _is_symbolic(n):
            return ids
        pred, wrapped, x = where.input
        less, add = self.g.made_by(pred, "Less"), self.g.made_by(wrapped, "Add")
        if (less is not None and add is not None and list(less.input[:1]) == [x]
                and self.g.is_value(less.input[1], 0) and list(add.input[:1]) == [x]
                and self.g.is_value(add.input[1], int(n))):
            return x
        return ids

    def p_dot_general(self, eqn, ins):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        la, ra = eqn.invars[0].aval, eqn.invars[1].aval
        out = eqn.outvars[0].aval
        x = self.name(ins[0])
        # a float32 constant kernel stays an array here: its transposes and unit dims are
        # made in the file, not at run time
        w = ins[1] if isinstance(ins[1], np.ndarray) and ra.dtype == np.float32 \
            else self.name(ins[1])
        ints = np.issubdtype(la.dtype, np.integer) and np.issubdtype(ra.dtype, np.integer)
        plain = (not lb and not rb and tuple(lc) == (len(la.shape) - 1,) and tuple(rc) == (0,)
                 and len(ra.shape) == 2)
        if ints:
            if not plain or la.dtype.name not in ("int8", "uint8") or ra.dtype.name not in ("int8", "uint8"):
                raise ExportError(f"integer product {la.dtype} x {ra.dtype} of this form has no "
                                  "exact ONNX rule")
            y = self.g.node("MatMulInteger", [x, w])          # int32, exact
            if np.dtype(out.dtype) != np.int32:
                y = self.g.node("Cast", [y], to=_tensor_type(out.dtype))
            return y
        f32 = _tensor_type(np.float32)
        if la.dtype != np.float32:
            x = self.g.node("Cast", [x], to=f32)
        if ra.dtype != np.float32:
            w = self.g.node("Cast", [w], to=f32)
        if plain:
            y = self.g.node("MatMul", [x, self.name(w)])
        else:
            y = self._batched_matmul(x, w, len(la.shape), len(ra.shape), lc, rc, lb, rb)
        if np.dtype(out.dtype) != np.float32:
            y = self.g.node("Cast", [y], to=_tensor_type(out.dtype))
        return y

    def _batched_matmul(self, x: str, w: str, lr: int, rr: int, lc, rc, lb, rb) -> str:
        """A dot_general with one contracted dim and at most one free dim per side as a batched
        MatMul ([batch.., M, K] @ [batch.., K, N], transposes and unit dims around it), which ONNX
        Runtime runs faster than Einsum; any other as Einsum."""
        lfree = [i for i in range(lr) if i not in lc and i not in lb]
        rfree = [j for j in range(rr) if j not in rc and j not in rb]
        if len(lc) != 1 or len(lfree) > 1 or len(rfree) > 1:
            return self.g.node("Einsum", [x, self.name(w)], equation=_einsum_spec(lr, rr, lc, rc, lb, rb))
        g, nb = self.g, len(lb)
        if (not lfree and not rfree and isinstance(w, str) and list(lb) == list(rb)
                and list(lb) == list(range(nb)) and list(lc) == list(rc) == [nb]):
            # a dot product per batch element ([.., K] . [.., K]): Mul + ReduceSum, not a
            # MatMul of [.., 1, K] @ [.., K, 1] (tiny products, and four nodes)
            return g.node("ReduceSum", [g.node("Mul", [x, w]), g.const([nb], np.int64)],
                          keepdims=0)
        lperm, rperm = [*lb, *lfree, *lc], [*rb, *rc, *rfree]
        if lperm != list(range(lr)):
            x = g.node("Transpose", [x], perm=lperm)
        if not lfree:
            x = g.node("Unsqueeze", [x, g.const([nb], np.int64)])          # [.., 1, K]
        if isinstance(w, np.ndarray):   # a constant: laid out in the file
            if rperm != list(range(rr)) or not rfree:
                w = np.transpose(w, rperm)
                w = w if rfree else np.expand_dims(w, nb + 1)
            w = g.const(w)
        else:
            if rperm != list(range(rr)):
                w = g.node("Transpose", [w], perm=rperm)
            if not rfree:
                w = g.node("Unsqueeze", [w, g.const([nb + 1], np.int64)])  # [.., K, 1]
        y = g.node("MatMul", [x, w])                                        # [batch.., M, N]
        drop = ([nb] if not lfree else []) + ([nb + 1] if not rfree else [])
        return g.node("Squeeze", [y, g.const(drop, np.int64)]) if drop else y


def _einsum_spec(lr: int, rr: int, lc, rc, lb, rb) -> str:
    """The einsum equation of a dot_general: output = batch dims, lhs free, rhs free."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in range(lr)]
    rhs = [None] * rr
    for i, j in zip(lc, rc):
        rhs[j] = lhs[i]
    for i, j in zip(lb, rb):
        rhs[j] = lhs[i]
    rhs = [r if r is not None else next(letters) for r in rhs]
    out = [lhs[i] for i in lb]
    out += [lhs[i] for i in range(lr) if i not in lc and i not in lb]
    out += [rhs[j] for j in range(rr) if j not in rc and j not in rb]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


# ---------------------------------------------------------------------- the encoder in the graph

def _bucket_keys(vocab: Sequence[str]) -> tuple[list[int], list[int], list[int], list[int]]:
    """A bucketized field's vocabulary as two int64 maps: "b<k>" (x > 2) and "<k>" (x <= 2)."""
    big_k, big_id, small_k, small_id = [], [], [], []
    for i, v in enumerate(vocab, start=1):
        try:
            if v.startswith("b"):
                big_k.append(int(v[1:]))
                big_id.append(i)
            else:
                small_k.append(int(v))
                small_id.append(i)
        except ValueError:
            continue        # not a value the bucketize rule produces: never looked up
    return big_k, big_id, small_k, small_id


def _label_encoder(g: _Graph, x: str, keys, values, *, strings: bool) -> str:
    """x -> int64 id by a lookup table (ai.onnx.ml LabelEncoder); anything else -> 0."""
    if not len(keys):   # an empty vocabulary: every value is id 0
        return g.node("Expand", [g.const(np.asarray(0, np.int64)), g.node("Shape", [x])])
    key_attr = "keys_strings" if strings else "keys_int64s"
    return g.node("LabelEncoder", [x], domain="ai.onnx.ml", **{key_attr: list(keys)},
                  values_int64s=[int(v) for v in values], default_int64=0)


class _RawInputs(NamedTuple):
    """The raw-input graph's inputs and the scorer's tensors built from them: cat int32 [B, Fc],
    num float32 [B, Fn], bags {field: int32 [B, L]} and bag_len {field: int32 [B]}."""

    inputs: list
    cat: str
    num: str
    bags: dict
    bag_len: dict


def hashed_input(field: str) -> str:
    """The graph input of a hashed field: the ids a client computes with `hashing.HASH_RULE`."""
    return f"hashed:{field}"


def bag_inputs(field: str) -> tuple[str, str]:
    """The id-input graph's inputs of bag `field`: padded ids and lengths, named as in the
    jax.export artifact (`transforms.bag_input_names`; `bag_len:<field>` is also a hashed bag's
    lengths in the raw-input graph)."""
    from afm_jax.transforms import bag_input_names
    return bag_input_names(field)


def _own_vocab(encoder, table: str) -> list[str]:
    """The vocabulary of a field with a table of its own (a categorical or own-vocabulary bag)."""
    if table in encoder.cat_names:
        return encoder.vocabs[encoder.cat_names.index(table)]
    return encoder.bag_vocabs[[b.name for b in encoder.bags].index(table)]


def _in_range(g: _Graph, ids: str, rows: int) -> str:
    """int64 ids with every id outside [0, rows) -> 0 (`ops.in_vocab`), before a cast to int32
    could wrap a large one into range."""
    zero = g.const(np.asarray(0, np.int64))
    ok = g.node("And", [g.node("GreaterOrEqual", [ids, zero]),
                        g.node("Less", [ids, g.const(np.asarray(rows, np.int64))])])
    return g.node("Where", [ok, ids, zero])


def _split_bag(g: _Graph, x: str, spec, keys: Sequence[str]) -> tuple[str, str]:
    """A bag field's strings [B] -> (ids int32 [B, L], lengths int32 [B]) as `Encoder.bag_ids`:
    split on the separator ("" -> no items), items looked up (unseen -> 0), max_len items kept
    by the truncation rule, in input order, padded with 0."""
    g.opset = max(g.opset, STRING_OPSET)
    L = int(spec.max_len)
    items, n = g.node("StringSplit", [x], n_out=2, delimiter=spec.separator)   # [B, M], [B]
    ids = _label_encoder(g, items, list(keys), [i + 1 for i in range(len(keys))], strings=True)
    # L zero columns after the M items: every position start + l (l < L) is inside the row
    pad = g.node("Expand", [g.const(np.zeros((1, L), np.int64)), g.shape(["B", L])])
    ids = g.node("Concat", [ids, pad], axis=1)
    keep = g.node("Min", [n, g.const(np.asarray(L, np.int64))])
    if spec.truncation == "keep_last":
        start = g.node("Sub", [n, keep])                                          # n - min(n, L)
    else:
        start = g.node("Mul", [n, g.const(np.asarray(0, np.int64))])
    pos = g.const(np.arange(L, dtype=np.int64)[None, :])
    col = g.node("Add", [g.node("Unsqueeze", [start, g.const([1], np.int64)]), pos])
    taken = g.node("GatherElements", [ids, col], axis=1)                         # [B, L]
    real = g.node("Less", [pos, g.node("Unsqueeze", [keep, g.const([1], np.int64)])])
    taken = g.node("Where", [real, taken, g.const(np.asarray(0, np.int64))])
    return (g.node("Cast", [taken], to=_tensor_type(np.int32)),
            g.node("Cast", [keep], to=_tensor_type(np.int32)))


def _raw_encoder(g: _Graph, encoder, bucketize: frozenset[str]) -> _RawInputs:
    """Graph inputs (one per field; a hashed bag: two) and the scorer's tensors built from them."""
    onnx = _onnx()
    inputs, cat_cols, num_cols = [], [], []
    f64 = np.float64
    hashed = dict(getattr(encoder, "hash_buckets", {}) or {})
    first = (encoder.cat_names + encoder.num_names + tuple(b.name for b in encoder.bags))[0]
    g._batch_source = hashed_input(first) if first in hashed or any(
        b.name == first and (b.shares or b.name) in hashed for b in encoder.bags) else first
    for j, name in enumerate(encoder.cat_names):
        vocab = encoder.vocabs[j]
        if name in hashed:
            x = hashed_input(name)
            inputs.append(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.INT64, ["B"]))
            ids = _in_range(g, x, hashed[name])
        elif name in bucketize:
            inputs.append(onnx.helper.make_tensor_value_info(name, _tensor_type(f64), ["B"]))
            missing = g.node("IsNaN", [name])
            x = g.node("Where", [missing, g.const(np.asarray(0.0, f64)), name])
            big = g.node("Greater", [x, g.const(np.asarray(2.0, f64))])
            safe = g.node("Where", [big, x, g.const(np.asarray(3.0, f64))])
            logx = g.node("Log", [safe])
            k = g.node("Where", [big, g.node("Floor", [g.node("Mul", [logx, logx])]),
                                 g.node("Floor", [x])])
            k = g.node("Cast", [k], to=_tensor_type(np.int64))
            big_k, big_id, small_k, small_id = _bucket_keys(vocab)
            ids = g.node("Where", [big, _label_encoder(g, k, big_k, big_id, strings=False),
                                   _label_encoder(g, k, small_k, small_id, strings=False)])
            ids = g.node("Where", [missing, g.const(np.asarray(0, np.int64)), ids])
        else:
            inputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.STRING, ["B"]))
            keys = [v for v in vocab if v != ""]          # "" is missing: id 0
            ids = _label_encoder(g, name, keys, [vocab.index(v) + 1 for v in keys], strings=True)
        cat_cols.append(g.node("Unsqueeze", [g.node("Cast", [ids], to=_tensor_type(np.int32)),
                                             g.const([1], np.int64)]))
    for j, name in enumerate(encoder.num_names):
        inputs.append(onnx.helper.make_tensor_value_info(name, _tensor_type(f64), ["B"]))
        missing = g.node("IsNaN", [name])
        t = g.node("Log", [g.node("Add", [g.node("Max", [name, g.const(np.asarray(0.0, f64))]),
                                          g.const(np.asarray(1.0, f64))])])
        t = g.node("Cast", [g.node("Cast", [t], to=_tensor_type(np.float32))],
                   to=_tensor_type(f64))             # numeric_transform returns float32
        z = g.node("Div", [g.node("Sub", [t, g.const(np.asarray(encoder.num_mean[j], f64))]),
                           g.const(np.asarray(encoder.num_std[j], f64))])
        z = g.node("Where", [missing, g.const(np.asarray(0.0, f64)), z])
        num_cols.append(g.node("Unsqueeze", [g.node("Cast", [z], to=_tensor_type(np.float32)),
                                             g.const([1], np.int64)]))
    bags, bag_len = {}, {}
    for spec in getattr(encoder, "bags", ()):
        table = spec.shares or spec.name
        if table in hashed:   # the client splits, hashes (with the table's field name) and pads
            x, n = hashed_input(spec.name), bag_inputs(spec.name)[1]
            inputs.append(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.INT64,
                                                             ["B", int(spec.max_len)]))
            inputs.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["B"]))
            bags[spec.name] = g.node("Cast", [_in_range(g, x, hashed[table])],
                                     to=_tensor_type(np.int32))
            bag_len[spec.name] = g.node("Cast", [n], to=_tensor_type(np.int32))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(spec.name, onnx.TensorProto.STRING,
                                                             ["B"]))
            bags[spec.name], bag_len[spec.name] = _split_bag(g, spec.name, spec,
                                                             _own_vocab(encoder, table))
    if g._batch_source != inputs[0].name:
        raise ExportError(f"internal: the batch source {g._batch_source} is not the first input")
    cat = (g.node("Concat", cat_cols, axis=1) if cat_cols
           else g.node("Expand", [g.const(np.zeros((1, 0), np.int32)), g.shape(["B", 0])]))
    num = (g.node("Concat", num_cols, axis=1) if num_cols
           else g.node("Expand", [g.const(np.zeros((1, 0), np.float32)), g.shape(["B", 0])]))
    return _RawInputs(inputs, cat, num, bags, bag_len)


def _hash_note(encoder) -> dict:
    """Per hashed input: the field, the name the hash takes, buckets and the rule; {} if none."""
    from afm_jax.data.hashing import HASH_RULE

    hashed = dict(getattr(encoder, "hash_buckets", {}) or {}) if encoder is not None else {}
    out = {}
    for name in getattr(encoder, "cat_names", ()):
        if name in hashed:
            out[hashed_input(name)] = {"field": name, "hash_field": name, "buckets": hashed[name],
                                       "shape": ["B"], "rule": HASH_RULE}
    for spec in getattr(encoder, "bags", ()):
        table = spec.shares or spec.name
        if table in hashed:
            out[hashed_input(spec.name)] = {
                "field": spec.name, "hash_field": table, "buckets": hashed[table],
                "shape": ["B", int(spec.max_len)], "lengths": bag_inputs(spec.name)[1],
                "separator": spec.separator, "max_len": int(spec.max_len),
                "truncation": spec.truncation, "rule": HASH_RULE}
    return out


# ---------------------------------------------------------------------------------- the export

def scorer_fn(model, params, compute_dtype=None, rank_of: Mapping[str, int] | None = None) -> Callable:
    """(cat, num[, bags, bag_len]) -> probabilities, with the packed params closed over as
    device arrays (numpy leaves would be indexed by tracers). bags / bag_len: {field: [B, L]} /
    {field: [B]} for a model with bag fields (`afm_jax.data.splits`).

    rank_of: the compressed tables padded to these ranks (`compress.merged_ranks`) inside the
    function, and packed there: a trace of it holds the tables as given and the padding and
    packing as operations on them (which ONNX Runtime folds when it loads the file)."""
    from afm_jax.compress import padded
    from afm_jax.inference import logits_fn
    from afm_jax.packing import pack

    logits = logits_fn(model, None, 1, compute_dtype)
    if rank_of:
        given = jax.tree.map(jnp.asarray, params)

        def packed():
            return pack(model, padded(given, rank_of, pad=jnp.pad))
    else:
        whole = jax.tree.map(jnp.asarray, pack(model, params))

        def packed():
            return whole

    def score(cat, num, bags=None, bag_len=None):
        batch = {"cat": cat, "num": num}
        if bags:
            batch.update(bags=bags, bag_len=bag_len)
        return jax.nn.sigmoid(logits(packed(), batch))

    return score


def to_onnx(model, params, *, encoder=None, bucketize: Sequence[str] = (), compute_dtype=None,
            max_ranks: int | str | None = None):
    """The scorer as an `onnx.ModelProto` (see the module docstring). max_ranks: the compressed
    tables padded in the graph to fewer distinct ranks (`compress.rank_plan`: "auto", N, or
    None for every rank): the file holds them as given, and ONNX Runtime pads and packs them
    when it loads the file (constant folding), so it runs one gather and one projection per
    kept rank."""
    from afm_jax.compress import rank_plan

    onnx = _onnx()
    info = model.info
    bags = tuple(getattr(info, "bags", ()))
    b = jax.export.symbolic_shape("B")[0]
    S = jax.ShapeDtypeStruct
    specs = [S((b, len(info.cat_names)), jnp.int32), S((b, len(info.num_names)), jnp.float32)]
    if bags:
        specs += [{x.name: S((b, int(x.max_len)), jnp.int32) for x in bags},
                  {x.name: S((b,), jnp.int32) for x in bags}]
    closed = jax.make_jaxpr(scorer_fn(model, params, compute_dtype,
                                      rank_plan(params, max_ranks)))(*specs)
    if encoder is not None:
        if tuple(encoder.cat_names) != tuple(info.cat_names) or tuple(encoder.num_names) != tuple(info.num_names) \
                or [x.name for x in getattr(encoder, "bags", ())] != [x.name for x in bags]:
            raise ExportError("the encoder's fields differ from the model's")
        g = _Graph(None)
        raw = _raw_encoder(g, encoder, frozenset(bucketize))
        inputs, args = raw.inputs, [raw.cat, raw.num]
        bag_t, len_t = raw.bags, raw.bag_len
    else:
        g = _Graph("cat")
        inputs = [onnx.helper.make_tensor_value_info("cat", onnx.TensorProto.INT32, ["B", len(info.cat_names)]),
                  onnx.helper.make_tensor_value_info("num", onnx.TensorProto.FLOAT, ["B", len(info.num_names)])]
        args = ["cat", "num"]
        bag_t = {x.name: bag_inputs(x.name)[0] for x in bags}
        len_t = {x.name: bag_inputs(x.name)[1] for x in bags}
        for x in bags:
            inputs += [onnx.helper.make_tensor_value_info(bag_t[x.name], onnx.TensorProto.INT32,
                                                          ["B", int(x.max_len)]),
                       onnx.helper.make_tensor_value_info(len_t[x.name], onnx.TensorProto.INT32, ["B"])]
    if bags:   # the jaxpr's inputs: the dicts' leaves in key order, as jax flattens them
        args += jax.tree.leaves(bag_t) + jax.tree.leaves(len_t)
    (out,) = _Converter(g).run(closed.jaxpr, closed.consts, args)
    if not isinstance(out, str):
        raise ExportError("the scorer's output does not depend on its inputs")
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["score"]))
    return _model_proto(g, inputs, [
        onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["B"])],
        _hash_note(encoder))


def _live(nodes: list, initializers: list, outputs: list) -> tuple[list, list]:
    """The nodes and initializers the outputs depend on (dead ones, e.g. Slices replaced by a
    Gather, dropped), nodes in their order."""
    needed = {o.name for o in outputs}
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    return keep[::-1], [t for t in initializers if t.name in needed]


def _model_proto(g: _Graph, inputs: list, outputs: list, hashed: dict | None = None):
    """The model of `g`; hashed (`_hash_note`): stated in the metadata for a client to see."""
    onnx = _onnx()
    nodes, initializers = _live(g.nodes, g.initializers, outputs)
    graph = onnx.helper.make_graph(nodes, "afm_jax_scorer", inputs, outputs,
                                   initializer=initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", g.opset), onnx.helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="afm_jax")
    proto.ir_version = min(proto.ir_version, 10)
    if hashed:
        onnx.helper.set_model_props(proto, {HASH_NOTE_KEY: json.dumps(hashed), "afm_jax.note": (
            f"inputs {sorted(hashed)} take ids the client computes: id = <rule> of "
            f"{HASH_NOTE_KEY} with field = hash_field and buckets; a hashed bag: its items split "
            "on the separator, cut to max_len by the truncation, padded with 0, lengths beside")})
    onnx.checker.check_model(proto)
    return proto


def encoder_to_onnx(encoder, bucketize: Sequence[str] = ()):
    """The encoder alone as an ONNX graph: raw field values in (as in `to_onnx`), `cat` int32
    [B, Fc] and `num` float32 [B, Fn] out, equal to `Encoder.encode` (after `bucketize` for the
    bucketized fields), and per bag field `bag:<field>` int32 [B, L] and `bag_len:<field>` int32
    [B], equal to `Encoder.encode_bags`."""
    onnx = _onnx()
    g = _Graph(None)
    raw = _raw_encoder(g, encoder, frozenset(bucketize))
    outputs = [onnx.helper.make_tensor_value_info("cat", onnx.TensorProto.INT32, ["B", len(encoder.cat_names)]),
               onnx.helper.make_tensor_value_info("num", onnx.TensorProto.FLOAT, ["B", len(encoder.num_names)])]
    g.nodes.append(onnx.helper.make_node("Identity", [raw.cat], ["cat"]))
    g.nodes.append(onnx.helper.make_node("Identity", [raw.num], ["num"]))
    for spec in getattr(encoder, "bags", ()):
        ids, n = bag_inputs(spec.name)
        g.nodes.append(onnx.helper.make_node("Identity", [raw.bags[spec.name]], [ids]))
        g.nodes.append(onnx.helper.make_node("Identity", [raw.bag_len[spec.name]], [n]))
        outputs += [onnx.helper.make_tensor_value_info(ids, onnx.TensorProto.INT32, ["B", int(spec.max_len)]),
                    onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT32, ["B"])]
    return _model_proto(g, raw.inputs, outputs, _hash_note(encoder))


def onnx_signature(model, encoder, bucketize: Sequence[str], precision: str, file_bytes: int,
                   stored_bytes: int, source: dict | None = None, opset: int = ONNX_OPSET) -> dict:
    """What a client needs: each input with its dtype and transform (hashed inputs: the rule
    the client applies), and the output."""
    from afm_jax.inference import bag_inputs as inference_bag_inputs
    from afm_jax.models import model_to_json

    info = model.info
    if encoder is None:
        inputs = [{"name": "cat", "dtype": "int32", "shape": ["B", len(info.cat_names)],
                   "fields": list(info.cat_names), "vocab_sizes": [int(v) for v in info.vocab_sizes],
                   "transform": "the encoder's ids; ids outside [0, vocab_size) score as id 0"},
                  {"name": "num", "dtype": "float32", "shape": ["B", len(info.num_names)],
                   "fields": list(info.num_names),
                   "transform": "(log1p(max(x, 0)) - mean) / std, missing -> 0 (encoder.json)"}]
        inputs += inference_bag_inputs(info, "B")   # the jax.export artifact's entries
    else:
        inputs = []
        hashed = _hash_note(encoder)
        for name in encoder.cat_names:
            if hashed_input(name) in hashed:
                h = hashed[hashed_input(name)]
                inputs.append({"name": hashed_input(name), "dtype": "int64", "shape": ["B"],
                               "field": name, "kind": "hashed", "missing": "0",
                               "hash_field": name, "hash_buckets": h["buckets"],
                               "transform": f"the client hashes: id = {h['rule']} with field = "
                                            f"{name!r}, buckets = {h['buckets']}; ids outside "
                                            "[0, buckets) score as 0"})
            elif name in bucketize:
                inputs.append({"name": name, "dtype": "float64", "shape": ["B"], "kind": "bucketized",
                               "missing": "NaN",
                               "transform": "bucket 'b' + str(floor(log(x)**2)) if x > 2 else "
                                            "str(floor(x)), then its vocabulary id (unseen -> 0)"})
            else:
                inputs.append({"name": name, "dtype": "string", "shape": ["B"], "kind": "categorical",
                               "missing": "empty string",
                               "transform": "vocabulary id (in the graph); unseen or missing -> 0"})
        for j, name in enumerate(encoder.num_names):
            inputs.append({"name": name, "dtype": "float64", "shape": ["B"], "kind": "numeric",
                           "missing": "NaN",
                           "transform": f"(log1p(max(x, 0)) - {encoder.num_mean[j]!r}) / "
                                        f"{encoder.num_std[j]!r}, missing -> 0"})
        for spec in getattr(encoder, "bags", ()):
            kind = "sequence" if spec.shares else "multi_valued"
            about = {"field": spec.name, "kind": kind, "max_len": int(spec.max_len),
                     "combiner": spec.combiner, "separator": spec.separator,
                     "truncation": spec.truncation, "shares": spec.shares}
            h = hashed.get(hashed_input(spec.name))
            if h is None:
                inputs.append({"name": spec.name, "dtype": "string", "shape": ["B"], **about,
                               "missing": "empty string (an empty bag)",
                               "transform": f"split on {spec.separator!r}, each item's "
                                            f"vocabulary id ({spec.shares or spec.name}'s; unseen "
                                            f"-> 0), {spec.truncation} max_len items, padded "
                                            "(in the graph)"})
                continue
            ids, n = hashed_input(spec.name), bag_inputs(spec.name)[1]
            inputs += [{"name": ids, "dtype": "int64", "shape": ["B", int(spec.max_len)], **about,
                        "hash_field": h["hash_field"], "hash_buckets": h["buckets"],
                        "lengths": n,
                        "transform": f"the client splits on {spec.separator!r} (\"\" -> no "
                                     f"items), keeps {spec.truncation} {spec.max_len} items, "
                                     f"hashes each: id = {h['rule']} with field = "
                                     f"{h['hash_field']!r}, buckets = {h['buckets']}, and pads "
                                     "with 0; ids outside [0, buckets) score as 0"},
                       {"name": n, "dtype": "int64", "shape": ["B"], "field": spec.name,
                        "transform": f"the number of items kept, 0..{int(spec.max_len)}"}]
    from afm_jax.transforms import field_transforms

    extra = {} if encoder is None else {"fields": field_transforms(encoder, bucketize),
                                        "source": source or {}}
    if encoder is not None and _hash_note(encoder):   # the metadata's note (HASH_NOTE_KEY) too
        extra["hashed_inputs"] = _hash_note(encoder)
    return {"format": ONNX_FORMAT, "file": ONNX_FILE, "inputs": inputs, **extra,
            "output": {"name": "score", "dtype": "float32", "shape": ["B"],
                       "meaning": "click probability"},
            "precision": precision, "opset": {"ai.onnx": opset, "ai.onnx.ml": ML_OPSET},
            "bytes": {"onnx_file": file_bytes, "stored_params": stored_bytes},
            "model": model_to_json(model)}


def export_onnx(model, params, path, *, encoder=None, bucketize: Sequence[str] = (),
                compute_dtype=None, overwrite: bool = False, source: dict | None = None,
                ort: bool = False, max_ranks: int | str | None = MAX_RANKS) -> Path:
    """Write `path/model.onnx` and `path/signature.json` (see the module docstring), atomically
    (`outputs.atomic_dir`; an existing `path` is refused unless `overwrite`).

    encoder: put it in the graph (raw values in); None: the graph takes ids and transformed
    numbers. bucketize: the categorical fields that come as numbers and are bucketized
    (Criteo's I1..I13). compute_dtype: as for `make_scorer` (int8 runs MatMulInteger). source:
    the raw files' layout (`transforms.source_layout`), recorded in signature.json. ort: also
    write `model.with_runtime_opt.ort` and `model.required_operators.with_runtime_opt.config`
    for a minimal ONNX Runtime build (`python -m onnxruntime.tools.convert_onnx_models_to_ort
    --optimization_style Runtime`). max_ranks: the compressed tables' ranks padded to fewer
    distinct ranks when ONNX Runtime runs the file (`compress.rank_plan`: "auto", the fewest
    ranks whose padding at most doubles the model's bytes once loaded; N, at most N; None, every
    rank). The file holds the tables as given; the graph pads and packs them, and ONNX Runtime
    does that once, when it loads the file (scores unchanged). ONNX Runtime pays per node at
    small batches, and each rank is a gather and a projection. signature.json's
    bytes.rank_padding: what the padding adds in memory once loaded.
    """
    from afm_jax.compress import padded, rank_plan
    from afm_jax.inference import count_bytes, precision_name
    from afm_jax.outputs import atomic_dir

    stored = count_bytes(params)
    proto = to_onnx(model, params, encoder=encoder, bucketize=bucketize,
                    compute_dtype=compute_dtype, max_ranks=max_ranks)
    data = proto.SerializeToString()
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    sig = onnx_signature(model, encoder, tuple(bucketize), precision_name(compute_dtype),
                         len(data), stored, source, opset)
    plan = rank_plan(params, max_ranks)
    sig["bytes"]["rank_padding"] = count_bytes(padded(params, plan)) - stored if plan else 0
    sig["max_ranks"] = max_ranks
    sig["ranks"] = sorted(set(plan.values())) if plan else None
    with atomic_dir(path, overwrite) as tmp:
        (tmp / ONNX_FILE).write_bytes(data)
        if ort:
            sig["ort"] = _to_ort(tmp / ONNX_FILE)
        (tmp / ONNX_SIGNATURE).write_text(json.dumps(sig, indent=1) + "\n")
    return Path(path)


def _to_ort(onnx_file: Path) -> dict:
    """ONNX Runtime's own format and the operator list a reduced build needs, beside the file."""
    import subprocess
    import sys

    # "Runtime" style: the graph is stored as exported (int8 initializers stay int8; the
    # "Fixed" style may constant-fold their float casts) and the optimizations are applied when
    # the session starts
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                           str(onnx_file), "--output_dir", str(onnx_file.parent),
                           "--optimization_style", "Runtime"],
                          capture_output=True, text=True)
    ort_file = onnx_file.with_name(onnx_file.stem + ".with_runtime_opt.ort")
    config = onnx_file.with_name(onnx_file.stem + ".required_operators.with_runtime_opt.config")
    if proc.returncode != 0 or not ort_file.is_file() or not config.is_file():
        raise ExportError(f"converting {onnx_file.name} to the .ort format failed: "
                          f"{(proc.stderr or proc.stdout)[-500:]}")
    ops = [line.strip() for line in config.read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    # its header named the converter's working paths (the output's .partial folder, a temp dir)
    config.write_text(f"# Generated from {ort_file.name} (from {onnx_file.name})\n"
                      + "".join(op + "\n" for op in ops))
    return {"file": ort_file.name, "bytes": ort_file.stat().st_size,
            "required_operators": config.name, "operators": ops,
            "build": "onnxruntime build.sh --minimal_build --include_ops_by_config " + config.name}


def runtime_graph(proto):
    """The graph ONNX Runtime (CPU) runs for `proto`: as it stands after the optimizations it
    applies when it loads the file (constant folding included: the tables' padding and packing
    and the int8 kernels' float casts are folded into initializers)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return _onnx().load(so.optimized_model_filepath)


def runtime_nodes(proto) -> int:
    """The nodes ONNX Runtime runs for `proto` (`runtime_graph`)."""
    return len(runtime_graph(proto).graph.node)


def initializer_bytes(proto) -> int:
    """The bytes of `proto`'s initializers as arrays."""
    onnx = _onnx()
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def loaded_bytes(proto) -> int:
    """The bytes of the initializers ONNX Runtime holds for `proto` once loaded
    (`initializer_bytes` of `runtime_graph`): the file's, grown by what load-time folding
    widens (padded tables, int8 kernels cast to float32). Copies its GEMMs pre-pack their
    weights into are not counted."""
    return initializer_bytes(runtime_graph(proto))


def load_onnx(path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Callable:
    """An ONNX Runtime session of an export as `score(inputs: dict) -> probabilities [B]`."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ExportError("scoring an ONNX export needs onnxruntime: pip install -e '.[onnx]'") from e
    p = Path(path)
    file = p / ONNX_FILE if p.is_dir() else p
    if not file.is_file():
        raise ExportError(f"{file}: no ONNX file here (export one with afm-jax export --format onnx)")
    try:
        session = ort.InferenceSession(str(file), providers=list(providers))
    except Exception as e:   # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ExportError(f"{file}: not a loadable ONNX model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}); export it again") from e

    def score(inputs: dict) -> np.ndarray:
        return session.run(["score"], dict(inputs))[0]

    score.session = session
    return score
