"""LLM: the offline API, a thin facade over the engine core: validate and tokenize, add requests, step
until they finish, hand back Outputs (or stream deltas).

Threads may share one LLM: each step, submission, abort and read of a request's state holds `LLM.lock`, so
their calls interleave a step at a time (each step advances every thread's requests, batched together)."""
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from jinja2 import TemplateError
from tqdm.auto import tqdm

from engine.budget import BudgetState, BudgetTokens, ThinkingBudget
from engine.config import ModelConfig
from engine.conversation import prompt_ids
from engine.core import EngineCore
from engine.device import resolve_device, resolve_dtype
from engine.model import load_model
from engine.outputs import Output, OutputStream, StreamDelta, error_output, make_output
from engine.request import Request
from engine.runner import ModelRunner, kv_pool_blocks, warm_up_blocks
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from engine.text import check_unicode
from engine.tokenizer import Tokenizer, get_think_format
from engine.weights import default_model_dir

Prompt = str | list[int]
CPU_KV_CACHE_BYTES = 2 << 30


class LLM:
    def __init__(
        self,
        model: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        enable_prefix_caching: bool = True,
        kernels: str = "auto",
        gpu_memory_utilization: float = 0.9,
        cuda_graphs: bool | None = None,
    ):
        self.lock = threading.RLock()  # held across every change to the engine's state (module docstring)
        sizes = {"block_size": block_size, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
        if num_blocks is not None:
            sizes["num_blocks"] = num_blocks
        for name, value in sizes.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)):
            raise TypeError(f"gpu_memory_utilization must be a number in (0, 1], got {gpu_memory_utilization!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be None (on where possible), True or False, got {cuda_graphs!r}")
        self.device = resolve_device(device)
        if self.device.type == "cuda":  # Triton launches and graph capture use this thread's current device
            torch.cuda.set_device(self.device)
        self.dtype = resolve_dtype(dtype, self.device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {str(self.device)!r}")
        path = self.model_dir = default_model_dir() if model is None else Path(model)
        self.config = ModelConfig.from_dir(path)
        self.tokenizer = Tokenizer(path, self.config.eos_token_ids)
        model_module = load_model(path, self.config, self.device, self.dtype)
        vocab_size = min(self.tokenizer.vocab_size, self.config.vocab_size)
        if num_blocks is not None:
            runner = ModelRunner(model_module, self.config, num_blocks, block_size, kernels)
        elif self.device.type == "cuda":  # sized from the memory left after the largest step
            runner = ModelRunner(model_module, self.config, warm_up_blocks(max_num_batched_tokens, max_num_seqs, block_size),
                                 block_size, kernels)
            runner.allocate_kv_cache(self._gpu_num_blocks(runner, max_num_batched_tokens, max_num_seqs, vocab_size,
                                                          gpu_memory_utilization))
        else:
            runner = ModelRunner(model_module, self.config, self._cpu_num_blocks(block_size, max_num_seqs), block_size, kernels)
        self.max_model_len = min(self.config.max_position_embeddings, runner.num_blocks * block_size)
        if cuda_graphs or (cuda_graphs is None and self.device.type == "cuda" and runner.ops.flat_metadata):
            runner.capture_decode_graphs(max_num_seqs, self.max_model_len)
        self.core = EngineCore(runner, self.tokenizer, vocab_size, self.max_model_len, max_num_seqs,
                               max_num_batched_tokens, enable_prefix_caching)
        self._next_id = 0
        self._seed_source = random.Random()  # unseeded requests draw here, never from torch's global RNG
        self._budget_tokens: dict[tuple, BudgetTokens] = {}

    def _useful_blocks(self, block_size: int, max_num_seqs: int) -> int:
        """More blocks than max_num_seqs full-length sequences hold would never be used."""
        return max_num_seqs * -(-self.config.max_position_embeddings // block_size)

    def _cpu_num_blocks(self, block_size: int, max_num_seqs: int) -> int:
        block_bytes = ModelRunner.kv_bytes_per_block(self.config, block_size, self.dtype)
        return max(1, min(CPU_KV_CACHE_BYTES // block_bytes, self._useful_blocks(block_size, max_num_seqs)))

    def _gpu_num_blocks(self, runner: ModelRunner, num_tokens: int, max_num_seqs: int, vocab_size: int,
                        utilization: float) -> int:
        """Run the largest step once, then fit the pool in what `utilization` of the GPU leaves."""
        torch.cuda.reset_peak_memory_stats(self.device)
        runner.warm_up(num_tokens, max_num_seqs, vocab_size)
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        block_bytes = ModelRunner.kv_bytes_per_block(self.config, runner.block_size, self.dtype)
        warm_up_pool = runner.num_blocks * block_bytes  # freed before the real pool is taken
        blocks = kv_pool_blocks(total, free, torch.cuda.memory_reserved(self.device),
                                torch.cuda.max_memory_allocated(self.device) - warm_up_pool, utilization, block_bytes)
        if blocks < 1:
            raise ValueError(f"no room for a KV cache: the weights and a {num_tokens}-token step use "
                             f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB of the "
                             f"{utilization:.0%} of {total / 2**30:.1f} GiB allowed; lower max_num_batched_tokens "
                             "or raise gpu_memory_utilization")
        return min(blocks, self._useful_blocks(runner.block_size, max_num_seqs))

    # ---- requests ----

    def add_request(self, prompt: Prompt, params: SamplingParams) -> Request:
        """Validate, tokenize and queue one request; bad input raises ValueError/TypeError and leaves the
        engine untouched."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        return self._submit(self._checked_prompt_ids(prompt, params), params,
                            [params.budget] if params.budget is not None else [], None)

    def add_sweep(self, prompt: Prompt, params: SamplingParams, budgets: list[ThinkingBudget]) -> Request:
        """Queue one prompt under every budget setting (see `sweep`); `outputs(request)` gives them in order."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if params.n != 1:
            raise ValueError(f"sweep runs one sample per setting; got n={params.n}")
        if not isinstance(budgets, list) or not budgets or not all(isinstance(b, ThinkingBudget) for b in budgets):
            raise TypeError("budgets must be a non-empty list of ThinkingBudget (or one such list per prompt)")
        return self._submit(self._checked_prompt_ids(prompt, params), params, list(budgets), list(budgets))

    def _checked_prompt_ids(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        token_ids = self._prompt_ids(prompt)
        if params.max_tokens == 0:  # only scores the prompt: it may fill the context
            if len(token_ids) > self.max_model_len:
                raise ValueError(f"prompt has {len(token_ids)} tokens; the context holds {self.max_model_len}")
        elif len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens; the context holds {self.max_model_len} "
                "(and at least one must be left to generate)"
            )
        return token_ids

    def _submit(self, token_ids: list[int], params: SamplingParams, budgets: list[ThinkingBudget],
                sweep: list[ThinkingBudget] | None, prompt_logprobs_from: int = 1) -> Request:
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and k > self.config.vocab_size:
                raise ValueError(f"{name}={k} is more than the vocabulary's {self.config.vocab_size} tokens")
        for name, ids in (("logit_bias", params.logit_bias or {}), ("stop_token_ids", params.stop_token_ids)):
            outside = sorted(t for t in ids if t >= self.config.vocab_size)
            if outside:
                raise ValueError(f"{name} token ids {outside[:5]} are outside the vocabulary [0, {self.config.vocab_size})")
        with self.lock:
            return self._queue(token_ids, params, budgets, sweep, prompt_logprobs_from)

    def _queue(self, token_ids: list[int], params: SamplingParams, budgets: list[ThinkingBudget],
               sweep: list[ThinkingBudget] | None, prompt_logprobs_from: int) -> Request:
        seeds = ([params.seed + i for i in range(params.n)] if params.seed is not None
                 else [self._seed_source.getrandbits(62) for _ in range(params.n)])
        seq = Sequence(-1, list(token_ids), len(token_ids), params, seeds[0], request_id=self._next_id,
                       fork_seeds=seeds[1:], logprobs=None if params.logprobs is None else [],
                       prompt_logprobs=None if params.prompt_logprobs is None else [],
                       prompt_logprobs_from=prompt_logprobs_from)
        for index, budget in enumerate(budgets):
            seq.settings[index] = BudgetState(budget, self.budget_tokens(replace(params, budget=budget)))
        request = Request(self._next_id, list(token_ids), params, [seq], sweep=sweep)
        self._next_id += 1
        self.core.add_request(request)
        return request

    def _prompt_ids(self, prompt: Prompt, what: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"{what} is empty")
            check_unicode(prompt, f"the {what}")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, list):
            raise TypeError(f"a {what} is a string or a list of int token ids, got {_describe(prompt)}")
        bad = next((i for i, t in enumerate(prompt) if type(t) is not int), None)
        if bad is not None:
            raise TypeError(f"a {what} of token ids holds ints only; item {bad} is {_describe(prompt[bad])}")
        if not prompt:
            raise ValueError(f"{what} is empty")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"{what} token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab_size})")
        return list(prompt)

    def budget_tokens(self, params: SamplingParams) -> BudgetTokens:
        """The token ids budget forcing uses for these params (end ids or marker, delimiter, splices)."""
        budget = params.budget
        key = (params.think_format, budget.ignore_str, budget.final_answer_str, params.ignore_eos)
        if key not in self._budget_tokens:
            self._budget_tokens[key] = self.tokenizer.budget_tokens(params.think_format, budget, params.ignore_eos)
        return self._budget_tokens[key]

    def abort(self, request: Request) -> None:
        with self.lock:
            self.core.abort(request)

    def step(self) -> None:
        """One engine step over the queued requests (a batch of prefill chunks and decodes); `generate` and
        `sweep` step until their requests finish, a caller driving requests of its own steps here."""
        with self.lock:
            if self.device.type == "cuda":  # each thread has its own current device, which Triton launches on
                torch.cuda.set_device(self.device)
            self.core.step()

    def has_unfinished(self) -> bool:
        with self.lock:
            return self.core.has_unfinished()

    def stats(self) -> dict[str, int]:
        """Counters since start: num_computed_tokens (forwarded through the model), num_cached_prompt_tokens
        (prompt tokens served from the prefix cache), num_preemptions (sequences sent back to wait, to be
        recomputed: for KV room, or forks past max_num_seqs), num_used_blocks (held by live
        sequences), num_cached_blocks (full blocks reusable by key)."""
        with self.lock:
            return self.core.stats()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt and thinking prefix: later requests compute from scratch."""
        with self.lock:
            self.core.block_manager.reset_prefix_cache()

    def outputs(self, request: Request) -> list[Output]:
        """A request's Outputs: its `n` samples in order, or a sweep's settings in order."""
        with self.lock:
            if request.sweep is not None:
                return [make_output(request.seq_of_setting(k), self.tokenizer, request.request_id, k)
                        for k in range(len(request.sweep))]
            return [make_output(seq, self.tokenizer, request.request_id) for seq in request.samples()]

    # ---- the public ways in ----

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[Output]:
        """Submit every prompt at once and run them batched. A lone bad prompt raises; in a list, a bad
        prompt gets an Output with finish_reason "error" and the others run."""
        prompts, single = _prompt_batch(prompts)
        params_list = _params_list(params, len(prompts), "prompts")
        requests: list[Request | list[Output]] = []
        with self._dropped_on_failure(requests), self.lock:  # submitted together: no other thread steps between
            for prompt, sp in zip(prompts, params_list):
                try:
                    requests.append(self.add_request(prompt, sp))
                except (ValueError, TypeError) as e:
                    if single:
                        raise
                    requests.append([error_output(prompt, str(e), i) for i in range(sp.n)])
        return self._run(requests, use_tqdm)

    @contextmanager
    def _dropped_on_failure(self, requests: list):
        """An error or Ctrl-C while a call submits or runs its requests: they are aborted (their blocks
        freed), then it re-raises; other requests go on. A second Ctrl-C meanwhile waits until every one
        is aborted (none is left running orphaned)."""
        try:
            yield
        except BaseException:
            again = None
            for r in requests:
                try:
                    if isinstance(r, Request):
                        self.abort(r)
                except BaseException as e:
                    again = again or e
            if again is not None:
                raise again
            raise

    def _run(self, requests: list, use_tqdm: bool) -> list[Output]:
        """Step until every request finishes; their Outputs in order (error Outputs pass through)."""
        pending = [r for r in requests if isinstance(r, Request)]
        with self._dropped_on_failure(requests), tqdm(total=len(pending), desc="generating", unit="req",
                                                       disable=not use_tqdm or None) as bar:
            while pending:
                self.step()
                still = [r for r in pending if not r.is_finished]
                bar.update(len(pending) - len(still))
                pending = still
        return [o for r in requests for o in (r if isinstance(r, list) else self.outputs(r))]

    def sweep(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | list[SamplingParams],
        budgets: list[ThinkingBudget] | list[list[ThinkingBudget]],
        use_tqdm: bool = True,
    ) -> list[list[Output]]:
        """Run every prompt under every budget setting, indexed [prompt][setting]; params and budgets may be
        one for all prompts or one per prompt. All prompts run batched; each runs as one sequence while its
        settings decide alike and forks where they differ, so shared prefixes are computed once; each Output
        equals `generate(prompt, replace(params, budget=setting))`."""
        prompts, single = _prompt_batch(prompts)
        params_list = _params_list(params, len(prompts), "prompts")
        if not isinstance(budgets, list) or not budgets:
            raise TypeError(f"budgets must be a non-empty list of ThinkingBudget (or one such list per prompt), "
                            f"got {_describe(budgets)}")
        per_prompt = isinstance(budgets[0], list)
        budget_lists = budgets if per_prompt else [budgets] * len(prompts)
        if len(budget_lists) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(budget_lists)} lists of budgets")
        requests: list[Request | list[Output]] = []
        with self._dropped_on_failure(requests), self.lock:
            for prompt, sp, settings in zip(prompts, params_list, budget_lists):
                try:
                    token_ids = self._checked_prompt_ids(prompt, sp)
                except (ValueError, TypeError) as e:  # a bad prompt in a list: error Outputs, the others run
                    if single:
                        raise
                    requests.append([error_output(prompt, str(e), 0) for _ in settings])
                    continue
                requests.append(self.add_sweep(token_ids, sp, settings))
        outputs = iter(self._run(requests, use_tqdm))
        return [[next(outputs) for _ in settings] for settings in budget_lists]

    def score(self, prompts: Prompt | list[Prompt], continuations: Prompt | list[Prompt]) -> list[list[float]]:
        """Per continuation token, its log-probability given the prompt and the continuation before it (the
        log-softmax of the model's logits). Strings are tokenized apart, then joined as ids. The pairs run
        as one batch of prompt-logprob requests (a cached prompt prefix is reused)."""
        prompts, single = _prompt_batch(prompts)
        if single:
            continuations = [continuations]
        elif not isinstance(continuations, list):
            raise TypeError(f"continuations must be a list like prompts, got {_describe(continuations)}")
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = []
        for prompt, continuation in zip(prompts, continuations):
            context = self._prompt_ids(prompt)
            tail = (self.tokenizer.encode_piece(continuation) if isinstance(continuation, str) and continuation
                    else self._prompt_ids(continuation, "continuation"))
            if len(context) + len(tail) > self.max_model_len:
                raise ValueError(f"prompt + continuation is {len(context) + len(tail)} tokens; the context holds "
                                 f"{self.max_model_len}")
            pairs.append((context, tail))
        params = SamplingParams(max_tokens=0, prompt_logprobs=0, seed=0)  # a seed of its own leaves the seed
        # source of later unseeded requests alone
        requests = []
        with self._dropped_on_failure(requests), self.lock:
            for context, tail in pairs:
                requests.append(self._submit(context + tail, params, [], None, prompt_logprobs_from=len(context)))
        scores = []
        for out, (context, tail) in zip(self._run(requests, use_tqdm=False), pairs):
            if out.error is not None:
                raise ValueError(out.error)
            scores.append([entry[token] for entry, token in zip(out.prompt_logprobs[len(context):], tail)])
        return scores

    def chat_prompt(self, messages: list[dict], params: SamplingParams) -> list[int]:
        """Token ids of a conversation under the chat template, opening thinking when a budget is set."""
        think_format = get_think_format(params.think_format) if params.budget is not None else None
        return prompt_ids(self.tokenizer.hf, messages, think_format)

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[Output]:
        if not isinstance(conversations, list) or not conversations or not all(
                isinstance(c, dict) for c in conversations) and not all(isinstance(c, list) for c in conversations):
            raise TypeError("conversations must be a non-empty list of messages ({'role': ..., 'content': ...} dicts) "
                            f"or a list of such lists; got {_describe(conversations)}")
        single = isinstance(conversations[0], dict)
        params_list = _params_list(params, 1 if single else len(conversations), "conversations")
        if single:
            return self.generate(self.chat_prompt(conversations, params_list[0]), params_list[0], use_tqdm=use_tqdm)
        prompts, errors = [], {}
        for i, (conversation, sp) in enumerate(zip(conversations, params_list)):
            try:
                prompts.append(self.chat_prompt(conversation, sp))
            except (ValueError, TypeError, TemplateError) as e:  # a bad conversation in a list: error Outputs
                errors[i] = f"conversations[{i}]: {e}"
        good = [sp for i, sp in enumerate(params_list) if i not in errors]
        outputs = iter(self.generate(prompts, good, use_tqdm=use_tqdm) if prompts else [])
        return [error_output([], errors[i], k) if i in errors else next(outputs)
                for i, sp in enumerate(params_list) for k in range(sp.n)]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> "RequestStream":
        """Queue a request now (bad input raises here) and return an iterator of its deltas, tagged with
        their phase; the last delta carries the Output. Closing or dropping the iterator aborts the request."""
        params = params or SamplingParams()
        if params.n != 1:
            raise ValueError(f"stream hands out one sample; got n={params.n} (use generate for n samples)")
        return RequestStream(self, self.add_request(prompt, params))

    def stream_sweep(self, prompt: Prompt, params: SamplingParams, budgets: list[ThinkingBudget]) -> "RequestStream":
        """`stream` for a sweep (see `sweep`): every setting's deltas, each tagged with its `setting` index, in
        the order the engine produces them; each setting's last delta carries its Output."""
        return RequestStream(self, self.add_sweep(prompt, params, budgets))


class RequestStream(Iterator[StreamDelta]):
    """One request's deltas (a sweep's: every setting's). Other calls (generate) may advance it meanwhile:
    nothing is lost, the next delta carries what they produced. An abandoned stream aborts its request,
    freeing its blocks."""

    def __init__(self, llm: LLM, request: Request):
        self.llm, self.request = llm, request
        settings = [None] if request.sweep is None else range(len(request.sweep))
        self.streams = [OutputStream(request.seqs[0], llm.tokenizer, request.request_id, k) for k in settings]
        self.pending: list[StreamDelta] = []

    def _deltas(self) -> list[StreamDelta]:
        deltas = []
        for stream in self.streams:
            stream.follow(self.request)
            deltas += stream.deltas()
        return deltas

    def __next__(self) -> StreamDelta:
        try:
            while not self.pending and not all(stream.done for stream in self.streams):
                with self.llm.lock:
                    if not self.request.is_finished:
                        self.llm.step()
                    self.pending = self._deltas()
        except BaseException:
            self.close()
            raise
        if not self.pending:
            raise StopIteration
        return self.pending.pop(0)

    def close(self) -> None:
        if not self.request.is_finished:
            self.llm.abort(self.request)

    def __enter__(self) -> "RequestStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _params_list(params: SamplingParams | list[SamplingParams] | None, n: int, what: str) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    if not isinstance(params, list):
        raise TypeError(f"params must be SamplingParams or a list of them, got {_describe(params)}")
    bad = [i for i, p in enumerate(params) if not isinstance(p, SamplingParams)]
    if bad:
        raise TypeError(f"params must be SamplingParams or a list of them; params[{bad[0]}] is a {_describe(params[bad[0]])}")
    if len(params) != n:
        raise ValueError(f"got {n} {what} but {len(params)} SamplingParams; pass one, or one per item")
    return params


def _prompt_batch(prompts) -> tuple[list, bool]:
    """A call's prompts as a list, and whether one prompt (a string or a list of token ids) was given."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], (int, np.integer))):
        return [prompts], True  # (a number other than a plain int is then named by _prompt_ids)
    if not isinstance(prompts, list):
        raise TypeError(f"prompts must be a string, a list of token ids, or a list of those; got {_describe(prompts)}")
    return prompts, False


def _describe(value) -> str:
    if isinstance(value, (tuple, np.ndarray, torch.Tensor)):
        return f"a {type(value).__name__} (convert it with list(...) or .tolist())"
    return type(value).__name__

