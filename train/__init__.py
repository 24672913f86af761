"""Lean FSDP2 SFT loop: torchrun -m train.sft (see train/sft.py)."""
