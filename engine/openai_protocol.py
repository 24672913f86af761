"""The OpenAI wire format of `engine.serve`: request bodies -> SamplingParams, Outputs -> response bodies.

Budget forcing rides on extra body fields: `thinking_budget` (an int: the thinking cap, an object of
ThinkingBudget's fields, or a list of those: a sweep, one choice per setting, run as forks of one
sequence) and `think_format`; also `top_k`, `stop_token_ids`, `ignore_eos`, `repetition_penalty`.
Completions take `echo`: the prompt comes first in each choice's text and, with `logprobs`, in its
logprobs (the first prompt token's logprob is null), as lm-eval's loglikelihood requests read them. A
field the engine cannot honour (tools, response formats) is an error unless it has its no-op value.
"""
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from itertools import accumulate

from engine.budget import ThinkingBudget
from engine.outputs import Output
from engine.sampling import SamplingParams

MAX_LOGPROBS = 20
MAX_CHOICES = 256  # prompts x n in one request: more is a mistake, and would fork that many sequences
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
                 "top_k", "stop_token_ids", "ignore_eos", "thinking_budget", "think_format",
                 "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias"}
IGNORED_FIELDS = {"user", "store", "metadata", "service_tier"}  # bookkeeping that does not change the reply
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "logprobs", "echo"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "logprobs", "top_logprobs", "max_completion_tokens"}
NO_OP_VALUES = {"echo": (False, None),
                "suffix": (None, ""), "best_of": (None, 1), "tools": (None, []), "tool_choice": (None, "none"),
                "response_format": (None, {"type": "text"}), "parallel_tool_calls": (None, True, False)}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


@dataclass(slots=True)
class ApiRequest:
    chat: bool
    prompts: list  # completion prompts (str or token ids) or chat conversations (lists of messages)
    params: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens_field: str | None  # the cap's field, when given: a prompt that leaves less room is an error (a
    # default cap just ends at the context)
    echo: bool = False  # completions: the prompt first in text and logprobs
    sweep: list[ThinkingBudget] | None = None  # a budget sweep: one choice per setting, from forked sequences

    @property
    def thinks(self) -> bool:
        return self.params.budget is not None or self.sweep is not None


def param_of(message: str) -> str | None:
    """The body field an engine error message is about ("top_p must be ...", "ThinkingBudget.min_tokens ...",
    "messages[2].content is ...", "the prompt is ...")."""
    if message.startswith("ThinkingBudget."):
        return "thinking_budget"
    if message.startswith("unknown think format"):
        return "think_format"
    name = re.match(r"(?:the )?(\w*)", message).group(1)
    return name if name in COMMON_FIELDS | COMPLETION_FIELDS | CHAT_FIELDS else None


