"""LLM: the offline API. One loop: schedule -> run -> sample -> postprocess (budget forcing, stops)."""
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from engine.block_manager import BlockManager
from engine.budget import BudgetState, BudgetTokens, Phase
from engine.config import ModelConfig
from engine.model import load_model
from engine.outputs import IncrementalDecoder, Output, StreamDelta, make_output, phase_token_ids
from engine.runner import ModelRunner
from engine.sampling import Sampler, SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer, get_think_format
from engine.weights import default_model_dir

Prompt = str | list[int]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_KV_CACHE_BYTES = 2 << 30
GPU_KV_CACHE_FRACTION = 0.85  # of the memory left free after loading the weights


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
    ):
        sizes = {"block_size": block_size, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
        if num_blocks is not None:
            sizes["num_blocks"] = num_blocks
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        path = default_model_dir() if model is None else Path(model)
        self.config = ModelConfig.from_dir(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here")
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer = Tokenizer(path, self.config.eos_token_ids)
        model_module = load_model(path, self.config, self.device, self.dtype)
        if num_blocks is None:  # sized from the device's memory
            num_blocks = self._default_num_blocks(block_size, max_num_seqs)
        self.block_manager = BlockManager(num_blocks, block_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.runner = ModelRunner(model_module, self.config, num_blocks, block_size)
        self.sampler = Sampler(min(self.tokenizer.vocab_size, self.config.vocab_size))
        self.max_model_len = min(self.config.max_position_embeddings, num_blocks * block_size)
        self._seqs: dict[int, Sequence] = {}
        self._next_id = 0
        self._budget_tokens: dict[tuple, BudgetTokens] = {}

    def _default_num_blocks(self, block_size: int, max_num_seqs: int) -> int:
        block_bytes = ModelRunner.kv_bytes_per_block(self.config, block_size, self.dtype)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * GPU_KV_CACHE_FRACTION)
        else:
            budget = CPU_KV_CACHE_BYTES
        useful = max_num_seqs * -(-self.config.max_position_embeddings // block_size)
        return max(1, min(budget // block_bytes, useful))

    # ---- requests ----

    def add_request(self, prompt: Prompt, params: SamplingParams) -> int:
        """Queue one request; bad input raises ValueError/TypeError and leaves the engine untouched."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        token_ids = self._prompt_ids(prompt)
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens; the context holds {self.max_model_len} "
                "(and at least one must be left to generate)"
            )
        # on the logits' device: torch.multinomial refuses a generator from another device
        generator = torch.Generator(self.device).manual_seed(params.seed if params.seed is not None else torch.seed())
        seq = Sequence(self._next_id, list(token_ids), len(token_ids), params, generator)
        if params.budget is not None:
            seq.budget = BudgetState(params.budget, self.budget_tokens(params))
            seq.token_ids.extend(seq.budget.start([]))
        self._next_id += 1
        self._seqs[seq.seq_id] = seq
        if not self._finish_if_at_length(seq):  # a zero budget can leave nothing to generate
            self.scheduler.add(seq)
        return seq.seq_id

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) for t in prompt):
            raise TypeError("a prompt is a string or a list of token ids")
        if not prompt:
            raise ValueError("prompt is empty")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab_size})")
        return list(prompt)

    def budget_tokens(self, params: SamplingParams) -> BudgetTokens:
        """The token ids budget forcing uses for these params (end ids, delimiter, ignore, final answer)."""
        budget, fmt = params.budget, get_think_format(params.think_format)
        key = (fmt.name, budget.ignore_str, budget.final_answer_str)
        if key not in self._budget_tokens:
            delimiter = tuple(self.tokenizer.encode_piece(fmt.think_end))
            self._budget_tokens[key] = BudgetTokens(
                end_ids=frozenset({delimiter[0], *self.tokenizer.eos_token_ids}),
                delimiter=delimiter,
                final_answer=tuple(self.tokenizer.encode_piece(budget.final_answer_str or "")),
                ignore=tuple(self.tokenizer.encode_piece(budget.ignore_str)),
            )
        return self._budget_tokens[key]

    def abort(self, request_id: int) -> None:
        seq = self._seqs.pop(request_id)
        if not seq.is_finished:
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the loop ----

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One forward over the scheduled batch; returns the sequences it touched."""
        batch, rejected = self.scheduler.schedule()
        for seq in rejected:
            seq.error = f"sequence of {len(seq)} tokens does not fit in the KV pool"
            seq.finish_reason = "error"
            self.scheduler.finish(seq)
        if batch is None:
            return rejected
        sampling = [batch.seqs[i] for i in batch.sampling]
        logits = self.runner.run(batch)
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_cached_tokens += n
        if sampling:
            tokens = self.sampler(
                logits,
                [s.params for s in sampling],
                [s.generator for s in sampling],
                [s.budget.masked_ids() if s.budget else frozenset() for s in sampling],
            )
            for seq, token in zip(sampling, tokens):
                self._postprocess(seq, token)
        return batch.seqs + rejected

    def _postprocess(self, seq: Sequence, token: int) -> None:
        p = seq.params
        in_answer = seq.phase is Phase.ANSWER
        appended = seq.budget.accept(token, seq.output_ids) if seq.budget else [token]
        seq.token_ids.extend(appended)
        if in_answer:
            if token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.eos_token_ids):
                return self._finish(seq, "stop", stop_reason=token)
            stop = self._stop_string_hit(seq)
            if stop is not None:
                return self._finish(seq, "stop", stop_reason=stop)
        self._finish_if_at_length(seq)

    def _finish_if_at_length(self, seq: Sequence) -> bool:
        budget, p = seq.budget, seq.params
        if budget and budget.phase is Phase.ANSWER and p.budget.max_answer_tokens is not None:
            if budget.answer_tokens >= p.budget.max_answer_tokens:
                self._finish(seq, "length")
                return True
        limit = min(seq.num_prompt_tokens + p.max_tokens, self.max_model_len)
        if len(seq) >= limit:
            del seq.token_ids[limit:]
            self._finish(seq, "length")
            return True
        return False

    def _stop_string_hit(self, seq: Sequence) -> str | None:
        stops = seq.params.stop_strings
        if not stops:
            return None
        answer_start = seq.num_prompt_tokens + (seq.budget.answer_start if seq.budget else 0)
        window = max(len(s) for s in stops) + 1  # a stop string spans at most this many new tokens
        tail = self.tokenizer.decode(seq.token_ids[max(answer_start, len(seq) - window) :])
        return next((s for s in stops if s in tail), None)

    def _finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        if seq.budget:
            seq.budget.phase = Phase.DONE
        self.scheduler.finish(seq)

    # ---- the public ways in ----

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[Output]:
        """Submit every prompt at once and run them batched. A lone bad prompt raises; in a list, a bad
        prompt gets an Output with finish_reason "error" and the others run."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int))
        prompts = [prompts] if single else list(prompts)
        params = params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} SamplingParams")
        request_ids: list[int | Output] = []
        for prompt, sp in zip(prompts, params):
            try:
                request_ids.append(self.add_request(prompt, sp))
            except (ValueError, TypeError) as e:
                if single:
                    raise
                request_ids.append(_error_output(prompt, str(e)))
        pending = {r for r in request_ids if isinstance(r, int)}
        try:
            with tqdm(total=len(pending), desc="generating", unit="req", disable=not use_tqdm or None) as bar:
                while pending:
                    self.step()
                    done = {r for r in pending if self._seqs[r].is_finished}
                    pending -= done
                    bar.update(len(done))
        except BaseException:  # an error or Ctrl-C: drop this call's requests, free their blocks, re-raise
            for r in request_ids:
                if isinstance(r, int) and r in self._seqs:
                    self.abort(r)
            raise
        return [r if isinstance(r, Output) else make_output(self._seqs.pop(r), self.tokenizer) for r in request_ids]

    def chat_prompt(self, messages: list[dict], params: SamplingParams) -> list[int]:
        """Token ids of a conversation under the chat template, opening thinking when a budget is set."""
        text = self.tokenizer.apply_chat_template(messages)
        if params.budget is not None:
            text += get_think_format(params.think_format).think_start
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[Output]:
        single = bool(conversations) and isinstance(conversations[0], dict)
        conversations = [conversations] if single else conversations
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(conversations)
        prompts = [self.chat_prompt(c, p) for c, p in zip(conversations, plist)]
        return self.generate(prompts[0] if single else prompts, params, use_tqdm=use_tqdm)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[StreamDelta]:
        """Yield text as it is generated, tagged with its phase; the last delta carries the Output."""
        request_id = self.add_request(prompt, params or SamplingParams())
        seq = self._seqs[request_id]
        decoders = {"thinking": IncrementalDecoder(self.tokenizer), "answer": IncrementalDecoder(self.tokenizer)}
        emitted = {"thinking": 0, "answer": 0}  # characters handed out per phase
        num_ids = 0  # token ids handed out so far
        try:
            while True:
                self.step()
                if seq.is_finished:
                    break
                for phase, ids in zip(("thinking", "answer"), phase_token_ids(seq)):
                    text = decoders[phase].delta(ids)
                    if text:
                        yield StreamDelta(phase, text, seq.output_ids[num_ids:])
                        emitted[phase] += len(text)
                        num_ids = len(seq.output_ids)
            # the finished text is final (a stop string cut off, split characters flushed): send the rest
            output = make_output(seq, self.tokenizer)
            for phase, text in (("thinking", output.thinking_text), ("answer", output.answer_text)):
                if len(text) > emitted[phase]:
                    yield StreamDelta(phase, text[emitted[phase] :], output.token_ids[num_ids:])
                    num_ids = len(output.token_ids)
            yield StreamDelta("answer", "", output.token_ids[num_ids:], output=output)
        finally:
            self.abort(request_id)


def _error_output(prompt: Prompt, message: str) -> Output:
    return Output(
        request_id=-1,
        prompt_token_ids=prompt if isinstance(prompt, list) else [],
        token_ids=[],
        text="",
        thinking_text="",
        answer_text="",
        num_thinking_tokens=0,
        num_ignores_used=0,
        finish_reason="error",
        error=message,
    )
