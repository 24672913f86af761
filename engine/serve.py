"""OpenAI-compatible HTTP server: python -m engine.serve [--model DIR] [--host H] [--port P].

Endpoints: POST /v1/completions, POST /v1/chat/completions (both may stream), GET /v1/models, GET /health;
vLLM's POST /tokenize, POST /detokenize and GET /tokenizer_info (lm-eval's remote tokenizer uses them);
GET /metrics (Prometheus text). With --api-key (or S1_API_KEY) every route but /health and /metrics
needs `Authorization: Bearer KEY`.
One engine thread steps the LLM (holding its lock, so an app's own threads may use it too), so requests
arriving at any time join the running batch; each HTTP request runs on its own thread, hands its work
over through a queue and waits for (or streams) what comes back. All tokenizer work runs on the engine
thread. A client that hangs up before its reply is done (streamed or not) has its request aborted, which
frees its KV blocks. Budget forcing: see `engine.openai_protocol`.
"""
import argparse
import contextlib
import hmac
import json
import os
import queue
import select
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import torch
from jinja2 import TemplateError

from engine.engine_args import add_engine_args, llm_from_args
from engine.llm import LLM
from engine.openai_protocol import (ApiError, ApiRequest, chat_logprobs, chunk, completion_logprobs, header,
                                    param_of, parse_detokenize, parse_request, parse_tokenize, reasoning_fields,
                                    response, usage)
from engine.sampling import SamplingParams
from engine.outputs import OutputStream, StreamDelta, phase_chars
from engine.request import Request
from engine.sequence import Sequence
from engine.tokenizer import CHATML_TEMPLATE

MAX_BODY_BYTES = 32 << 20
CLIENT_POLL_SECONDS = 0.5  # how often a waiting handler checks that its client is still there
HANDLER_JOIN_SECONDS = 10  # at close, how long a handler may take to finish writing its last reply
ROUTES = {"/v1/completions": False, "/v1/chat/completions": True}  # POST path -> chat
TOKENIZER_ROUTES = ("/tokenize", "/detokenize")  # POST, answered between engine steps
GET_ROUTES = ("/health", "/v1/models", "/tokenizer_info", "/metrics")
OPEN_ROUTES = ("/health", "/metrics")  # answered without the API key (probes and scrapers)