def parse_request(body, chat: bool, model_name: str, max_model_len: int) -> ApiRequest:
    """A validated request, or ApiError naming the field at fault."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name in NO_OP_VALUES and name not in allowed:
            if value not in NO_OP_VALUES[name] and not (name == "best_of" and value == body.get("n", 1)):
                raise ApiError(f"{name}={value!r} is not supported by this server", param=name)
        elif name not in allowed and name not in IGNORED_FIELDS:
            raise ApiError(f"unknown field {name!r}; this endpoint takes {', '.join(sorted(allowed))}", param=name)
    if body.get("model") not in (None, model_name):
        raise ApiError(f"the model {body['model']!r} does not exist; this server serves {model_name!r}",
                       status=404, param="model", kind="not_found_error")
    prompts = _conversations(body) if chat else _prompts(body)
    default_max = max_model_len if chat else COMPLETION_MAX_TOKENS
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, max_name, int, default_max)
    echo = False if chat else _get(body, "echo", bool, False)
    if max_tokens < 0 or max_tokens == 0 and not echo:  # named here: SamplingParams would say max_tokens
        raise ApiError(f"{max_name} must be positive" + ("" if chat else " (0 only with echo: it scores the prompt)"),
                       param=max_name)
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    if options and not stream:
        raise ApiError("stream_options needs stream=true", param="stream_options")
    if set(options) - {"include_usage"}:
        raise ApiError(f"stream_options takes include_usage only, got {sorted(options)}", param="stream_options")
    logprobs = _logprobs(body, chat)
    prompt_logprobs = None
    if echo:  # with max_tokens 0 (OpenAI's legacy scoring call) the prompt is scored, logprobs asked for or not
        prompt_logprobs = 0 if logprobs is None and max_tokens == 0 else logprobs
    try:
        budgets = _budgets(body)
        sweep = budgets if isinstance(body.get("thinking_budget"), list) else None
        params = SamplingParams(
            temperature=float(_get(body, "temperature", (int, float), 1.0)),
            top_p=float(_get(body, "top_p", (int, float), 1.0)),
            top_k=_get(body, "top_k", int, 0),
            max_tokens=max_tokens,
            seed=_seed(body),
            stop=_stop(body),
            stop_token_ids=tuple(_get(body, "stop_token_ids", list, [])),
            ignore_eos=_get(body, "ignore_eos", bool, False),
            budget=None if sweep or not budgets else budgets[0],
            think_format=_get(body, "think_format", str, "s1"),
            n=_get(body, "n", int, 1),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            presence_penalty=_get(body, "presence_penalty", (int, float), 0.0),
            frequency_penalty=_get(body, "frequency_penalty", (int, float), 0.0),
            repetition_penalty=_get(body, "repetition_penalty", (int, float), 1.0),
            logit_bias=_logit_bias(body),
        )
    except (ValueError, TypeError) as e:
        raise ApiError(str(e), param=param_of(str(e))) from None
    if sweep and params.n != 1:
        raise ApiError(f"a thinking_budget list (a sweep) runs one sample per setting: n must be 1, got n={params.n}",
                       param="thinking_budget")
    per_prompt = len(sweep) if sweep else params.n
    if len(prompts) * per_prompt > MAX_CHOICES:
        raise ApiError(f"{len(prompts)} prompts x {per_prompt} choices each is more than {MAX_CHOICES} in one request",
                       param="thinking_budget" if sweep else "n")
    include_usage = options.get("include_usage")
    include_usage = False if include_usage is None else include_usage
    if not isinstance(include_usage, bool):
        raise ApiError(f"stream_options.include_usage must be true or false, got {include_usage!r}", param="stream_options")
    return ApiRequest(chat, prompts, params, stream, include_usage, max_name if body.get(max_name) is not None else None,
                      echo, sweep)


def parse_tokenize(body) -> tuple[str | list[dict], bool]:
    """/tokenize (vLLM's): a `prompt` string (`add_special_tokens`, default true) or chat `messages` (the
    template with the generation prompt); returns (prompt or messages, add_special_tokens)."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    unknown = sorted(set(body) - {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"})
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}; /tokenize takes prompt or messages, add_special_tokens",
                       param=unknown[0])
    if ("prompt" in body) == ("messages" in body):
        raise ApiError("/tokenize takes either prompt (a string) or messages", param="prompt")
    if _get(body, "add_generation_prompt", bool, True) is not True:
        raise ApiError("add_generation_prompt=false is not supported", param="add_generation_prompt")
    if "messages" in body:
        return _conversations(body)[0], False
    return _get(body, "prompt", str, ""), _get(body, "add_special_tokens", bool, True)


def parse_detokenize(body, vocab_size: int) -> list[int]:
    if not isinstance(body, dict) or set(body) - {"model", "tokens"}:
        raise ApiError("/detokenize takes {tokens: [ids]}", param="tokens")
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(_is_id(t) and 0 <= t < vocab_size for t in tokens):
        raise ApiError(f"tokens must be a list of token ids in [0, {vocab_size})", param="tokens")
    return tokens


def _get(body: dict, name: str, kind, default):
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({int: "an integer", float: "a number", bool: "true or false", str: "a string",
                             list: "a list", dict: "an object"}[k] for k in kinds)
        raise ApiError(f"{name} must be {names}, got {value!r}", param=name)
    return value


