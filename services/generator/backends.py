"""Execution settings and backends: device and thread choice, fp16, CUDA graphs, ONNX Runtime."""

from __future__ import annotations

import io
import logging
import threading
import warnings

import numpy as np
import torch

from .models.base import GeneratorModel

log = logging.getLogger(__name__)

_configured = threading.Lock()
_threads_set = False

#: Largest |onnxruntime - torch| difference accepted on [-1, 1] images (float32); ~1/40 of a uint8 level.
ONNX_TOLERANCE = 1e-4


def resolve_device(setting: str) -> torch.device:
    """"auto" -> cuda:0 when a GPU is visible, else cpu; otherwise the named device (checked)."""
    if setting in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} requested but CUDA is not available; use --device cpu or auto")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """"auto" -> float16 on CUDA, float32 on CPU (CPU half precision is slower, not faster)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision {precision!r}: accepted auto, float32, float16")
    return torch.float16 if precision == "float16" and device.type == "cuda" else torch.float32


def configure_threads(intra_op: int, inter_op: int = 1) -> tuple[int, int]:
    """Sets torch's intra-op and inter-op thread counts once per process; returns what is in effect.

    intra_op <= 0 leaves torch's default. Inter-op threads can only be set before torch runs any
    parallel work, so later calls only change intra-op threads.
    """
    global _threads_set
    with _configured:
        if intra_op > 0:
            torch.set_num_threads(intra_op)
        if not _threads_set and inter_op > 0:
            try:
                torch.set_num_interop_threads(inter_op)
            except RuntimeError:  # parallel work already ran in this process
                pass
            _threads_set = True
    return torch.get_num_threads(), torch.get_num_interop_threads()


class _Render(torch.nn.Module):
    """The synthesis half as a plain module (what ONNX export and CUDA graphs run)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.render(x)


def export_onnx(model: GeneratorModel, path: str | None = None, opset: int = 17) -> bytes:
    """Exports the model's synthesis network (float32, dynamic batch) to ONNX; returns the bytes."""
    net = model.net
    shape = net.latent_shapes[net.synthesis_space]
    example = torch.zeros(2, *shape, device=model.device, dtype=model.dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about tracing constants
        torch.onnx.export(_Render(net).eval(), (example,), buf, input_names=["input"], output_names=["image"],
                          dynamic_axes={"input": {0: "batch"}, "image": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    data = buf.getvalue()
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


def attach_onnx(model: GeneratorModel, threads: int = 1) -> str:
    """Runs the model's synthesis through ONNX Runtime (CUDA provider when present); returns the provider."""
    import onnxruntime as ort

    data = export_onnx(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if model.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": model.device.index or 0}))
    session = ort.InferenceSession(data, options, providers=providers)
    provider = session.get_providers()[0]
    in_dtype = np.float16 if model.dtype == torch.float16 else np.float32

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"input": x.detach().cpu().numpy().astype(in_dtype, copy=False)})[0]
        return torch.from_numpy(out)

    model._synthesis_fn = run
    model.backend = "onnxruntime"
    model.onnx_provider = provider
    log.info("onnxruntime backend", extra={"model": model.name, "provider": provider})
    return provider


def attach_cuda_graphs(model: GeneratorModel, sizes: tuple[int, ...]) -> list[int]:
    """Captures the synthesis network as CUDA graphs for the given batch sizes (CUDA only).

    A batch of n runs the smallest captured size >= n (inputs zero-padded); larger batches run eagerly.
    Returns the captured sizes.
    """
    if model.device.type != "cuda" or not sizes:
        return []
    net = model.net
    shape = net.latent_shapes[net.synthesis_space]
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
    stream = torch.cuda.Stream(model.device)
    with torch.inference_mode():
        for size in sorted(set(sizes)):
            static_in = torch.zeros(size, *shape, device=model.device, dtype=model.dtype)
            stream.wait_stream(torch.cuda.current_stream(model.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up kernels and the allocator outside the capture
                    net.render(static_in)
            torch.cuda.current_stream(model.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = net.render(static_in)
            graphs[size] = (graph, static_in, static_out)
    captured = sorted(graphs)
    lock = threading.Lock()  # static buffers: one replay at a time

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = next((s for s in captured if s >= n), None)
        if size is None:
            return net.render(x)
        graph, static_in, static_out = graphs[size]
        with lock:
            static_in.zero_()
            static_in[:n].copy_(x)
            graph.replay()
            return static_out[:n].clone()

    model._synthesis_fn = run
    model.cuda_graph_sizes = captured
    return captured