class ChoiceStream:
    """One sample's (or sweep setting's) stream chunks: thinking as `reasoning_content`/`reasoning`, the
    answer as `content` (chat; the delimiter and any final-answer splice are left out, as in the whole
    response), or all of it as `text` (completions)."""

    def __init__(self, seq: Sequence, llm: LLM, request_id: int, index: int, api: ApiRequest, echo_text: str,
                 setting: int | None = None):
        self.llm, self.index, self.api, self.echo_text = llm, index, api, echo_text
        self.stream = OutputStream(seq, llm.tokenizer, request_id, setting)
        self.num_tokens = self.num_token_chars = 0  # handed out so far (tokens; completions: their texts' length)
        self.answer_chars = 0  # answer-phase characters seen (delimiter region included)
        self.delimiter_chars: int | None = None
        self.echoed = not api.echo

    @property
    def seq(self) -> Sequence:
        return self.stream.seq

    def first(self) -> dict | None:
        return {"index": self.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None} if self.api.chat else None

    def choices(self) -> list[dict]:
        """Chunk choices for what the sequence added (after the echoed prompt, once its logprobs are all
        computed); one that would carry nothing is left out."""
        first, end = self.seq.prompt_logit_span
        if not self.echoed and (first >= end or self.seq.is_finished):
            self.echoed = True
            ids, tokenizer = self.seq.token_ids[: self.seq.num_prompt_tokens], self.llm.tokenizer
            logprobs = self.seq.prompt_logprob_entries if self.api.params.logprobs is not None else None
            if logprobs is not None:  # one that ended (an error, an abort) before its prefill: nulls for the rest
                logprobs += [None] * (len(ids) - len(logprobs))
            echo = {"index": self.index, "text": self.echo_text, "finish_reason": None,
                    "logprobs": completion_logprobs(ids, logprobs, self.api.params.logprobs, tokenizer.decode_token)}
            self.num_token_chars = sum(map(len, echo["logprobs"]["tokens"])) if logprobs is not None else 0
            return [echo] + self.choices()
        if not self.echoed:
            return []
        choices = [self._choice(d) for d in self.stream.deltas()]
        return [c for c in choices if c.get("delta", c.get("text")) or c["logprobs"] or c["finish_reason"]]

    def _choice(self, delta: StreamDelta) -> dict:
        ids, k = delta.token_ids, self.api.params.logprobs
        logprobs = None if self.seq.logprobs is None else self.seq.logprobs[self.num_tokens : self.num_tokens + len(ids)]
        token_text = self.llm.tokenizer.decode_token
        finish = None if delta.output is None else delta.output.finish_reason
        if self.api.chat:
            parts = chat_logprobs(ids, logprobs, k, token_text, self.num_tokens, self.seq.thinking_end,
                                  self.seq.answer_start)
            body = {"index": self.index, "delta": self._chat_delta(delta),
                    "logprobs": parts if parts and any(parts.values()) else None, "finish_reason": finish}
        else:
            body = {"index": self.index, "text": delta.text, "finish_reason": finish,
                    "logprobs": completion_logprobs(ids, logprobs, k, token_text, self.num_token_chars)}
            if body["logprobs"] is not None:
                self.num_token_chars += sum(map(len, body["logprobs"]["tokens"]))
        if delta.output is not None:  # the last chunk: what the whole response's choice carries besides
            out = delta.output
            body |= {"stop_reason": out.stop_reason, "num_thinking_tokens": out.num_thinking_tokens,
                     "num_ignores_used": out.num_ignores_used}
        self.num_tokens += len(ids)
        return body

    def _chat_delta(self, delta: StreamDelta) -> dict:
        if delta.phase == "thinking":
            return reasoning_fields(delta.text) if delta.text else {}
        if self.delimiter_chars is None:  # answer deltas begin once the delimiter's place is known
            thinking_chars, answer_chars = phase_chars(self.seq, self.llm.tokenizer)
            self.delimiter_chars = answer_chars - thinking_chars
        start = max(0, self.delimiter_chars - self.answer_chars)
        self.answer_chars += len(delta.text)
        return {"content": delta.text[start:]} if delta.text[start:] else {}


