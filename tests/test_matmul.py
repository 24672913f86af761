"""engine.matmul: half-precision products of 16+ rows and columns are taken in fp32 on a CPU slow at them."""
import pytest
import torch

from engine import matmul


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_products_from_16_rows_and_columns_are_taken_in_fp32_where_half_is_slow(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    w = randn(300, 64).t()  # a view of the [out, in] tensor, as the model holds its projections: 2 tiles
    head = randn(1000, 64)  # 4 tiles, the last partial
    seen = []  # the operand dtypes each product is taken in: equal values alone cannot tell (bf16 often agrees)
    for name in ("mm", "addmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, real=real: seen.append(args[-1].dtype) or real(*args))
    for slow in (frozenset({dtype}), frozenset()):
        monkeypatch.setattr(matmul, "SLOW_HALF", slow)
        for rows in (1, 15, 16, 40):
            in_fp32 = bool(slow) and rows >= 16
            a, c, x, bias = randn(rows, 64), randn(rows, 300), randn(rows, 64), randn(300)
            expected = {
                "mm": (a.float() @ w.float()).to(dtype) if in_fp32 else a @ w,
                "addmm": torch.addmm(c.float(), a.float(), w.float()).to(dtype) if in_fp32 else torch.addmm(c, a, w),
                "bias": torch.addmm(bias.float(), a.float(), w.float()).to(dtype) if in_fp32 else torch.addmm(bias, a, w),
                "head": (head.float() @ x.float().t()).to(dtype) if in_fp32 else head @ x.t(),  # 16+ columns
            }
            seen.clear()
            # in fp32 the weight is cast a tile at a time: each tile's product may round alike or a bit apart
            same = torch.testing.assert_close if in_fp32 else lambda x, y: torch.equal(x, y) or pytest.fail("not equal")
            same(matmul.mm(a, w), expected["mm"])
            same(matmul.addmm(c, a, w), expected["addmm"])
            same(matmul.addmm(bias, a, w), expected["bias"])  # a bias: one row for every row
            same(matmul.mm(head, x.t()), expected["head"])
            assert seen and set(seen) == {torch.float32 if in_fp32 else dtype}
            before = c.clone()
            assert matmul.addmm_(c, a, w) is c, "in place"
            same(c, expected["addmm"])
            assert not torch.equal(c, before)
            for out in (matmul.mm(a, w), matmul.addmm(c, a, w)):
                assert out.dtype == dtype and out.shape == (rows, 300) and out.is_contiguous()


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
