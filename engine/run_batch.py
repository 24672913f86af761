"""OpenAI's batch file format, run offline on one engine:

    python -m engine.run_batch -i requests.jsonl -o results.jsonl [engine flags]

Each input line is a request of OpenAI's Batch API, `{"custom_id": "q1", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}` (or "/v1/completions"), its body as `engine.serve` takes it:
`thinking_budget` (a cap, an object, or a list: a sweep), `think_format`, `n`, `seed` and the rest. The
requests run together, as the server runs requests that arrive at once. Each result line is `{"id",
"custom_id", "response": {"status_code", "request_id", "body"}, "error": null, "request_sha256"}`, the
body the server's response, or its error (`{"error": {...}}`, status 400 or 404) for a request at fault
while the others run; the digest of the request and `engine` (the model, the name it is served as, the
device type and dtype) are this program's additions, for resuming.

Results are appended as requests finish, so a run that is stopped loses nothing it wrote: the same
command again keeps the results of requests that did not change, runs the rest (and any that failed on
the engine's side, status 5xx), and the finished file holds one line per request in the input's order.
A file of results that another engine made is refused, not mixed with this one's.
"""
import argparse
import hashlib
import json
import os
import queue
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from engine.device import resolve_device, resolve_dtype
from engine.engine_args import add_engine_args, llm_from_args
from engine.jsonl import read_objects
from engine.llm import LLM
from engine.openai_protocol import ApiError, parse_request
from engine.serve import CLIENT_POLL_SECONDS, ROUTES, EngineLoop, Job
from engine.weights import DEFAULT_MODEL_NAME

LINE_FIELDS = {"custom_id", "method", "url", "body"}


class BatchFileError(ValueError):
    pass


@dataclass(slots=True)
class BatchLine:
    custom_id: str
    chat: bool
    body: dict

    @property
    def digest(self) -> str:
        """What its result row records of it: a resume reuses a result only for the same request."""
        return hashlib.sha256(json.dumps([self.chat, self.body], sort_keys=True).encode()).hexdigest()


def read_batch(path: Path) -> list[BatchLine]:
    """The input's requests; a line that is not one (no custom_id, a repeated one, another url) is an
    error naming path:line, before any model loads."""
    if not path.is_file():
        raise BatchFileError(f"no input file {path}")
    lines, seen = [], {}
    for line_no, record in read_objects(path, BatchFileError):
        where = f"{path}:{line_no}"
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BatchFileError(f"{where}: custom_id must be a non-empty string, got {custom_id!r}")
        if custom_id in seen:
            raise BatchFileError(f"{where}: custom_id {custom_id!r} is also line {seen[custom_id]}'s; each must be unique")
        if set(record) - LINE_FIELDS:
            raise BatchFileError(f"{where}: unknown field(s) {sorted(set(record) - LINE_FIELDS)}; a line has "
                                 f"{', '.join(sorted(LINE_FIELDS))}")
        if record.get("method", "POST") != "POST":
            raise BatchFileError(f"{where}: method must be POST, got {record['method']!r}")
        if record.get("url") not in ROUTES:
            raise BatchFileError(f"{where}: url must be one of {', '.join(ROUTES)}, got {record.get('url')!r}")
        if not isinstance(record.get("body"), dict):
            raise BatchFileError(f"{where}: body must be a JSON object (the request), got {record.get('body')!r:.60}")
        seen[custom_id] = line_no
        lines.append(BatchLine(custom_id, ROUTES[record["url"]], record["body"]))
    if not lines:
        raise BatchFileError(f"{path} holds no requests")
    return lines


def engine_setup(args: argparse.Namespace) -> dict:
    """What a result depends on besides its request, known before the model loads: the model dir, the name
    request bodies may give it, the device type and the weights' dtype."""
    model = str(Path(args.model).resolve()) if args.model else DEFAULT_MODEL_NAME
    device = resolve_device(args.device)
    return {"model": model, "served_model_name": args.served_model_name or Path(model).name,
            "device": device.type, "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch.")}


def earlier_results(path: Path, lines: list[BatchLine], setup: dict) -> tuple[dict[str, dict], int]:
    """(results by custom_id, results dropped) of what an earlier run wrote to `path`. A result is kept
    for a line of the input with its custom_id and the same request (its `request_sha256`); results of
    requests since changed, renamed or removed are dropped, as are engine-side failures (5xx: they run
    again). A last line that a kill cut short (one of this program's rows, no newline at its end) is
    dropped, and blank lines skipped. A file that holds anything else, results but none for this input,
    or results another engine setup made, is not this batch's output: an error, so nothing of it is
    overwritten."""
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    rows = data.splitlines()
    digests = {line.custom_id: line.digest for line in lines}
    results, matched, stale = {}, 0, 0
    for line_no, raw in enumerate(rows, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            custom_id, status = row["custom_id"], row["response"]["status_code"]
            if not isinstance(custom_id, str) or not isinstance(status, int):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            if line_no == len(rows) and raw.startswith(b'{"id": "batch_req_') and not data.endswith(b"\n"):
                continue
            raise BatchFileError(f"{path}:{line_no}: not a result line, so {path} is not this batch's output "
                                 "(give another -o)") from None
        if custom_id not in digests or row.get("request_sha256") != digests[custom_id]:
            stale += 1
            continue
        made_by = row.get("engine") if isinstance(row.get("engine"), dict) else {}
        if made_by != setup:
            changed = ", ".join(f"{key} {made_by.get(key, 'not recorded')!r} (now {value!r})"
                                for key, value in setup.items() if made_by.get(key) != value)
            raise BatchFileError(f"{path}:{line_no}: a result of another engine setup: {changed}; run with the "
                                 "flags that made it, or give another -o")
        matched += 1
        if status < 500:
            results[custom_id] = row
    if stale and not matched:
        raise BatchFileError(f"{path} holds results, none of them for this input's requests: it is another "
                             "batch's output (give another -o)")
    return results, stale


def write_results(path: Path, rows: list[dict]) -> None:
    """Replace `path` with these result lines at once (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def result_row(line: BatchLine, outcome: dict | ApiError, setup: dict) -> dict:
    """OpenAI's result row, and the digest of its request and the engine setup that made it (fields
    OpenAI's rows lack: for resuming)."""
    error = isinstance(outcome, ApiError)
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id,
            "response": {"status_code": outcome.status if error else 200, "request_id": uuid.uuid4().hex,
                         "body": outcome.body() if error else outcome},
            "error": None, "request_sha256": line.digest, "engine": setup}


