"""Converts the MediaPipe face-mesh TFLite model to ONNX, so it runs batched in ONNX Runtime (CPU or CUDA).

Covers the operators that model uses (CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD, DEQUANTIZE of
float16 weights); anything else is refused. The graph takes NHWC float32 (N, H, W, 3) in [0, 1], works in NCHW
inside, and returns each TFLite output flattened to (N, -1) under its TFLite name. Equality with OpenCV's own
TFLite importer is checked by tests/scorer/test_engine.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

_OPS = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_SAME, _VALID = tflite.Padding.SAME, tflite.Padding.VALID


class ConversionError(ValueError):
    """The TFLite model uses something this converter does not handle."""


def _options(op, cls):
    table = op.BuiltinOptions()
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    if opts.FusedActivationFunction() != tflite.ActivationFunctionType.NONE:
        raise ConversionError("fused activations are not supported")
    return opts


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (the extra pixel goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def convert(path: str | Path) -> onnx.ModelProto:
    """Returns the ONNX model equivalent to the TFLite file at `path` (single subgraph, static shapes)."""
    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError("only single-subgraph models are supported")
    g = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]

    def name(i: int) -> str:
        return g.Tensors(i).Name().decode()

    def shape(i: int) -> list[int]:
        return [int(s) for s in g.Tensors(i).ShapeAsNumpy()]

    def const(i: int) -> np.ndarray | None:
        t = g.Tensors(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or data.size == 0:
            return consts.get(i)
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                 tflite.TensorType.INT32: np.int32}.get(t.Type())
        if dtype is None:
            raise ConversionError(f"tensor {name(i)} has unsupported type {t.Type()}")
        return data.view(dtype).reshape(shape(i))

    consts: dict[int, np.ndarray] = {}
    nodes: list = []
    inits: list = []

    def init(array: np.ndarray, label: str) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), label))
        return label

    (inp,) = [g.Inputs(i) for i in range(g.InputsLength())]
    n_h_w_c = shape(inp)
    nodes.append(helper.make_node("Transpose", ["input"], [name(inp)], perm=[0, 3, 1, 2]))
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        code = codes[op.OpcodeIndex()]
        kind = _OPS.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        if kind == "DEQUANTIZE":  # float16 weights: folded into float32 initialisers
            consts[out] = const(ins[0]).astype(np.float32)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = kind == "DEPTHWISE_CONV_2D"
            o = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise ConversionError("dilated convolutions are not supported")
            w = const(ins[1])  # conv: (O, H, W, I); depthwise: (1, H, W, C * multiplier)
            if depthwise:
                if o.DepthMultiplier() != 1:
                    raise ConversionError("depth multipliers other than 1 are not supported")
                weight, group = w.transpose(3, 0, 1, 2), w.shape[3]
            else:
                weight, group = w.transpose(0, 3, 1, 2), 1
            size_h, size_w = shape(ins[0])[1:3]
            kh, kw = weight.shape[2:]
            if o.Padding() == _SAME:
                (t, b), (left, r) = _same_pads(size_h, kh, o.StrideH()), _same_pads(size_w, kw, o.StrideW())
            else:
                t = b = left = r = 0
            args = [name(ins[0]), init(weight, f"{name(out)}/W")]
            if len(ins) > 2 and ins[2] >= 0:
                args.append(init(const(ins[2]).astype(np.float32), f"{name(out)}/B"))
            nodes.append(helper.make_node("Conv", args, [name(out)], kernel_shape=[kh, kw], group=group,
                                          strides=[o.StrideH(), o.StrideW()], pads=[t, left, b, r]))
        elif kind == "PRELU":
            alpha = const(ins[1]).reshape(-1, 1, 1)  # (1, 1, C) -> (C, 1, 1), broadcasting over NCHW
            nodes.append(helper.make_node("PRelu", [name(ins[0]), init(alpha, f"{name(out)}/alpha")], [name(out)]))
        elif kind == "ADD":
            _options(op, tflite.AddOptions)
            nodes.append(helper.make_node("Add", [name(ins[0]), name(ins[1])], [name(out)]))
        elif kind == "MAX_POOL_2D":
            o = _options(op, tflite.Pool2DOptions)
            size_h, size_w = shape(ins[0])[1:3]
            kh, kw = o.FilterHeight(), o.FilterWidth()
            if o.Padding() == _SAME:
                (t, b), (left, r) = _same_pads(size_h, kh, o.StrideH()), _same_pads(size_w, kw, o.StrideW())
            else:
                t = b = left = r = 0
            nodes.append(helper.make_node("MaxPool", [name(ins[0])], [name(out)], kernel_shape=[kh, kw],
                                          strides=[o.StrideH(), o.StrideW()], pads=[t, left, b, r]))
        elif kind == "PAD":
            p = const(ins[1]).astype(np.int64)  # NHWC rows of (before, after)
            order = [0, 3, 1, 2]
            pads = np.array([p[d, 0] for d in order] + [p[d, 1] for d in order], np.int64)
            nodes.append(helper.make_node("Pad", [name(ins[0]), init(pads, f"{name(out)}/pads")], [name(out)]))
        else:
            raise ConversionError(f"operator {kind} is not supported")
    outputs = []
    for i in range(g.OutputsLength()):
        t = g.Outputs(i)
        label = name(t)
        nodes.append(helper.make_node("Transpose", [label], [f"{label}:nhwc"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Flatten", [f"{label}:nhwc"], [f"{label}:out"], axis=1))
        outputs.append(helper.make_tensor_value_info(f"{label}:out", TensorProto.FLOAT,
                                                     ["N", int(np.prod(shape(t)[1:]))]))
    graph = helper.make_graph(
        nodes, "face_mesh", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *n_h_w_c[1:]])],
        outputs, initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="interfacegan-scorer-tflite_onnx")
    onnx_model.ir_version = 9
    onnx.checker.check_model(onnx_model)
    return onnx_model
