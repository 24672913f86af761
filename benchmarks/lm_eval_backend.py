"""An lm-evaluation-harness backend for the engine: `lm_eval --model s1engine`.

Importing this module registers `S1EngineLM` with lm_eval as "s1engine". lm_eval's own CLI does not import it,
so run the harness through this module, which does and then hands its arguments to lm_eval's CLI:

    python -m benchmarks.lm_eval_backend --model s1engine --model_args pretrained=DIR,think_format=s1 \\
        --tasks aime24_nofigures --include_path PATH/TO/s1/eval/lm-evaluation-harness/lm_eval/tasks \\
        --apply_chat_template --log_samples --output_path results \\
        --gen_kwargs "max_gen_toks=32768,max_tokens_thinking=auto,thinking_n_ignore=1,thinking_n_ignore_str=Wait"

or, from Python, `import benchmarks.lm_eval_backend` and `lm_eval.simple_evaluate(model="s1engine", ...)`.
s1's task configs name Hub datasets (simplescaling/aime24_nofigures, ...): they need network or a datasets
cache, and some of their graders call an OpenAI judge when PROCESSOR is set; the backend itself downloads nothing.

generate_until reads s1's gen_kwargs (as s1's fork of the harness does for vLLM) and maps them to one
`ThinkingBudget`, applied inside the engine's decode loop (no re-prefill):

    max_tokens_thinking   the cap: a number, or "auto" = the tokens left for this prompt (context - prompt,
                          or max_gen_toks when smaller) - the end delimiter and final-answer splice - a margin
                          (model_arg auto_thinking_margin, 100 as in s1)
    min_tokens_thinking   ends of thinking below this many tokens are ignored
    thinking_n_ignore     ignore the model's end of thinking this many times, splicing...
    thinking_n_ignore_str ...this string instead (default "Wait")
    final_answer_str      spliced after the end delimiter at the cap (default: model_arg, "Final Answer:",
                          as s1 splices "<|im_start|>answer\\nFinal Answer:")
    thinking_start, thinking_end, until_thinking
                          accepted for s1's scripts, but the delimiters are the think format's (model_arg
                          think_format: "s1" by default, or "r1"/"qwen3"); other values only log a warning

A budget is used when any of the *_thinking / thinking_* keys is present (as in s1's fork); the prompt gets the
format's think-start string appended, and the returned text starts with it (s1 returns
thinking_start + thinking + delimiter + answer). Also read: `until` (stop strings; they apply to the answer
only, never inside thinking, unlike s1's fork, which also stops thinking on them), `max_gen_toks` (caps the
whole continuation), `temperature`, `do_sample` (False: greedy; True without a temperature: 1.0), `top_p`,
`top_k`, `seed`, `repetition_penalty`, `presence_penalty`, `frequency_penalty`. Any other key raises,
naming it (s1's rejection_sample, temperature_thinking and scale_func_name are not supported). Requests with the same context and gen_kwargs (lm_eval's
`repeats`) run as one engine request with SamplingParams(n=k), sharing the prompt's KV.

loglikelihood / loglikelihood_rolling use `LLM.score`, 64 pairs a batch. is_greedy is computed honestly: a continuation is
greedy iff greedy decoding from its context (ignore_eos, max_tokens = its length) reproduces its tokens,
which costs one short greedy generation per request (batched); model_arg greedy_check=false skips it and
reports False.

Chat templates: when lm_eval is run with --apply_chat_template, `apply_chat_template` renders the
conversation with the tokenizer's template (ChatML when it has none), as the engine's `LLM.chat` does.
"""
import inspect
import logging
from collections import defaultdict
from dataclasses import replace

import torch

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm.auto import tqdm

from engine import LLM, SamplingParams, ThinkingBudget
from engine.conversation import chat_text
from engine.tokenizer import CHATML_TEMPLATE, get_think_format

logger = logging.getLogger(__name__)

NAME = "s1engine"
THINKING_KEYS = {"max_tokens_thinking", "min_tokens_thinking", "thinking_n_ignore", "thinking_n_ignore_str",
                 "thinking_start", "thinking_end", "until_thinking"}
PENALTY_KEYS = ("repetition_penalty", "presence_penalty", "frequency_penalty")
SAMPLING_KEYS = {"until", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k", "seed", "final_answer_str",
                 *PENALTY_KEYS}