class Tagged:
    """A job's event sink that tags each event with the job's line, into one queue for all jobs."""

    def __init__(self, line: BatchLine, sink: queue.Queue):
        self.line, self.sink = line, sink

    def put(self, event: tuple[str, object]) -> None:
        self.sink.put((self.line, event))


def run_lines(llm: LLM, model_name: str, lines: list[BatchLine],
              window: int) -> Iterator[tuple[BatchLine, dict | ApiError]]:
    """(line, response body or error) for each line as it finishes, at most `window` requests queued at a
    time (each engine step visits every queued one)."""
    loop, events = EngineLoop(llm), queue.Queue()
    todo, in_flight = iter(lines), {}
    try:
        while True:
            while len(in_flight) < window and (line := next(todo, None)) is not None:
                try:
                    api = parse_request(line.body, line.chat, model_name, llm.max_model_len)
                    if api.stream:
                        raise ApiError("stream=true does not apply to a batch: results come whole", param="stream")
                except ApiError as e:
                    yield line, e
                    continue
                in_flight[line.custom_id] = line
                loop.submit(Job(api, model_name, Tagged(line, events)))
            if not in_flight:
                return
            try:
                line, (kind, payload) = events.get(timeout=CLIENT_POLL_SECONDS)
            except queue.Empty:
                if loop.thread.is_alive() or not events.empty():  # it may have put events before it ended
                    continue
                # a broken GPU ended the thread, which failed the jobs it held; the rest fail alike
                error = ApiError("the engine thread has stopped", 503, kind="server_error")
                for line in [*in_flight.values(), *todo]:
                    yield line, error
                return
            if kind in ("response", "error"):
                del in_flight[line.custom_id]
                yield line, payload
    finally:
        loop.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.run_batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="JSONL of OpenAI batch requests")
    p.add_argument("-o", "--output", required=True,
                   help="JSONL of results; an earlier run's file is resumed (its results kept, the rest run)")
    p.add_argument("--served-model-name", default=None,
                   help="the `model` request bodies may name (default: the model dir's name)")
    p.add_argument("--window", type=int, default=1024, help="requests queued in the engine at once (default 1024)")
    add_engine_args(p)
    args = p.parse_args(argv)
    if args.window < 1:
        p.error(f"--window must be positive, got {args.window}")
    return args


def run(args: argparse.Namespace) -> int:
    try:
        source = Path(args.input)
        lines = read_batch(source)
        given = Path(args.output)
        if given.exists() and not given.is_file():  # a dir, /dev/stdout, a pipe
            raise BatchFileError(f"-o {args.output} is not a regular file; give a file path for the results")
        out = given.resolve()  # a link's target is written, not the link replaced by a file
        if out.exists() and out.samefile(source):
            raise BatchFileError(f"-o {args.output} is the input file; give another path for the results")
        setup = engine_setup(args)
        done, dropped = earlier_results(out, lines, setup)
        pending = [line for line in lines if line.custom_id not in done]
        llm = llm_from_args(args) if pending else None
        out.parent.mkdir(parents=True, exist_ok=True)
        write_results(out, [done[line.custom_id] for line in lines if line.custom_id in done])
    except (ValueError, TypeError, OSError) as e:  # a bad file, a bad model dir or engine flag
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dropped:
        print(f"dropped {dropped} result(s) in {out} of requests the input has changed, renamed or removed",
              file=sys.stderr)
    if done:
        print(f"resuming: {len(done)} of {len(lines)} requests have results in {out}", file=sys.stderr)
    if pending:
        with out.open("a", encoding="utf-8") as f, tqdm(total=len(pending), unit="request") as bar:
            for line, outcome in run_lines(llm, setup["served_model_name"], pending, args.window):
                row = result_row(line, outcome, setup)
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[line.custom_id] = row
                bar.update()
    rows = [done[line.custom_id] for line in lines]
    write_results(out, rows)
    statuses = Counter(row["response"]["status_code"] for row in rows)
    print(f"{len(rows)} results in {out}: " + ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items())),
          file=sys.stderr)
    if any(status >= 500 for status in statuses):
        print("requests that failed on the engine's side run again when the same command is run again", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and a job scheduler's stop (SIGTERM; `timeout` sends it twice) end the run once: a second
    # signal while the engine thread stops would leave it running as the interpreter exits (an abort)
    handling = threading.current_thread() is threading.main_thread()
    before = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS} if handling else {}
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was written to {args.output} is kept; the same command resumes", file=sys.stderr)
        return 130
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum, frame) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