class Job:
    """One HTTP request's work on the engine thread: its engine requests, and events for its handler:
    ("started" | "chunk" | "response" | "error" | "done", payload)."""

    def __init__(self, api: ApiRequest, model: str, events=None):
        self.api, self.head = api, header(api.chat, model)
        self.events = queue.Queue() if events is None else events  # anything with put(): run_batch tags them
        self.requests: list[Request] = []
        self.streams: dict[int, ChoiceStream] = {}
        self.usage: dict | None = None  # set when it has finished

    def start(self, llm: LLM) -> bool:
        api = self.api
        opening = replace(api.params, budget=api.sweep[0]) if api.sweep else api.params  # opens thinking
        try:
            for prompt in api.prompts:
                ids = llm.chat_prompt(prompt, opening) if api.chat else prompt
                self.requests.append(llm.add_sweep(ids, api.params, api.sweep) if api.sweep
                                     else llm.add_request(ids, api.params))
                room = llm.max_model_len - len(self.requests[-1].prompt_token_ids)
                if api.max_tokens_field and api.params.max_tokens > room:
                    raise ApiError(f"{api.max_tokens_field} is {api.params.max_tokens}, but the prompt's "
                                   f"{llm.max_model_len - room} tokens leave {room} of the context's {llm.max_model_len}",
                                   param=api.max_tokens_field)
        except ApiError as e:
            self.fail(llm, e)
            return False
        except (ValueError, TypeError, TemplateError) as e:  # a chat's prompt is its messages
            param = param_of(str(e))
            self.fail(llm, ApiError(str(e), param="messages" if api.chat and param == "prompt" else param))
            return False
        except Exception as e:  # not the request's fault: say so, and keep the engine thread alive
            self.fail(llm, engine_error(e))
            return False
        self.events.put(("started", None))
        return True

    def pump(self, llm: LLM) -> bool:
        """Hand out what the last step produced; True once the job is over."""
        if self.api.stream:
            self._stream(llm)
        if not all(r.is_finished for r in self.requests):
            return False
        outputs = [o for r in self.requests for o in llm.outputs(r)]
        bounds = [bound for r in self.requests for bound in _bounds(r)]
        num_prompt_tokens = sum(len(r.prompt_token_ids) for r in self.requests)
        error = next((o.error for o in outputs if o.finish_reason == "error"), None)
        if error is not None:
            self.events.put(("error", ApiError(error)))
            return True
        self.usage = usage(num_prompt_tokens, outputs)  # a finished job's, counted in /metrics
        if not self.api.stream:
            echo_texts = [self.echo_text(llm, i) for i, r in enumerate(self.requests) for _ in llm.outputs(r)]
            self.events.put(("response", response(self.api, self.head, outputs, bounds, num_prompt_tokens,
                                                  llm.tokenizer.decode_token, echo_texts)))
        else:
            if self.api.include_usage:
                self.events.put(("chunk", chunk(self.api, self.head, [], self.usage)))
            self.events.put(("done", None))
        return True

    def echo_text(self, llm: LLM, i: int) -> str:
        """Prompt i as echoed: the string the client sent (as vLLM echoes it), or its token ids decoded."""
        prompt = self.api.prompts[i]
        return prompt if isinstance(prompt, str) else llm.tokenizer.decode(self.requests[i].prompt_token_ids)

    def _stream(self, llm: LLM) -> None:
        choices = []
        for i, request in enumerate(self.requests):
            if request.sweep is None:  # the samples, as their forks appear
                targets = [(i * self.api.params.n + seq.sample_index, seq, None) for seq in request.samples()]
            else:  # each setting, on whichever fork carries it now
                width = len(request.sweep)
                targets = [(i * width + k, request.seq_of_setting(k), k) for k in range(width)]
            for index, seq, setting in targets:
                if index not in self.streams:
                    self.streams[index] = ChoiceStream(seq, llm, request.request_id, index, self.api,
                                                       self.echo_text(llm, i) if self.api.echo else "", setting)
                    first = self.streams[index].first()
                    choices += [first] if first else []
                self.streams[index].stream.follow(request)
                choices += self.streams[index].choices()
        for choice in choices:
            self.events.put(("chunk", chunk(self.api, self.head, [choice])))

    def abort(self, llm: LLM) -> None:
        for request in self.requests:
            llm.abort(request)

    def fail(self, llm: LLM, error: ApiError) -> None:
        self.events.put(("error", error))  # first: the handler hears of it even if the abort fails too
        try:
            self.abort(llm)
        except Exception:
            traceback.print_exc()


def engine_error(e: Exception) -> ApiError:
    """A 500 for an error that is the engine's, not the request's; its traceback goes to the log."""
    traceback.print_exc()
    return ApiError(f"the engine failed: {type(e).__name__}: {e}", 500, kind="server_error")


# how torch, Triton's launcher and cuBLAS word a failed GPU call
DEVICE_ERRORS = ("CUDA error", "Triton Error [CUDA]", "CUBLAS_STATUS_EXECUTION_FAILED", "cudaErrorIllegalAddress")