def _prompts(body: dict) -> list:
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt)):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or (isinstance(p, list) and all(_is_id(t) for t in p))
                                                   for p in prompt):
        return prompt
    raise ApiError("prompt must be a string, a list of token ids, or a non-empty list of those", param="prompt")


def _logit_bias(body: dict) -> dict[int, float] | None:
    """OpenAI's logit_bias: an object whose keys are token ids as strings ("50256": -100)."""
    bias = _get(body, "logit_bias", dict, None)
    if bias is None:
        return None
    bad = [key for key in bias if not (isinstance(key, str) and key.isascii() and key.isdigit())]
    if bad:
        raise ApiError(f"logit_bias keys must be token ids (strings of digits), got {bad[0]!r}", param="logit_bias")
    return {int(key): value for key, value in bias.items()}


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _conversations(body: dict) -> list[list[dict]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of {role, content} objects", param="messages")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(f"messages[{i}] must be an object whose role is one of {', '.join(ROLES)}", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(f"messages[{i}].content parts must be text parts ({{type: text, text}})", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(f"messages[{i}].content must be a string or a list of text parts", param="messages")
        plain.append({"role": ROLES[m["role"]], "content": content})
    return [plain]


def _seed(body: dict) -> int | None:
    """OpenAI's seeds are signed 64-bit: a negative one is taken modulo 2**63 (room for n seeds after it)."""
    seed = _get(body, "seed", int, None)
    if seed is not None and seed < 0:
        if seed < -2**63:
            raise ApiError(f"seed must be at least -2**63, got {seed}", param="seed")
        seed %= 2**63
    return seed


def _stop(body: dict) -> str | list[str] | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return stop or None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop or None
    raise ApiError(f"stop must be a string or a list of strings, got {stop!r}", param="stop")


def _budgets(body: dict) -> list[ThinkingBudget] | None:
    """thinking_budget as a list of settings: one setting, or a sweep's (a list in the body)."""
    value = body.get("thinking_budget")
    if value is None:
        return None
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_CHOICES:
            raise ApiError(f"a thinking_budget list (a sweep) holds 1 to {MAX_CHOICES} settings, got {len(value)}",
                           param="thinking_budget")
        return [_budget(v) for v in value]
    return [_budget(value)]


def _budget(value) -> ThinkingBudget:
    if _is_id(value):
        return ThinkingBudget(max_tokens=value)
    names = [f.name for f in fields(ThinkingBudget)]
    if not isinstance(value, dict):
        raise ApiError(f"thinking_budget must be an integer (the thinking cap), an object of {', '.join(names)}, "
                       "or a list of those (a sweep)", param="thinking_budget")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ApiError(f"thinking_budget has no field {unknown[0]!r}; its fields are {', '.join(names)}",
                       param="thinking_budget")
    return ThinkingBudget(**value)


def _logprobs(body: dict, chat: bool) -> int | None:
    if chat:
        top = _get(body, "top_logprobs", int, None)
        if not _get(body, "logprobs", bool, False):
            if top is not None:
                raise ApiError("top_logprobs needs logprobs=true", param="top_logprobs")
            return None
        k, name = top or 0, "top_logprobs"
    else:
        k, name = _get(body, "logprobs", int, None), "logprobs"
        if k is None:
            return None
    if not 0 <= k <= MAX_LOGPROBS:
        raise ApiError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {k}", param=name)
    return k


# ---- responses ----

def header(chat: bool, model: str) -> dict:
    """What every body of one reply repeats: its id, creation time and model."""
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def usage(num_prompt_tokens: int, outputs: list[Output]) -> dict:
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": completion,
            "total_tokens": num_prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": sum(o.num_thinking_tokens for o in outputs)}}


def response(api: ApiRequest, head: dict, outputs: list[Output], bounds: list[tuple[int | None, int | None]],
             num_prompt_tokens: int, token_text: Callable[[int], str], echo_texts: list[str]) -> dict:
    """The whole (non-streamed) response; choice i is prompt i // n, sample i % n (in a sweep: prompt i // s,
    setting i % s); bounds[i] is the output's (thinking_end, answer_start) in tokens; echo_texts[i] its
    prompt as echoed (the string sent, or the decoded ids)."""
    choices = []
    for index, (out, (thinking_end, answer_start), echo_text) in enumerate(zip(outputs, bounds, echo_texts)):
        choice = {"index": index, "finish_reason": out.finish_reason, "stop_reason": out.stop_reason,
                  "num_thinking_tokens": out.num_thinking_tokens, "num_ignores_used": out.num_ignores_used}
        if api.chat:
            reasoning = out.thinking_text if api.thinks else None
            choice["message"] = {"role": "assistant", "content": out.answer_text, **reasoning_fields(reasoning)}
            choice["logprobs"] = chat_logprobs(out.token_ids, out.logprobs, api.params.logprobs, token_text, 0,
                                               thinking_end, answer_start)
        elif api.echo:
            choice["text"] = echo_text + out.text
            asked = api.params.logprobs is not None  # max_tokens 0 scores the prompt, asked for logprobs or not
            choice["logprobs"] = completion_logprobs(out.prompt_token_ids + out.token_ids,
                                                     out.prompt_logprobs + out.logprobs if asked else None,
                                                     api.params.logprobs, token_text)
        else:
            choice["text"] = out.text
            choice["logprobs"] = completion_logprobs(out.token_ids, out.logprobs, api.params.logprobs, token_text)
        choices.append(choice)
    return {**head, "object": "chat.completion" if api.chat else "text_completion", "choices": choices,
            "usage": usage(num_prompt_tokens, outputs)}


def reasoning_fields(text: str | None) -> dict:
    """Thinking under both names clients read: `reasoning_content` (DeepSeek, older vLLM) and `reasoning`."""
    return {"reasoning_content": text, "reasoning": text}


def chunk(api: ApiRequest, head: dict, choices: list[dict], usage_body: dict | None = None) -> dict:
    body = {**head, "object": "chat.completion.chunk" if api.chat else "text_completion", "choices": choices}
    if api.include_usage:
        body["usage"] = usage_body
    return body


def top(logprob: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k most likely of an entry (it holds the sampled token beside them)."""
    return sorted(logprob.items(), key=lambda item: -item[1])[:k]


def chat_logprobs(token_ids: list[int], logprobs: list | None, k: int, token_text: Callable[[int], str],
                  first: int, thinking_end: int | None, answer_start: int | None) -> dict | None:
    """OpenAI's chat layout: `content` over the sampled answer tokens and, beside it, `reasoning` over the
    sampled thinking tokens (token_ids start at output position `first`); spliced tokens and the delimiter
    region are in neither. `bytes` is null for a token that holds part of a character."""
    if logprobs is None:
        return None

    def entry(token: int, logprob: float) -> dict:
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": None if "\ufffd" in text else list(text.encode())}

    parts = {"content": [], "reasoning": []}
    for position, (token, logprob) in enumerate(zip(token_ids, logprobs), first):
        if logprob is None:
            continue
        part = ("content" if answer_start is not None and position >= answer_start
                else "reasoning" if thinking_end is None or position < thinking_end else None)
        if part is not None:
            parts[part].append({**entry(token, logprob[token]), "top_logprobs": [entry(i, v) for i, v in top(logprob, k)]})
    return parts


def completion_logprobs(token_ids: list[int], logprobs: list | None, k: int, token_text: Callable[[int], str],
                        offset: int = 0) -> dict | None:
    """The legacy completions layout: tokens, token_logprobs, top_logprobs, text_offset (from `offset`)."""
    if logprobs is None:
        return None
    texts = [token_text(t) for t in token_ids]
    offsets = list(accumulate((len(x) for x in texts[:-1]), initial=offset)) if texts else []
    return {"tokens": texts, "token_logprobs": [None if lp is None else lp[t] for t, lp in zip(token_ids, logprobs)],
            "top_logprobs": [None if lp is None else {token_text(i): v for i, v in top(lp, k)} for lp in logprobs],
            "text_offset": offsets}
