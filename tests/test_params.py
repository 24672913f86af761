"""SamplingParams rejects values that would fail later or silently misbehave; device and dtype are checked."""
import pytest
import torch

from engine import SamplingParams
from engine.device import resolve_device, resolve_dtype

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"temperature": NAN}, ValueError, "temperature must be a number >= 0 and finite, got nan"),
        ({"temperature": INF}, ValueError, "temperature must be a number >= 0 and finite, got inf"),
        ({"temperature": "0.5"}, ValueError, "temperature must be a number >= 0 and finite, got '0.5'"),
        ({"temperature": None}, ValueError, "temperature must be a number >= 0 and finite, got None"),
        ({"temperature": True}, ValueError, "temperature must be a number >= 0 and finite, got True"),
        ({"top_p": NAN}, ValueError, "top_p must be a number in"),
        ({"top_p": "0.5"}, ValueError, r"top_p must be a number in \(0, 1\], got '0.5'"),
        ({"stop": "\ud800"}, ValueError, "stop is not valid Unicode: it holds a lone surrogate '\\\\ud800' at character 0"),
        ({"stop": ["ok", "a\udfff"]}, ValueError, "stop is not valid Unicode"),
        ({"stop_token_ids": (3, "a")}, ValueError, "stop_token_ids must be non-negative integers, got 'a'"),
        ({"top_k": 2.5}, ValueError, "top_k must be >= 0 and an integer"),
        ({"max_tokens": True}, ValueError, "max_tokens must be a non-negative integer, got True"),
        ({"stop_token_ids": 5}, TypeError, "stop_token_ids must be a list or tuple of token ids, got 5"),
        ({"stop_token_ids": [True]}, ValueError, "stop_token_ids must be non-negative integers"),
        ({"seed": -1}, ValueError, "seed must be None or an integer in"),
        ({"seed": "7"}, ValueError, "seed must be None or an integer in"),
        ({"seed": 2**64 - 1, "n": 2}, ValueError, r"seed \+ i"),
        ({"ignore_eos": "false"}, ValueError, "ignore_eos must be True or False, got 'false'"),  # truthy: EOS was off
    ],
)
def test_bad_sampling_params(kwargs, error, message):
    with pytest.raises(error, match=message):
        SamplingParams(**kwargs)


def test_good_sampling_params_pass():
    SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_tokens=1, stop_token_ids=[3, 4])


def test_resolve_device_defaults_to_what_torch_sees():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_names_the_cuda_index(monkeypatch):
    """torch.cuda.set_device (which LLM calls on CUDA) refuses a device without an index."""
    from torch.cuda._utils import _get_device_index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for asked in (None, "cuda", torch.device("cuda")):
        device = resolve_device(asked)
        assert device == torch.device("cuda", 1) and _get_device_index(device) == 1
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="torch sees 2 GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    "device,error,message",
    [
        ("foo", ValueError, "invalid device 'foo'; use 'cpu', 'cuda' or 'cuda:N'"),
        ("", ValueError, "invalid device ''"),
        ("mps", ValueError, "unsupported device 'mps'; this engine runs on 'cpu' or 'cuda'"),
        (torch.device("meta"), ValueError, "unsupported device 'meta'"),
        (0, TypeError, "device must be a string .* got int"),
    ],
)
def test_resolve_device_rejects(device, error, message):
    with pytest.raises(error, match=message):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_resolve_device_rejects_cuda_without_a_gpu():
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="torch sees no CUDA GPU here"):
            resolve_device(device)


def test_resolve_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype(None, cuda) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16 and resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16


@pytest.mark.parametrize(
    "dtype,error,message",
    [
        ("float64", ValueError, r"unsupported dtype 'float64'; choose one of \['bfloat16', 'float16', 'float32'\]"),
        ("fp32", ValueError, "unsupported dtype 'fp32'"),
        (torch.int8, ValueError, "unsupported dtype torch.int8; choose one of"),
        (torch.bool, ValueError, "unsupported dtype torch.bool"),
        (torch.float64, ValueError, "unsupported dtype torch.float64"),
        (32, TypeError, "dtype must be a torch.dtype or one of .* got int"),
    ],
)
def test_resolve_dtype_rejects(dtype, error, message):
    with pytest.raises(error, match=message):
        resolve_dtype(dtype, torch.device("cpu"))