def device_broken(e: Exception, device: torch.device) -> bool:
    """A GPU error other than running out of memory (an illegal address, a launch failure): it sticks to
    the process's CUDA context, so every later step would fail too. Besides the error's own words, a
    context that can no longer synchronize is broken whatever the first error said."""
    text = str(e)
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in text:
        return False
    if isinstance(e, torch.AcceleratorError) or any(marker in text for marker in DEVICE_ERRORS):
        return True
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except Exception:
            return True
    return False


def _bounds(request: Request) -> list[tuple[int | None, int | None]]:
    """(thinking_end, answer_start) of each of a request's outputs: its samples, or its sweep's settings."""
    if request.sweep is None:
        return [(seq.thinking_end, seq.answer_start) for seq in request.samples()]
    states = [request.seq_of_setting(k).settings[k] for k in range(len(request.sweep))]
    return [(state.thinking_end, state.answer_start) for state in states]


class EngineLoop:
    """The thread that serves the LLM: takes jobs in, steps the batch, pumps results out. A failed step fails
    the running jobs (out of GPU memory too; the server goes on), and a broken GPU ends the thread, so
    /health answers 503 and a supervisor restarts the server; a failure of one job's own work fails that
    job only."""

    def __init__(self, llm: LLM):
        self.llm = llm
        self.inbox: queue.Queue = queue.Queue()
        self.jobs: list[Job] = []
        self.totals = {"prompt_tokens": 0, "generation_tokens": 0}  # of finished requests
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.inbox.put(("start", job))

    def abort(self, job: Job) -> None:
        self.inbox.put(("abort", job))

    def call(self, fn: Callable[[LLM], object]) -> object:
        """fn(llm) run on the engine thread between steps (with the jobs' tokenizer work there); its result."""
        if not self.thread.is_alive():
            raise RuntimeError("the engine thread has stopped")
        done: queue.Queue = queue.Queue()
        self.inbox.put(("call", (fn, done)))
        while True:
            try:
                ok, value = done.get(timeout=CLIENT_POLL_SECONDS)
                break
            except queue.Empty:
                if not self.thread.is_alive() and done.empty():  # it stopped before reading the call
                    raise RuntimeError("the engine thread has stopped") from None
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self.inbox.put(("stop", None))
        self.thread.join()

    def _run(self) -> None:
        while True:
            commands = [] if self.jobs else [self.inbox.get()]  # idle: sleep until work comes
            while not self.inbox.empty():
                commands.append(self.inbox.get_nowait())
            with self.llm.lock:  # the app may drive the same LLM from its own threads
                for i, (kind, payload) in enumerate(commands):
                    if kind == "stop":
                        self._shut_down(commands[i + 1 :], "the server is shutting down")
                        return
                    self._command(kind, payload)
                if not self._step():
                    unread = []
                    while not self.inbox.empty():
                        unread.append(self.inbox.get_nowait())
                    self._shut_down(unread, "the GPU is in an error state; restart the server")
                    return

    def _command(self, kind: str, payload) -> None:
        if kind == "start" and payload.start(self.llm):
            self.jobs.append(payload)
        elif kind == "abort" and payload in self.jobs:
            self.jobs.remove(payload)
            payload.abort(self.llm)
        elif kind == "call":
            fn, done = payload
            try:
                done.put((True, fn(self.llm)))
            except Exception as e:
                done.put((False, e))

    def _shut_down(self, unread: list[tuple[str, object]], why: str) -> None:
        """Fail the running jobs and those still queued; answer queued calls."""
        error = ApiError(why, 503, kind="server_error")
        for job in self.jobs + [payload for kind, payload in unread if kind == "start"]:
            job.fail(self.llm, error)
        for kind, payload in unread:
            if kind == "call":
                payload[1].put((False, RuntimeError(why)))

    def _step(self) -> bool:
        """One engine step, then each job's results; False when the GPU is broken and the thread must end."""
        try:
            if self.llm.has_unfinished():
                self.llm.step()
        except Exception as e:
            error = engine_error(e)
            for job in self.jobs:
                job.fail(self.llm, error)
            self.jobs = []
            if isinstance(e, torch.OutOfMemoryError) and self.llm.device.type == "cuda":
                torch.cuda.empty_cache()  # what the failed step held goes back before the next one
            return not device_broken(e, self.llm.device)
        running = []
        for job in self.jobs:
            try:
                if not job.pump(self.llm):
                    running.append(job)
                elif job.usage is not None:
                    self.totals["prompt_tokens"] += job.usage["prompt_tokens"]
                    self.totals["generation_tokens"] += job.usage["completion_tokens"]
            except Exception as e:
                job.fail(self.llm, engine_error(e))
        self.jobs = running
        return True

    def metrics(self) -> str:
        """Prometheus text exposition of the engine's state and counters (run on the engine thread)."""
        llm, stats = self.llm, self.llm.stats()
        scheduler, blocks = llm.core.scheduler, llm.core.block_manager
        rows = [
            ("sequences_running", "gauge", "sequences decoding or mid-prefill", len(scheduler.running)),
            ("sequences_waiting", "gauge", "sequences queued for prefill", len(scheduler.waiting)),
            ("kv_blocks_used", "gauge", "KV blocks held by sequences", stats["num_used_blocks"]),
            ("kv_blocks_cached", "gauge", "KV blocks keyed in the prefix cache (held or free)", stats["num_cached_blocks"]),
            ("kv_blocks_total", "gauge", "KV blocks in the pool", blocks.num_blocks),
            ("prompt_tokens_total", "counter", "prompt tokens of finished requests", self.totals["prompt_tokens"]),
            ("generation_tokens_total", "counter", "output tokens of finished requests", self.totals["generation_tokens"]),
            ("computed_tokens_total", "counter", "tokens forwarded through the model", stats["num_computed_tokens"]),
            ("cached_prompt_tokens_total", "counter", "prompt tokens taken from the prefix cache",
             stats["num_cached_prompt_tokens"]),
            ("preemptions_total", "counter", "sequences preempted (for KV room, or forks past max_num_seqs)", stats["num_preemptions"]),
        ]
        return "".join(f"# HELP s1engine_{name} {text}\n# TYPE s1engine_{name} {kind}\ns1engine_{name} {value}\n"
                       for name, kind, text, value in rows)


