"""Where and in what precision the engine runs: a user's choice checked, or the default for the machine."""
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on; None means CUDA when torch sees a GPU, else the CPU. A CUDA device comes back
    with its index (the current device's when none was given)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cuda' or 'cpu', or a torch.device; got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {str(device)!r}; this engine runs on 'cpu' or 'cuda'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees no CUDA GPU here")
        if device.index is None:  # an index names it everywhere: torch.cuda.set_device refuses a bare "cuda"
            return torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The weights' dtype; None means bfloat16 on CUDA, float32 on the CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or one of {sorted(DTYPES)}; got {type(dtype).__name__}")
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}; choose one of {sorted(DTYPES)}")
    return dtype
