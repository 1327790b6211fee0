"""Real-time front end of an :class:`~s2_policy.encoders.S2Encoder`: fixed shapes, reused buffers, one call.

The encoder already puts every tile of every scale of every camera into ONE backbone call
(``encode_cameras``) using its precomputed :class:`~s2_policy.s2.TilingPlan`. What real time adds:

* camera shapes are fixed once; a frame of another shape is an error (a camera silently changing its
  resolution would otherwise change latency and features mid-run);
* one pre-allocated uint8 input buffer per camera, reused every step (page-locked on CUDA, so the host ->
  device copy is asynchronous with ``non_blocking=True``); crop/resize/normalise then run on the device;
* optional CUDA-graph capture of the whole encode step (removes per-kernel launch overhead on GPU);
* warm-up calls at construction so the first control step is not the slowest.

:func:`encode_naive` is the reference it is measured and tested against: one backbone call per camera per
scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from s2_policy.encoders import S2Encoder
from s2_policy.s2 import TilingPlan

log = logging.getLogger(__name__)


class TileBatcher:
    """Encodes one frame per camera -> ``(K, out_dim)`` float32 features, on the encoder's device.

    Args:
        encoder: a built (frozen) ``S2Encoder``; its device and precision are used as they are.
        camera_shapes: ``(H, W)`` of each camera's frames, in the policy's camera order.
        cuda_graph: capture the encode step as a CUDA graph (CUDA devices only).
        warmup: encode calls made at construction (allocator, kernels, graph capture warm-up).
    """

    def __init__(self, encoder: S2Encoder, camera_shapes: Sequence[tuple[int, int]], cuda_graph: bool = False,
                 warmup: int = 2) -> None:
        if not camera_shapes:
            raise ValueError("TileBatcher needs the (H, W) of at least one camera")
        self.encoder = encoder
        self.shapes = [(int(h), int(w)) for h, w in camera_shapes]
        self.device = encoder.device
        on_cuda = self.device.type == "cuda"
        if cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs the encoder on a CUDA device (it is on {self.device}); "
                             "set batcher.cuda_graph=false on CPU")
        # Every camera frame is brought to the encoder's S2 input size; the plan for it is fixed.
        self.plan: TilingPlan = encoder.plan
        self.n_tiles = self.plan.n_tiles * len(self.shapes)
        self._host = [torch.empty((1, h, w, 3), dtype=torch.uint8, pin_memory=on_cuda)
                      for h, w in self.shapes]
        self._host_np = [t.numpy()[0] for t in self._host]
        self._inputs = [t.to(self.device) if on_cuda else t for t in self._host]
        # the host buffers must not be overwritten while their previous async copy is still in flight
        self._copied = torch.cuda.Event() if on_cuda else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_out: torch.Tensor | None = None
        if cuda_graph:
            self._capture(max(warmup, 3))
        else:
            for _ in range(warmup):
                self._run()

    def _run(self) -> torch.Tensor:
        return self.encoder.encode_cameras(self._inputs)[0]

    def _capture(self, warmup: int) -> None:
        # warm up on a side stream (allocator, cuBLAS/cuDNN handles), as the CUDA-graph docs require
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._run()
        self._graph = graph
        log.info("tile batcher: captured a CUDA graph (%d tiles per step)", self.n_tiles)

    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """One RGB uint8 ``(H, W, 3)`` frame per camera -> features ``(K, out_dim)`` float32."""
        if len(images) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} camera frames, got {len(images)}")
        if self._copied is not None:
            self._copied.synchronize()
        for k, img in enumerate(images):
            if img.shape != self._host_np[k].shape or img.dtype != np.uint8:
                raise ValueError(f"camera {k}: frame {img.shape} {img.dtype} does not match the fixed "
                                 f"{self._host_np[k].shape} uint8 this batcher was built for")
            np.copyto(self._host_np[k], img)
            if self._inputs[k] is not self._host[k]:
                self._inputs[k].copy_(self._host[k], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        if self._graph is not None:
            self._graph.replay()
            return self._static_out.clone()
        return self._run()


def encode_naive(encoder: S2Encoder, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Reference path: one backbone call per camera per scale -> ``(K, out_dim)`` float32.

    Same preprocessing, tiling geometry, merging and pooling as ``encoder.encode_cameras``; only the batching
    differs, so the two must agree to floating-point tolerance (and the benchmark compares their latency).
    """
    pooling = encoder.config.pooling
    if pooling == "tokens":
        raise ValueError("encode_naive supports pooled features (cls, mean, cls+mean), not pooling='tokens'")
    p = encoder.num_prefix_tokens
    plan = encoder.plan
    out = []
    with torch.inference_mode():
        for img in images:
            x = encoder.preprocess(torch.from_numpy(np.ascontiguousarray(img))[None].to(encoder.device))
            per_scale = []
            for s in plan.scales:
                single = TilingPlan.build(plan.input_size, [s.size], encoder.max_split_size,
                                         antialias=plan.antialias)
                (tiles,) = single.tile(x)
                per_scale.append(encoder.backbone.forward_features(tiles.to(encoder.compute_dtype)).float())
            # the full plan's groups hold their scales' tiles back to back, in scale order
            outs = [torch.cat([per_scale[i] for i in idx]) for _, idx in plan.groups]
            if pooling == "cls":
                out.append(plan.merge_prefix(outs, 1, p)[:, 0])
                continue
            tokens = plan.merge(outs, 1, p, "bnc")
            mean = tokens[:, p:].mean(dim=1)
            out.append(mean if pooling == "mean" else torch.cat([tokens[:, 0], mean], dim=-1))
    return torch.cat(out)