class OpenAIServer(ThreadingHTTPServer):
    daemon_threads = True
    # connections the kernel holds until accepted (socketserver's 5 reset most of a burst of clients: the
    # accept loop shares the GIL with the engine thread); Linux caps it at net.core.somaxconn
    request_queue_size = 1024

    def __init__(self, llm: LLM, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
                 quiet: bool = False, api_key: str | None = None, ssl_context: ssl.SSLContext | None = None):
        self.loop: EngineLoop | None = None  # a failed bind calls server_close before there is one
        super().__init__((host, port), Handler)
        if ssl_context is not None:  # HTTPS; each connection's handshake runs on its own handler thread
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.llm, self.quiet, self.created, self.api_key = llm, quiet, int(time.time()), api_key
        self.http_counts: dict[tuple[str, int], int] = {}  # (route, status) -> responses
        self.counts_lock = threading.Lock()
        self.handlers: set[Handler] = set()  # one per connection whose thread may still run
        self.handlers_lock = threading.Lock()
        self.closing = False
        self.model_name = model_name or llm.model_dir.name
        self.loop = EngineLoop(llm)

    def server_close(self) -> None:
        """Stop listening, stop the engine thread (running requests get a 503), then end every connection's
        handler: one idle on a kept-alive connection would otherwise hold the server (and its model) past
        the close, and free its tensors while the interpreter shuts down, which aborts the process."""
        super().server_close()
        if self.loop is not None and self.loop.thread.is_alive():
            self.loop.stop()
        with self.handlers_lock:
            self.closing = True  # a connection accepted from now on is ended at once (track)
            handlers = list(self.handlers)
        for handler in handlers:
            _end_reads(handler.connection)  # a handler waiting for a request reads the end
        deadline = time.monotonic() + HANDLER_JOIN_SECONDS
        for handler in handlers:  # to its thread's very end, which drops the thread's hold on the server
            handler.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def track(self, handler: "Handler") -> None:
        """Keep a connection's handler until its thread has ended (reaping those that have)."""
        with self.handlers_lock:
            self.handlers = {h for h in self.handlers if h.thread.is_alive()}
            self.handlers.add(handler)
            if self.closing:
                _end_reads(handler.connection)

    def count(self, path: str, status: int) -> None:
        route = (path if path in ROUTES or path in TOKENIZER_ROUTES or path in GET_ROUTES
                 else "/v1/models/{model}" if path.startswith("/v1/models/") else "other")  # "other": no such route
        with self.counts_lock:
            self.http_counts[route, status] = self.http_counts.get((route, status), 0) + 1

    def http_metrics(self) -> str:
        with self.counts_lock:
            counts = sorted(self.http_counts.items())
        lines = ["# HELP s1engine_http_requests_total HTTP responses by route and status",
                 "# TYPE s1engine_http_requests_total counter"]
        lines += [f's1engine_http_requests_total{{route="{route}",status="{status}"}} {n}' for (route, status), n in counts]
        return "\n".join(lines) + "\n"

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that left is not worth a traceback
            super().handle_error(request, client_address)


