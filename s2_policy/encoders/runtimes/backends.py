"""Inference sessions (ONNX Runtime, OpenVINO) over an exported encoder graph, and int8 quantisation (NNCF).

The runtime packages are an optional extra (``pip install -e '.[deploy]'``): they are imported when a
session is made, and a missing one raises an ``ImportError`` that says how to install it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..precision import cpu_has_bf16, cpu_has_vnni

log = logging.getLogger(__name__)

PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
SMOOTH_QUANT_ALPHA = 0.5  # int8 graphs (quantize_int8); part of the graph cache key through GRAPH_VERSION
# (runtime, precision) pairs that are built; "auto" is resolved first (resolve_runtime_precision)
SUPPORTED = {
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


def require(package: str, runtime: str) -> ModuleType:
    """Import an optional runtime package, or raise ``ImportError`` naming the install line."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"encoder runtime {runtime!r} needs the {package!r} package: pip install -e '.[deploy]' "
            "(or set encoder.runtime=torch)"
        ) from e


def resolve_runtime_precision(runtime: str, precision: str) -> str:
    """The precision a runtime builds for ``precision`` (``auto``: bf16 for OpenVINO on CPUs with bf16
    units, else fp32); ``ValueError`` for pairs that are not built."""
    if runtime == "tensorrt":
        require("tensorrt", runtime)  # raises here: no TensorRT on CPU machines
        raise ValueError("runtime='tensorrt' is not built yet (it needs an NVIDIA GPU); use openvino on CPUs")
    if runtime not in SUPPORTED:
        raise ValueError(f"runtime={runtime!r} is not one of {['torch', *SUPPORTED, 'tensorrt']}")
    if precision == "auto":
        return "bf16" if runtime == "openvino" and cpu_has_bf16() else "fp32"
    if precision not in SUPPORTED[runtime]:
        hint = " (use runtime=openvino for bf16)" if precision == "bf16" else ""
        raise ValueError(
            f"runtime={runtime!r} builds precisions {SUPPORTED[runtime]} (or auto), not {precision!r}{hint}"
        )
    return precision


def package_version(package: str, runtime: str) -> str:
    """Version of an optional package (it decides the graph's numerics: part of the cache key)."""
    mod = require(package, runtime)
    return str(getattr(mod, "__version__", None) or mod.get_version())


class OnnxRuntimeSession:
    """ONNX Runtime CPU session: ``run(list of camera arrays) -> features``; one call at a time."""

    def __init__(self, path: Path, threads: int) -> None:
        ort = require("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops: on a shared CPU spinning threads steal the cores others need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self._lock = threading.Lock()

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            return self.session.run(None, dict(zip(self.names, arrays, strict=True)))[0]


class OpenVinoSession:
    """OpenVINO CPU compiled model (latency mode, one stream); ``hint`` is the inference precision.

    The graph on disk has a free batch size; each batch size seen is compiled once with static shapes (the
    CPU plugin then plans memory and kernels for that shape: ViT-B S2 int8, 2 cameras, 242 -> 200 ms on
    2 threads, BENCHMARKS.md). The ``max_compiled`` most recently used batch sizes stay compiled.
    """

    def __init__(self, path: Path, hint: str, threads: int, max_compiled: int = 4) -> None:
        self.core = require("openvino", "openvino").Core()
        self.model = self.core.read_model(str(path))
        self.config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.names = [p.get_any_name() for p in self.model.inputs]
        self.max_compiled = max_compiled
        self._requests: dict[int, Any] = {}  # batch size -> infer request, least recently used first
        self._lock = threading.Lock()

    def request(self, batch: int) -> Any:
        """The infer request of the model compiled for ``batch`` (compiled on first use)."""
        if batch in self._requests:
            self._requests[batch] = self._requests.pop(batch)  # most recently used last
            return self._requests[batch]
        model = self.model.clone()
        # the camera shapes are fixed when the graph is exported; only the batch dimension is free
        shapes = {x.get_any_name(): [batch, *x.get_partial_shape()[1:].to_shape()] for x in model.inputs}
        model.reshape(shapes)
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        if len(self._requests) >= self.max_compiled:
            self._requests.pop(next(iter(self._requests)))
        self._requests[batch] = request
        return request

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            request = self.request(int(arrays[0].shape[0]))
            request.infer(dict(zip(self.names, arrays, strict=True)))
            return request.get_output_tensor(0).data.copy()


def open_session(
    runtime: str, precision: str, model: Path, threads: int
) -> OnnxRuntimeSession | OpenVinoSession:
    """A session for a cached graph file (``model.onnx`` or an OpenVINO ``model.xml``)."""
    if runtime == "onnxruntime":
        return OnnxRuntimeSession(model, threads)
    # int8 graphs keep their non-quantised ops in bf16 where the CPU has it (like the torch int8 path)
    bf16 = precision == "bf16" or (precision == "int8" and cpu_has_bf16())
    if precision == "bf16" and not cpu_has_bf16():
        log.warning("precision=bf16: this CPU has no bf16 units, so OpenVINO computes in fp32 (the features "
                    "equal fp32's); precision=auto picks fp32 here without this warning")
    return OpenVinoSession(model, "bf16" if bf16 else "f32", threads)


def quantize_int8(runtime: str, onnx_path: Path, out_dir: Path, items: list[list[np.ndarray]]) -> Path:
    """NNCF post-training int8 quantisation (transformer preset) of an fp32 ONNX graph, calibrated on
    ``items`` (one list of camera arrays per call); writes the graph into ``out_dir`` and returns its path."""
    nncf = require("nncf", runtime)
    names = [f"camera{k}" for k in range(len(items[0]))]
    dataset = nncf.Dataset([dict(zip(names, item, strict=True)) for item in items])
    # function-level: nncf is the optional deploy extra (require() above gives the install hint)
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    # SmoothQuant alpha 0.5 (NNCF's transformer default: 0.95) moves less of the activations' range into the
    # weights: ViT-B S2 int8 worst-frame cosine 0.99914 -> 0.99948; the shipped MAE encoders unchanged
    # (0.9998-0.9999). 7-bit weights when the CPU lacks VNNI: no 16-bit overflow in u8 x s8 kernels.
    advanced: dict[str, Any] = {
        "smooth_quant_alphas": AdvancedSmoothQuantParameters(matmul=SMOOTH_QUANT_ALPHA)}
    if not cpu_has_vnni():
        advanced["overflow_fix"] = OverflowFix.ENABLE
    options: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER, "subset_size": len(items),
                               "advanced_parameters": AdvancedQuantizationParameters(**advanced)}
    if runtime == "openvino":
        ov = require("openvino", runtime)
        quantized = nncf.quantize(ov.Core().read_model(str(onnx_path)), dataset, **options)
        out = out_dir / "model.xml"
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        return out
    onnx = require("onnx", runtime)
    quantized = nncf.quantize(onnx.load(str(onnx_path)), dataset, **options)
    out = out_dir / "model.onnx"
    onnx.save(quantized, str(out), save_as_external_data=True, location="model.onnx.data")
    return out


__all__ = [
    "SUPPORTED",
    "OnnxRuntimeSession",
    "OpenVinoSession",
    "open_session",
    "quantize_int8",
    "require",
    "resolve_runtime_precision",
    "package_version",
]
