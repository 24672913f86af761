"""The command-line flags that build an LLM, shared by `engine.generate` and `engine.serve`."""
import argparse

from engine.device import DTYPES
from engine.llm import LLM
from kernels.ops import KERNEL_CHOICES


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", help="HF-format model dir (default: SmolLM2-135M-Instruct from its PyPI wheel)")
    g.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when a GPU is seen)")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: bfloat16 on CUDA; float32 on the CPU, whose greedy tokens equal transformers' "
                        "(half precision decodes faster there, prefills near its speed)")
    g.add_argument("--kernels", default="auto", choices=KERNEL_CHOICES,
                   help="auto: Triton kernels on CUDA, their torch references elsewhere")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture decode steps as CUDA graphs (default: on with CUDA and the Triton kernels)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of the GPU's memory for weights, activations and the KV pool")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together at most")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tokens in one forward at most")


def llm_from_args(args: argparse.Namespace) -> LLM:
    """Bad values raise ValueError or TypeError naming the flag's parameter; bad model dirs OSError/ValueError."""
    return LLM(model=args.model, device=args.device, dtype=args.dtype, kernels=args.kernels,
               cuda_graphs=args.cuda_graphs, gpu_memory_utilization=args.gpu_memory_utilization,
               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