def _end_reads(connection: socket.socket) -> None:
    try:
        socket.socket.shutdown(connection, socket.SHUT_RD)  # the raw socket's: TLS state stays to its thread
    except OSError:
        pass


@contextlib.contextmanager
def in_background(server: OpenAIServer):
    """Serve on a thread for the with-block (an app embedding the server, tests); then stop it (running
    requests get a 503) and wait for the thread, so nothing of it outlives the block."""
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # seconds a socket read or write may block: a client that stalls mid-body or stops reading
    server: OpenAIServer

    def setup(self) -> None:
        super().setup()
        self.thread = threading.current_thread()
        self.server.track(self)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # under the socket timeout; a failed one ends this connection only

    @property
    def route(self) -> str:
        """The request's path without its query string, which no route reads (as in vLLM)."""
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self._allowed_method() == "POST":
            self._wrong_method()
        elif self.route == "/health":
            alive = self.server.loop.thread.is_alive()
            self._send_json(200 if alive else 503, {"status": "ok" if alive else "the engine thread has stopped"})
        elif self.route == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self._model_card()]})
        elif self.route.startswith("/v1/models/"):
            name = unquote(self.route.removeprefix("/v1/models/"))  # "org%2Fmodel" names "org/model"
            if name == self.server.model_name:
                self._send_json(200, self._model_card())
            else:
                self._send_error(ApiError(f"the model {name!r} does not exist; this server serves "
                                          f"{self.server.model_name!r}", 404, param="model", kind="not_found_error"))
        elif self.route == "/tokenizer_info":
            self._engine_reply(tokenizer_info)
        elif self.route == "/metrics":
            self._engine_reply(lambda llm: self.server.loop.metrics() + self.server.http_metrics())
        else:
            self._send_error(ApiError(f"no route GET {self.route}", 404, kind="not_found_error"))

    def do_HEAD(self) -> None:
        """GET's status and headers without its body (probes use HEAD /health); 405 or 404 as for PUT."""
        if self._allowed_method() == "GET":
            self.do_GET()
        else:
            self._wrong_method()

    def _allowed_method(self) -> str | None:
        """The method the route takes, None for an unknown path."""
        if self.route in GET_ROUTES or self.route.startswith("/v1/models/"):
            return "GET"
        return "POST" if self.route in (*ROUTES, *TOKENIZER_ROUTES) else None

    def _wrong_method(self) -> None:
        """A method the route does not take: 405 naming the one it takes, or 404 for an unknown path."""
        self.close_connection = True  # any body is left unread
        allowed = self._allowed_method()
        if allowed is None:
            self._send_error(ApiError(f"no route {self.command} {self.route}", 404, kind="not_found_error"))
        else:
            self._send_error(ApiError(f"{self.route} takes {allowed}, not {self.command}", 405), {"Allow": allowed})

    do_PUT = do_DELETE = do_PATCH = _wrong_method

    def _model_card(self) -> dict:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created,
                "owned_by": "s1engine", "max_model_len": self.server.llm.max_model_len}

    def do_POST(self) -> None:
        if not self._authorized():
            return
        if self._allowed_method() == "GET":
            self._wrong_method()
            return
        if self.route in TOKENIZER_ROUTES:
            try:
                body = self._read_json()
                if self.route == "/tokenize":
                    prompt, special = parse_tokenize(body)
                    self._engine_reply(lambda llm: tokenize(llm, prompt, special))
                else:
                    tokens = parse_detokenize(body, self.server.llm.config.vocab_size)
                    self._engine_reply(lambda llm: {"prompt": llm.tokenizer.decode(tokens)})
            except ApiError as e:
                self._send_error(e)
            return
        if self.route not in ROUTES:
            routes = ", ".join([*ROUTES, *TOKENIZER_ROUTES])
            self._send_error(ApiError(f"no route POST {self.route}; try {routes}", 404, kind="not_found_error"))
            return
        try:
            api = parse_request(self._read_json(), ROUTES[self.route], self.server.model_name,
                                self.server.llm.max_model_len)
        except ApiError as e:
            self._send_error(e)
            return
        job = Job(api, self.server.model_name)
        self.server.loop.submit(job)
        kind, payload = self._next_event(job)
        if kind == "error":
            self._send_error(payload)
        elif kind == "started" and api.stream:
            self._stream(job)
        elif kind == "started":
            kind, payload = self._next_event(job)
            if kind == "error":
                self._send_error(payload)
            elif kind == "response":
                self._send_json(200, payload)

    def _authorized(self) -> bool:
        """With an API key set, a request outside OPEN_ROUTES must carry it as a bearer token (else a 401)."""
        key = self.server.api_key
        if key is None or self.route in OPEN_ROUTES:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return True
        self.close_connection = True  # any body is left unread
        self._send_error(ApiError("a valid API key is needed: send the header 'Authorization: Bearer KEY'", 401,
                                  kind="authentication_error"), {"WWW-Authenticate": "Bearer"})
        return False

    def _engine_reply(self, fn: Callable[[LLM], object]) -> None:
        """Answer with fn(llm) run on the engine thread: a dict as JSON, a str as Prometheus text."""
        try:
            body = self.server.loop.call(fn)
        except RuntimeError as e:  # the engine thread has stopped, or is stopping
            self._send_error(ApiError(str(e), 503, kind="server_error"))
            return
        except (ValueError, TypeError, TemplateError) as e:  # the request's fault (a conversation the template refuses)
            self._send_error(ApiError(str(e), param=param_of(str(e))))
            return
        except Exception as e:
            self._send_error(engine_error(e))
            return
        if isinstance(body, dict):
            self._send_json(200, body)
        else:
            self._send_body(200, body.encode(), "text/plain; version=0.0.4")

    def _next_event(self, job: Job) -> tuple[str, object]:
        """The job's next event; ("left", None) once the client has hung up, its job then aborted."""
        while True:
            try:
                return job.events.get(timeout=CLIENT_POLL_SECONDS)
            except queue.Empty:
                if not self.server.loop.thread.is_alive():
                    return "error", ApiError("the engine thread has stopped; restart the server", 503,
                                             kind="server_error")
                if self._client_left():
                    self.server.loop.abort(job)
                    self.close_connection = True
                    return "left", None

    def _client_left(self) -> bool:
        """A client waiting for its reply sends nothing: a readable socket with no bytes is a closed one. (Over
        TLS the peek reads the raw socket, where a client's close_notify precedes its end: such a client is
        noticed when a write to it fails.)"""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # a body may follow that is not read
            raise ApiError("the request needs a Content-Length header (chunked bodies are not read)", 411)
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            raise ApiError(f"the body is {int(length)} bytes; at most {MAX_BODY_BYTES} are read", 413)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(f"the body is not valid JSON: {e}") from None

    def _stream(self, job: Job) -> None:
        self.server.count(self.route, 200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                kind, payload = self._next_event(job)
                if kind == "left":
                    return
                if kind == "chunk":
                    self._write_event(json.dumps(payload))
                elif kind == "error":
                    self._write_event(json.dumps(payload.body()))
                if kind in ("error", "done"):
                    self._write_event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except OSError:  # the client left (or stopped reading): stop spending compute on it
            self.server.loop.abort(job)
            self.close_connection = True

    def _write_event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        self._send_body(status, json.dumps(body).encode(), "application/json", headers)

    def _send_body(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.server.count(self.route, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # a body left unread: say so, so the client does not reuse the connection
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, error: ApiError, headers: dict[str, str] | None = None) -> None:
        self._send_json(error.status, error.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (an unsupported method, a malformed request line, headers too long) as
        the same JSON errors as ours, not its HTML page; the connection closes after them."""
        self.close_connection = True
        self.server.count(self.route if self.command else "", code)  # no command: the request line was bad
        error = ApiError(message or HTTPStatus(code).phrase, code)
        data = json.dumps(error.body()).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def tokenizer_info(llm: LLM) -> dict:
    """vLLM's /tokenizer_info fields that clients read (lm-eval's RemoteTokenizer among them)."""
    hf = llm.tokenizer.hf
    return {"tokenizer_class": type(hf).__name__, "eos_token": hf.eos_token, "bos_token": hf.bos_token,
            "pad_token": hf.pad_token, "chat_template": hf.chat_template or CHATML_TEMPLATE,
            "model_max_length": llm.max_model_len}


def tokenize(llm: LLM, prompt: str | list[dict], add_special_tokens: bool) -> dict:
    if isinstance(prompt, str):
        tokens = llm.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
    else:
        tokens = llm.chat_prompt(prompt, SamplingParams())
    return {"count": len(tokens), "max_model_len": llm.max_model_len, "tokens": tokens}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="default 8000 (0: any free port)")
    p.add_argument("--served-model-name", default=None, help="the `model` clients name (default: the model dir's name)")
    p.add_argument("--quiet", action="store_true", help="no access log")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key")
    p.add_argument("--api-key", default=os.environ.get("S1_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on every route but /health and /metrics "
                        "(default: $S1_API_KEY; unset: no key)")
    add_engine_args(p)
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if args.served_model_name is not None and not args.served_model_name.strip():
        p.error("--served-model-name must not be empty")
    if args.api_key is not None and not args.api_key.strip():
        p.error("--api-key must not be empty")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        p.error("--ssl-certfile and --ssl-keyfile go together")
    return args


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for HTTPS; a missing file or a key that does not match the certificate is a
    ValueError naming the files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load --ssl-certfile {certfile} with --ssl-keyfile {keyfile}: {e}") from None
    return context


def check_address(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be listened on (a taken port, an unknown host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
        probe.bind((host, port))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_address(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    try:
        context = None if args.ssl_certfile is None else tls_context(args.ssl_certfile, args.ssl_keyfile)
        llm = llm_from_args(args)
        server = OpenAIServer(llm, args.host, args.port, args.served_model_name, args.quiet, args.api_key, context)
    except (ValueError, TypeError, OSError) as e:  # bad model dir, bad engine flag, port taken meanwhile
        print(f"error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    scheme = "http" if context is None else "https"
    print(f"serving {server.model_name!r} at {scheme}://{host}:{port}/v1 (Ctrl-C stops)", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: running requests get a 503, as on Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