# engine.LLM's own keyword arguments, passed through from model_args
ENGINE_ARGS = {"max_num_seqs", "block_size", "num_blocks", "max_num_batched_tokens", "enable_prefix_caching"}
SCORE_BATCH = 64  # loglikelihood pairs scored together (one progress-bar step each)
CLI_DEFAULT_DEVICE = "cuda:0"  # what lm_eval's CLI passes when --device is not given


class S1EngineLM(TemplateLM):
    """lm_eval model over engine.LLM. model_args (lm_eval passes batch_size, max_batch_size, device too):

    pretrained (alias model): HF-format model dir; default: the engine's default model
    device, dtype: as engine.LLM ("cpu"/"cuda", "float32"/"bfloat16"/"float16"); default: best for the machine.
        lm_eval's CLI passes --device (default "cuda:0"): a device in model_args wins over it, and its
        default falls back to the CPU when torch sees no GPU
    max_num_seqs, block_size, num_blocks, max_num_batched_tokens, enable_prefix_caching: engine.LLM's.
        lm_eval's batch_size / max_batch_size are accepted and ignored: the engine batches continuously
        up to max_num_seqs (64) running sequences
    think_format: "s1" (default), "r1" or "qwen3"
    max_gen_toks: default cap on generated tokens when a task sets none (256)
    final_answer_str: spliced at the thinking cap (default "Final Answer:"; "" for none)
    auto_thinking_margin: tokens left for the answer by max_tokens_thinking=auto (100)
    seed: base seed of sampled requests (each request gets the next seeds; default 1234)
    add_bos_token: tokenize with the tokenizer's special tokens (default false, as lm_eval's HF backend)
    greedy_check: compute loglikelihood's is_greedy (default true; false reports False)
    """

    def __init__(self, pretrained=None, model=None, device=None, dtype=None, batch_size=None, max_batch_size=None,
                 think_format="s1", max_gen_toks=256, final_answer_str="Final Answer:", auto_thinking_margin=100,
                 seed=1234, add_bos_token=False, greedy_check=True, **engine_args):
        super().__init__()
        del batch_size, max_batch_size  # lm_eval's batching knobs: the engine schedules continuously
        unknown = sorted(set(engine_args) - ENGINE_ARGS)
        if unknown:
            known = set(inspect.signature(S1EngineLM.__init__).parameters) - {"self", "engine_args"} | ENGINE_ARGS
            raise ValueError(f"unknown model_args {unknown} for {NAME}; known: {sorted(known)}")
        if pretrained is not None and model is not None:
            raise ValueError("give the model dir as pretrained= or model=, not both")
        path = pretrained if pretrained is not None else model
        if device == CLI_DEFAULT_DEVICE and not torch.cuda.is_available():
            logger.warning("device %s was asked for (lm_eval's default) but torch sees no GPU: running on the CPU",
                           device)
            device = "cpu"
        for name, value in engine_args.items():
            engine_args[name] = (_bool_arg(name, value) if name == "enable_prefix_caching"
                                 else _int_arg(name, value, minimum=1))
        self.think_format = get_think_format(think_format).name  # raises on an unknown format
        self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, minimum=1)
        self.auto_thinking_margin = _int_arg("auto_thinking_margin", auto_thinking_margin, minimum=0)
        self.seed = None if seed is None else _int_arg("seed", seed, minimum=0)
        self.final_answer_str = final_answer_str or None
        self.add_bos_token = _bool_arg("add_bos_token", add_bos_token)
        self.greedy_check = _bool_arg("greedy_check", greedy_check)
        self.llm = LLM(model=path, device=device, dtype=dtype, **engine_args)
        self.tokenizer = self.llm.tokenizer.hf  # TemplateLM and lm_eval's chat-template code read this
        self._device = self.llm.device
        self._path = str(path) if path is not None else "default-model"

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "S1EngineLM":
        """model_args first; lm_eval's own settings (batch_size, max_batch_size, device) only fill gaps, so that
        device= in model_args and the CLI's --device default do not collide."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "S1EngineLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ---- what lm_eval asks of a model ----

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Conditions loglikelihood of an empty context: BOS when the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.llm.max_model_len

    @property
    def tokenizer_name(self) -> str:
        return self._path.replace("/", "__")

    def chat_template(self, chat_template=False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return self.tokenizer.chat_template or CHATML_TEMPLATE

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return chat_text(self.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.llm.tokenizer.encode(string, add_special_tokens=special)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.llm.tokenizer.decode(tokens)

    # ---- generation ----

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One engine request per distinct (context, gen_kwargs), with n = how many instances share it; all of
        them submitted to one LLM.generate so the engine batches them."""
        groups: dict[tuple, list[int]] = defaultdict(list)  # key -> indices into requests, in order
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            if not isinstance(gen_kwargs, dict):
                raise ValueError(f"gen_kwargs must be a dict, got {gen_kwargs!r}")
            groups[(context, _freeze(gen_kwargs))].append(i)
        prompts, params, members, starts = [], [], [], []
        next_seed = self.seed
        for (context, _), indices in groups.items():
            prompt, sp, start = self._request(context, requests[indices[0]].args[1], len(indices))
            if next_seed is not None:
                sp = replace(sp, seed=sp.seed if sp.seed is not None else next_seed)
                next_seed += len(indices)
            prompts.append(prompt)
            params.append(sp)
            members.append(indices)
            starts.append(start)
        outputs = self.llm.generate(prompts, params, use_tqdm=not disable_tqdm) if prompts else []
        results: list[str | None] = [None] * len(requests)
        k = 0
        for indices, start in zip(members, starts):
            for i in indices:
                out = outputs[k]
                k += 1
                if out.finish_reason == "error":
                    raise RuntimeError(f"the engine failed on request {i}: {out.error}")
                results[i] = start + out.text
                self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results

    def _request(self, context: str, gen_kwargs: dict, n: int) -> tuple[list[int], SamplingParams, str]:
        """(prompt ids, SamplingParams, text to put before the output) of one context under s1's gen_kwargs."""
        kwargs = dict(gen_kwargs)
        unknown = sorted(set(kwargs) - THINKING_KEYS - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"{NAME} does not support gen_kwargs {unknown}; it reads "
                             f"{sorted(THINKING_KEYS | SAMPLING_KEYS)}")
        use_budget = any(key in THINKING_KEYS for key in kwargs)
        fmt = get_think_format(self.think_format)
        start = fmt.think_start if use_budget else ""
        prompt = self.tok_encode(context + start)
        if not prompt:
            raise ValueError("an empty context cannot be generated from")
        max_gen_toks = _int_arg("max_gen_toks", kwargs.get("max_gen_toks", self.max_gen_toks), minimum=1)
        keep = self.max_length - min(max_gen_toks, self.max_length - 1)
        if len(prompt) > keep:  # as lm_eval's HF backend: keep the end of the context, leave room to generate
            logger.warning("context of %d tokens left-truncated to %d to leave room for generation", len(prompt), keep)
            prompt = prompt[-keep:]
        max_tokens = min(max_gen_toks, self.max_length - len(prompt))
        stop = kwargs.get("until") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stop):
            raise ValueError(f"until must be a string or a list of strings, got {kwargs.get('until')!r}")
        temperature = float(kwargs.get("temperature", 0.0))
        do_sample = kwargs.get("do_sample")
        if do_sample is not None and not _bool_arg("do_sample", do_sample):
            temperature = 0.0
        elif do_sample is not None and "temperature" not in kwargs:
            temperature = 1.0
        sp = SamplingParams(
            temperature=temperature, top_p=float(kwargs.get("top_p", 1.0)),
            top_k=_int_arg("top_k", kwargs.get("top_k", 0), minimum=0),
            seed=None if kwargs.get("seed") is None else _int_arg("seed", kwargs["seed"], minimum=0),
            max_tokens=max_tokens, stop=[s for s in stop if s] or None, think_format=self.think_format, n=n,
            **{key: float(kwargs[key]) for key in PENALTY_KEYS if key in kwargs})
        if use_budget:
            sp = replace(sp, budget=self._budget(kwargs, fmt, sp, len(prompt)))
        return prompt, sp, start

    def _budget(self, kwargs: dict, fmt, sp: SamplingParams, prompt_len: int) -> ThinkingBudget:
        for key, wanted in (("thinking_start", fmt.think_start), ("thinking_end", fmt.think_end),
                            ("until_thinking", fmt.end_marker)):
            given = kwargs.get(key)
            if given is not None and not wanted.startswith(str(given)):
                logger.warning("%s=%r is ignored: think format %r delimits thinking with %r", key, given,
                               fmt.name, wanted)
        final = kwargs.get("final_answer_str", self.final_answer_str) or None
        budget = ThinkingBudget(
            min_tokens=_int_arg("min_tokens_thinking", kwargs.get("min_tokens_thinking", 0), minimum=0),
            num_ignore=_int_arg("thinking_n_ignore", kwargs.get("thinking_n_ignore", 0), minimum=0),
            ignore_str=str(kwargs.get("thinking_n_ignore_str") or "Wait"),
            final_answer_str=final)
        cap = kwargs.get("max_tokens_thinking")
        if cap == "auto":
            tokens = self.llm.budget_tokens(replace(sp, budget=budget))
            cap = sp.max_tokens - len(tokens.delimiter) - len(tokens.final_answer) - self.auto_thinking_margin
            if cap < budget.min_tokens:
                logger.warning("max_tokens_thinking=auto leaves %d tokens for a prompt of %d; thinking gets %d",
                               cap, prompt_len, budget.min_tokens)
                cap = budget.min_tokens
        elif cap is not None:
            cap = _int_arg("max_tokens_thinking", cap, minimum=0)
        return replace(budget, max_tokens=cap)  # replace() runs ThinkingBudget's checks again

    # ---- log-likelihoods ----

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, rolling: bool = False):
        """requests: ((context, continuation) or None, context ids, continuation ids) -> (sum logprob, is_greedy).
        Too long: the context is cut from the left, as lm_eval's other backends do. Rolling windows skip the
        greedy check (lm_eval drops is_greedy there) and lm_eval's cache (their string is cached whole)."""
        pairs = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("an empty continuation has no log-likelihood")
            if len(continuation) >= self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens leaves no context in "
                                 f"{self.max_length}")
            pairs.append((context[-(self.max_length - len(continuation)):], continuation))
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])  # same contexts together: the prefix cache
        logprobs: list[float | None] = [None] * len(pairs)
        with tqdm(total=len(pairs), desc="scoring", disable=disable_tqdm or None) as bar:
            for lo in range(0, len(order), SCORE_BATCH):  # each slice runs as one batch
                batch = order[lo : lo + SCORE_BATCH]
                scores = self.llm.score([list(pairs[i][0]) for i in batch], [list(pairs[i][1]) for i in batch])
                for i, score in zip(batch, scores):
                    logprobs[i] = sum(score)
                bar.update(len(batch))
        check = self.greedy_check and not rolling
        greedy = self._is_greedy(pairs, disable_tqdm) if check else [False] * len(pairs)
        results = list(zip(logprobs, greedy))
        if not rolling:
            for (key, _, _), result in zip(requests, results):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def _is_greedy(self, pairs, disable_tqdm: bool) -> list[bool]:
        """Greedy decoding from each context reproduces the continuation iff every continuation token is the
        argmax given what precedes it (the first mismatch is where greedy leaves the continuation)."""
        params = [SamplingParams(temperature=0.0, max_tokens=len(c), ignore_eos=True) for _, c in pairs]
        outs = self.llm.generate([list(ctx) for ctx, _ in pairs], params, use_tqdm=not disable_tqdm)
        return [out.token_ids == list(c) for out, (_, c) in zip(outs, pairs)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string's log-likelihood after the prefix token, in disjoint windows of at most the context."""
        results = []
        for req in tqdm(requests, desc="rolling loglikelihood", disable=disable_tqdm or None):
            (string,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 1, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True,
                                                rolling=True) if windows else []
            total = sum(logprob for logprob, _ in scores)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return results


def _freeze(value):
    """A hashable form of gen_kwargs (lists and dicts inside)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _int_arg(name: str, value, minimum: int) -> int:
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if type(number) is not int or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _bool_arg(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def main(argv: list[str] | None = None) -> None:
    """lm_eval's CLI with the s1engine model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    # Registering here as well as in the imported module would register two classes under one name.
    from benchmarks.lm_eval_backend import main as registered_main

    registered_main()
else:
    register_model(NAME)(S1EngineLM)
