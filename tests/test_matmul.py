"""engine.matmul: half-precision products of 16+ rows and columns are taken in fp32 on a CPU slow at them."""
import pytest
import torch

from engine import matmul


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_products_from_16_rows_and_columns_are_taken_in_fp32_where_half_is_slow(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    w = randn(96, 64).t()  # a view of the [out, in] tensor, as the model holds its projections
    head = randn(1000, 64)
    seen = []  # the operand dtypes each product is taken in: equal values alone cannot tell (bf16 often agrees)
    for name in ("mm", "addmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, real=real: seen.append(args[-1].dtype) or real(*args))
    for slow in (frozenset({dtype}), frozenset()):
        monkeypatch.setattr(matmul, "SLOW_HALF", slow)
        for rows in (1, 15, 16, 40):
            in_fp32 = bool(slow) and rows >= 16
            a, c, x = randn(rows, 64), randn(rows, 96), randn(rows, 64)
            expected = {
                "mm": (a.float() @ w.float()).to(dtype) if in_fp32 else a @ w,
                "addmm": torch.addmm(c.float(), a.float(), w.float()).to(dtype) if in_fp32 else torch.addmm(c, a, w),
                "head": (head.float() @ x.float().t()).to(dtype) if in_fp32 else head @ x.t(),  # 16+ columns
            }
            seen.clear()
            assert torch.equal(matmul.mm(a, w), expected["mm"])
            assert torch.equal(matmul.addmm(c, a, w), expected["addmm"])
            assert torch.equal(matmul.mm(head, x.t()), expected["head"])
            assert seen == [torch.float32 if in_fp32 else dtype] * 3
            before = c.clone()
            assert matmul.addmm_(c, a, w) is c and torch.equal(c, expected["addmm"]), "in place, as c + a @ w"
            assert not torch.equal(c, before)
            for out in (matmul.mm(a, w), matmul.addmm(c, a, w)):
                assert out.dtype == dtype and out.shape == (rows, 96)


def test_slow_half_dtypes_follow_the_cpus_instructions(monkeypatch):
    flags = {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False, "_is_amx_fp16_supported": False}
    for name in flags:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: flags[name], raising=False)
    assert matmul._slow_half_dtypes() == {torch.bfloat16, torch.float16}  # AVX2 only: the project's box
    flags["_is_avx512_bf16_supported"] = True
    assert matmul._slow_half_dtypes() == {torch.float16}
    flags.update(_is_avx512_bf16_supported=False, _is_amx_tile_supported=True, _is_amx_fp16_supported=True)
    assert matmul._slow_half_dtypes() == set()
    monkeypatch.delattr(torch.cpu, "_is_amx_fp16_supported")  # a torch without the probe: taken as slow
    assert matmul._slow_half_dtypes() == {torch.float16}
    assert torch.float32 not in matmul.SLOW_HALF


def test_the_model_takes_its_products_through_it(make_model, monkeypatch):
    """A bf16 prefill of 20 tokens takes every projection in fp32 where bf16 is slow (4 a layer: qkv, o_proj,
    gate_up, down); a decode step's single rows take none."""
    from engine import LLM, SamplingParams

    monkeypatch.setattr(matmul, "SLOW_HALF", frozenset({torch.bfloat16}))
    calls = []
    real = matmul._in_fp32
    monkeypatch.setattr(matmul, "_in_fp32", lambda a, b: calls.append(real(a, b)) or calls[-1])
    llm = LLM(model=make_model("llama"), dtype="bfloat16")
    layers = llm.config.num_hidden_layers
    calls.clear()
    llm.generate(list(range(5, 25)), SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
    prefill, decode = calls[: 4 * layers + 1], calls[4 * layers + 1 :]
    assert prefill == [True] * 4 * layers + [False]  # the head: one row's logits
    assert decode == [False] * (4 * layers + 1)
