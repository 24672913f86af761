"""The model's matrix products. On a CPU without half-precision matrix instructions (bf16: AVX512-BF16 or
AMX; fp16: AMX-FP16) torch multiplies bf16/fp16 matrices about a row at a time: a 256-row bf16 product
of a 576 x 3072 weight took 77 ms on the project's AVX2 box against 10 in fp32. There a product whose
output has 16+ rows and 16+ columns is taken in fp32, its operands cast for it (the cast costs less than
the product saves from 16 rows up; fewer rows stream the half-precision weights faster as they are). The
larger operand, mostly the weight, is cast TILE rows at a time into one buffer that stays in cache: cast whole,
the 49,152-row output head took 98 ms at 16 rows against 29 in fp32; in tiles it takes 25."""
import torch

UPCAST_FROM = 16  # rows and columns out
TILE = 256  # weight rows (or columns) cast at a time: 256 x 576 fp32, 0.6 MB, for the default model


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


def _in_fp32_tiles(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """(c +) a @ b in fp32, in a's dtype out; the larger operand (the weight, or a long prefill's
    activations) cast a tile at a time, the other whole."""
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    c32 = None if c is None else c.float().expand(out.shape)
    if a.numel() >= b.numel():  # a is larger (the vocab-major output head; a long prefill): its rows
        b32, buf = b.float(), torch.empty((min(TILE, a.shape[0]), a.shape[1]), device=a.device)
        for lo in range(0, a.shape[0], TILE):
            hi = min(lo + TILE, a.shape[0])
            w = buf[: hi - lo].copy_(a[lo:hi])
            out[lo:hi] = torch.mm(w, b32) if c32 is None else torch.addmm(c32[lo:hi], w, b32)
    else:  # b is larger (a projection, [in, out], a view of [out, in]): its columns
        a32, buf = a.float(), torch.empty((min(TILE, b.shape[1]), b.shape[0]), device=a.device)
        for lo in range(0, b.shape[1], TILE):
            hi = min(lo + TILE, b.shape[1])
            w = buf[: hi - lo].copy_(b[:, lo:hi].t()).t()
            out[:, lo:hi] = torch.mm(a32, w) if c32 is None else torch.addmm(c32[:, lo:hi], a32, w)
    return out


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b."""
    return _in_fp32_tiles(a, b) if _in_fp32(a, b) else torch.mm(a, b)


def addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b (c broadcast as torch.addmm's)."""
    return _in_fp32_tiles(a, b, c) if _in_fp32(a, b) else torch.addmm(c, a, b)


def addmm_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c += a @ b, in place."""
    return c.copy_(_in_fp32_tiles(a, b, c)) if _in_fp32(a, b) else c.addmm_(a, b)
