"""A paged-KV decoding engine with budget forcing for test-time scaling."""
from engine.budget import ThinkingBudget
from engine.llm import LLM
from engine.outputs import Output, StreamDelta
from engine.sampling import SamplingParams

__all__ = ["LLM", "Output", "SamplingParams", "StreamDelta", "ThinkingBudget"]
