"""SiLU-and-multiply: the gated MLP's activation, silu(gate) * up, from the fused gate_up projection."""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr):
    row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)  # int64: tokens x 2 x MLP width can pass 2^31
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + INTERMEDIATE + cols, mask=mask, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)  # rounded like torch's F.silu before the multiply
    tl.store(out_ptr + row * stride_out + cols, act * up, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> silu(gate) * up, [T, I]."""
    num_tokens, intermediate = x.shape[0], x.shape[1] // 2
    if x.stride(-1) != 1:
        raise ValueError("silu_and_mul needs rows with contiguous elements")
    out = torch.empty(num_tokens, intermediate, dtype=x.dtype, device=x.device)
    if num_tokens:
        block = min(BLOCK, triton.next_power_of_2(intermediate))
        _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, block))](
            x, out, x.stride(0), out.stride(0), INTERMEDIATE=intermediate, BLOCK=block)
    return out
