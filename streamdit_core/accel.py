"""The fast path: a StreamDiT made fast for the device it runs on, behind the velocity protocol.

:func:`accelerate` wraps a :class:`~streamdit_core.model.StreamDiT` in :class:`Accelerated`,
which streams, trains nothing and is called exactly like the model. What it changes:

- **precision**: ``bf16`` weights and activations (``fp16`` and ``fp32`` too), and optionally
  ``fp8`` matmuls (:class:`Fp8Linear`: e4m3 weights and activations with per-tensor scales,
  ``torch._scaled_mm``) in the blocks' attention and FFN projections;
- **attention kernel**: flex_attention with a block mask for the shifted (masked) windows
  instead of a dense mask (see :class:`~streamdit_core.attention.WindowSelfAttention`);
- **compilation**: ``torch.compile`` of the network (:meth:`StreamDiT.denoise`);
- **CUDA graphs**: the fixed-shape call captured once and replayed, so a call costs one launch.

Text conditioning is prepared outside the compiled or captured part, once per prompt
(:meth:`StreamDiT.condition`), padded to a fixed token count so a new prompt reuses the graph.
Every option is chosen at run time: :meth:`FastPath.auto` picks bf16 and CUDA graphs on CUDA and
plain fp32 eager on a CPU, where the same code stays correct and tested. A failed compile or
graph capture warns and falls back to eager, so a machine without Triton still streams.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import FrameText, TextEmbedding
from .attention import ATTENTION_BACKENDS
from .model import Conditioning, StreamDiT

__all__ = ["FastPath", "Accelerated", "Fp8Linear", "accelerate", "fp8_supported", "to_fp8"]

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def fp8_supported(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` has fp8 matmul units, and why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"{device.type} has no fp8 matmul units"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"compute capability {major}.{minor} < 8.9 (fp8 needs Ada or Hopper)"
    return True, ""


@dataclass(frozen=True)
class FastPath:
    """How to run a StreamDiT (see the module docstring).

    Attributes:
        dtype: ``fp32``, ``bf16`` or ``fp16``: weights and activations.
        attention: ``sdpa`` or ``flex`` for masked (shifted) windows; ``auto``: flex when
            compiled (its kernels come from the compiler), else sdpa.
        compile: ``torch.compile`` the network.
        cuda_graphs: capture the call in a CUDA graph (CUDA only).
        fp8: fp8 matmuls in the blocks' projections.
        text_tokens: text is padded to a multiple of this many tokens, so prompts of different
            lengths share a compiled kernel set and a CUDA graph.
    """

    dtype: str = "fp32"
    attention: str = "auto"
    compile: bool = False
    cuda_graphs: bool = False
    fp8: bool = False
    text_tokens: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.attention not in ("auto", *ATTENTION_BACKENDS):
            raise ValueError(f"unknown attention {self.attention!r}; choose auto, {', '.join(ATTENTION_BACKENDS)}")
        if self.text_tokens < 1:
            raise ValueError(f"text_tokens must be at least 1, got {self.text_tokens}")

    @classmethod
    def auto(cls, device: torch.device | str) -> "FastPath":
        """The default for ``device``: bf16 with CUDA graphs on CUDA (one launch per call, no
        compiler needed); fp32 eager on a CPU. Compiling is opt-in (``compile=True``): it costs
        tens of seconds before the first frame, and needs Triton on a GPU (see BENCHMARKS.md
        for what it gains)."""
        if torch.device(device).type == "cuda":
            return cls(dtype="bf16", cuda_graphs=True)
        return cls()

    @property
    def backend(self) -> str:
        """The attention backend this setting resolves to."""
        if self.attention != "auto":
            return self.attention
        return "flex" if self.compile else "sdpa"

    @property
    def label(self) -> str:
        run = "compile" if self.compile else "eager"
        if self.cuda_graphs:
            run += "+graphs"
        return f"{run}/{'fp8' if self.fp8 else self.dtype}/{self.backend}"

    def check(self, device: torch.device) -> None:
        """Raises a ValueError naming the fix when ``device`` cannot run this setting."""
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {device}; drop cuda_graphs")
        if self.fp8 and device.type == "cuda":
            ok, why = fp8_supported(device)
            if not ok:
                raise ValueError(f"fp8 matmuls are not available: {why}; drop fp8")


# --------------------------------------------------------------------------------------------
# fp8 matmuls
# --------------------------------------------------------------------------------------------

def _fp8_scale(t: Tensor) -> Tensor:
    """Per-tensor scale mapping ``t``'s largest magnitude to fp8's largest value (float32 scalar)."""
    return (t.detach().abs().amax().float() / FP8_MAX).clamp_min(1e-12)


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` whose matmul runs in fp8 (e4m3) with per-tensor scales.

    The weight is quantised once; each call scales its input by its own largest magnitude.
    Output and bias stay in the original dtype. Inputs whose row count is not a multiple of
    16 (what the fp8 kernels require) fall back to a dequantised matmul.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = _fp8_scale(w)
        self.register_buffer("weight_fp8", (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8))  # [out, in]
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.out_dtype = w.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in]`` -> ``[..., out]`` in the original dtype."""
        lead = x.shape[:-1]
        a = x.reshape(-1, self.in_features)  # [M, in]
        if a.shape[0] % 16:
            w = self.weight_fp8.to(self.out_dtype) * self.weight_scale.to(self.out_dtype)
            out = a.to(self.out_dtype) @ w.t()
        else:
            sa = _fp8_scale(a)
            a8 = (a.float() / sa).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # [M, in]
            out = torch._scaled_mm(a8, self.weight_fp8.t(), scale_a=sa, scale_b=self.weight_scale,
                                   out_dtype=self.out_dtype)  # [M, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)


