from setuptools import find_packages, setup

setup(
    name="s1-engine",
    version="0.1.0",
    description="Test-time scaling for reasoning models: a paged-KV engine with budget forcing, SFT and curation",
    python_requires=">=3.10",
    packages=find_packages(include=["engine*", "kernels*", "train*", "curate*", "benchmarks*"]),
    install_requires=[
        "torch>=2.8,<2.15",
        'triton>=3.0; platform_system == "Linux"',  # Linux wheels only; nothing imports it on CPU
        "transformers>=4.56,<6",  # from_pretrained(dtype=...): train/sft.py, tests, benchmarks
        "safetensors>=0.4",
        "numpy>=1.26",
        "gguf>=0.10",
        "tqdm>=4.66",
        "math-verify>=0.9",  # answer equivalence for grading
        "champ-dataset>=1.0",  # 270 competition problems with answers: a real eval set and curation pool
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.2.1", "pytest-benchmark>=4", "accelerate>=1.0", "matplotlib>=3.8", "lm-eval[api]>=0.4", "openai>=1.40"],
        "gpu": ["flash-attn>=2.6"],
    },
)
