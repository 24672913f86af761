"""The one interface the engine calls for attention, norms, rotary, the activation and sampling.

TorchOps is the engine's CPU-tuned plain-torch path; TritonOps runs this package's kernels. The model
never asks which device it is on: the runner picks the ops once (select_ops) and builds the attention
metadata that they read (`flat_metadata`: per-batch tensors instead of the torch path's decode groups).
"""
import os

import torch
import torch.nn.functional as F

from engine.attention import AttentionMetadata, paged_attention
from engine.matmul import addmm, mm
from kernels import reference

KERNEL_CHOICES = ("auto", "triton", "torch")


class TorchOps:
    name = "torch"
    flat_metadata = False

    def attention(self, q: torch.Tensor, kv: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return paged_attention(q, kv, kv_cache, meta)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, weight.shape, weight, eps)

    def proj_add_norm(self, x, a, proj, norm_weight, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + a @ proj, rms_norm of it): addmm folds the residual add into the matmul on CPU."""
        x = addmm(x, a, proj)
        return x, F.rms_norm(x, norm_weight.shape, norm_weight, eps)

    rotary_ = staticmethod(reference.rotary_)
    silu_and_mul = staticmethod(reference.silu_and_mul)
    sample = staticmethod(reference.sample)


class TritonOps:
    name = "triton"
    flat_metadata = True

    def __init__(self):
        from kernels import activation, decode_attention, extend_attention, rms_norm, rotary, sample, store_kv

        self._store_kv, self._decode = store_kv.store_kv, decode_attention.decode_attention
        self._extend, self._norm, self._add_norm = extend_attention.extend_attention, rms_norm.rms_norm, rms_norm.add_rms_norm
        self.rotary_, self.silu_and_mul, self.sample = rotary.rotary_, activation.silu_and_mul, sample.sample

    def attention(self, q, kv, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        self._store_kv(kv, kv_cache, meta.slot_mapping)
        if meta.max_query_len == 1:
            return self._decode(q, kv_cache, meta.block_tables, meta.context_lens_tensor)
        return self._extend(q, kv_cache, meta.block_tables, meta.cu_seqlens_q_tensor, meta.context_lens_tensor,
                            meta.max_query_len)

    def rms_norm(self, x, weight, eps: float) -> torch.Tensor:
        return self._norm(x, weight, eps)

    def proj_add_norm(self, x, a, proj, norm_weight, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        normed, summed = self._add_norm(mm(a, proj), x, norm_weight, eps)
        return summed, normed


Ops = TorchOps | TritonOps


def select_ops(kernels: str, device: torch.device) -> Ops:
    """"auto": Triton on CUDA (when triton imports), the torch path elsewhere; "triton" on the CPU runs
    under the Triton interpreter, which TRITON_INTERPRET=1 must enable before triton is first used."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    if kernels == "torch":
        return TorchOps()
    if kernels == "auto":
        if device.type != "cuda":
            return TorchOps()
        try:
            return TritonOps()
        except ImportError:
            return TorchOps()
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("kernels='triton' on the CPU runs only under the Triton interpreter: set TRITON_INTERPRET=1 "
                         "before starting Python, or use kernels='torch'")
    return TritonOps()