def to_fp8(model: StreamDiT) -> int:
    """Replaces the blocks' attention and FFN projections by :class:`Fp8Linear` (in place);
    layers whose sizes are not multiples of 16 stay as they are. Returns the layers replaced."""
    replaced = 0
    for block in model.blocks:
        for parent in (block.attn, block.cross_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                    setattr(parent, name, Fp8Linear(child))
                    replaced += 1
    return replaced


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------

class _Graph:
    """One CUDA graph of ``fn(*tensors)`` for fixed shapes; inputs are copied into its static
    tensors before each replay and the output is copied out after."""

    def __init__(self, fn, tensors: tuple[Tensor | None, ...], pool):
        self.static = tuple(None if t is None else t.clone() for t in tensors)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: allocations, lazy caches, autotuning
            for _ in range(3):
                fn(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a decode thread may use the GPU while a new prompt shape is captured
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = fn(*self.static)

    def __call__(self, tensors: tuple[Tensor | None, ...]) -> Tensor:
        for static, t in zip(self.static, tensors):
            if t is not None and t.data_ptr() != static.data_ptr():
                static.copy_(t)
        self.graph.replay()
        return self.out.clone()


class Accelerated(nn.Module):
    """A :class:`StreamDiT` run on the fast path; ``forward(x, sigma, text) -> v`` like the model.

    Attributes:
        model: the wrapped model (converted in place to the path's dtype, fp8 layers, backend).
        path: the :class:`FastPath`.
        config: the model's config.
    """

    def __init__(self, model: StreamDiT, path: FastPath):
        super().__init__()
        device = next(model.parameters()).device
        path.check(device)
        model = model.to(DTYPES[path.dtype]).eval().requires_grad_(False)
        if path.fp8:
            to_fp8(model)
        model.set_attention(path.backend)
        self.model = model
        self.path = path
        self.config = model.config
        self._run = torch.compile(model.denoise, dynamic=False) if path.compile else model.denoise
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None
        self._compiled_ok = False
        self._cond: tuple[Any, tuple, Conditioning] | None = None  # (text, key, prepared)

    @property
    def geometry(self):
        """The wrapped model's :class:`~streamdit_core.velocity.Geometry`."""
        return self.model.geometry

    def _condition(self, text: Any, batch: int, frames: int, device, dtype) -> Conditioning:
        key = (batch, frames, str(device), dtype)
        if self._cond is not None and self._cond[0] is text and self._cond[1] == key:
            return self._cond[2]
        padded = _pad_text(text, self.path.text_tokens)
        cond = self.model.condition(padded, batch, frames, device, dtype)
        self._cond = (text, key, cond)  # holds ``text``, so its identity stays valid
        return cond

    @torch.no_grad()
    def forward(self, x: Tensor, sigma: Tensor, text: Any = None) -> Tensor:
        """x ``[B, C, F, H, W]``, sigma ``[B, F]`` -> velocity like x (in x's dtype).

        If compiling fails (no Triton or no C++ compiler on the machine), the call warns once
        and runs eagerly from then on, with the same numbers up to rounding.
        """
        self.model._check(x, sigma)
        if not self.path.compile or self._compiled_ok:
            return self._call(x, sigma, text)
        try:
            v = self._call(x, sigma, text)
        except Exception as error:
            if not _is_compile_error(error):
                raise
            log.warning("torch.compile failed (%s: %s); running eagerly", type(error).__name__, str(error)[:300])
            self.path = dataclasses.replace(self.path, compile=False, attention="sdpa" if self.path.attention == "auto" else self.path.attention)
            self.model.set_attention(self.path.backend)
            self._run = self.model.denoise
            self._graphs.clear()
            return self._call(x, sigma, text)
        self._compiled_ok = True
        return v

    def _call(self, x: Tensor, sigma: Tensor, text: Any) -> Tensor:
        dtype = self.model.x_embedder.weight.dtype
        cond = self._condition(text, x.shape[0], x.shape[2], x.device, dtype)
        sigma = sigma.to(x.device)
        if not self.path.cuda_graphs:
            return self._run(x, sigma, cond)
        tensors = (x, sigma, *cond.tensors())
        key = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)
        graph = self._graphs.get(key)
        if graph is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            run = self._run

            def call(x, sigma, context, mask, keep, pooled):
                return run(x, sigma, Conditioning(context, mask, keep, pooled))

            try:
                graph = self._graphs[key] = _Graph(call, tensors, self._pool)
            except Exception as error:  # capture refused (a sync or an allocation the graph cannot hold)
                if not self._graphs_failed(error):
                    raise
                return self._run(x, sigma, cond)
        return graph(tensors)

    def _graphs_failed(self, error: Exception) -> bool:
        """After a failed capture: warn once and run without graphs, unless the model itself is wrong."""
        if isinstance(error, (ValueError, TypeError)):
            return False
        log.warning("CUDA graph capture failed (%s: %s); running without graphs", type(error).__name__, str(error)[:300])
        self.path = dataclasses.replace(self.path, cuda_graphs=False)
        self._graphs.clear()
        torch.cuda.synchronize()
        return True


def _is_compile_error(error: Exception) -> bool:
    """Whether ``error`` came from the compiler stack rather than from the model's own checks."""
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(error, (BackendCompilerFailed, TorchDynamoException)) or "triton" in str(error).lower()


def _pad_text(text: Any, multiple: int) -> Any:
    """``text`` with its token count rounded up to a multiple of ``multiple`` (masked padding)."""
    if isinstance(text, Tensor):
        text = TextEmbedding(text)
    if isinstance(text, TextEmbedding):
        length = -(-text.tokens.shape[1] // multiple) * multiple
        return text if length == text.tokens.shape[1] else text.padded(length)
    if isinstance(text, FrameText):
        length = -(-max(t.tokens.shape[1] for t in text.texts) // multiple) * multiple
        return FrameText(tuple(t.padded(length) for t in text.texts), text.index)
    return text


def accelerate(model: StreamDiT, path: FastPath | None = None) -> Accelerated:
    """``model`` on ``path`` (default :meth:`FastPath.auto` for the model's device)."""
    if not isinstance(model, StreamDiT):
        raise TypeError(f"accelerate() takes a StreamDiT, got {type(model).__name__}")
    return Accelerated(model, path or FastPath.auto(next(model.parameters()).device))

