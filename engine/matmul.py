"""The model's matrix products. On a CPU without half-precision matrix instructions (bf16: AVX512-BF16 or
AMX; fp16: AMX-FP16) torch multiplies bf16/fp16 matrices about a row at a time: a 256-row bf16 product
of a 576 x 3072 weight took 77 ms on the project's AVX2 box against 10 in fp32. There a product whose
output has 16+ rows and 16+ columns is taken in fp32, its operands cast for it (the cast costs less than
the product saves from 16 rows up; fewer rows stream the half-precision weights faster as they are)."""
import torch

UPCAST_FROM = 16  # rows and columns out


def _slow_half_dtypes() -> frozenset[torch.dtype]:
    cpu = torch.cpu
    has = lambda name: bool(getattr(cpu, name, lambda: False)())  # noqa: E731  (private in torch 2.x)
    slow = set()
    if not (has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")):
        slow.add(torch.bfloat16)
    if not has("_is_amx_fp16_supported"):
        slow.add(torch.float16)
    return frozenset(slow)


SLOW_HALF = _slow_half_dtypes()


def _in_fp32(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype in SLOW_HALF and a.is_cpu and min(a.shape[0], b.shape[1]) >= UPCAST_FROM


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b."""
    return torch.mm(a.float(), b.float()).to(a.dtype) if _in_fp32(a, b) else torch.mm(a, b)


def addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b (c broadcast as torch.addmm's)."""
    return torch.addmm(c.float(), a.float(), b.float()).to(a.dtype) if _in_fp32(a, b) else torch.addmm(c, a, b)


def addmm_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c += a @ b, in place."""
    return c.copy_(torch.addmm(c.float(), a.float(), b.float())) if _in_fp32(a, b) else c.addmm_(a, b)
