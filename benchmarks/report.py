"""Markdown summary of a throughput run: engine vs peer tokens/s per scenario, against the targets.

    python -m pytest benchmarks/test_throughput.py --benchmark-json=/tmp/bench.json
    python -m benchmarks.report /tmp/bench.json
"""
import argparse
import json
import sys

SCENARIOS = {  # scenario -> (peer, target engine/peer tokens/s ratio); sizes come from the run's group
    "a": ("transformers generate", 1.3),
    "b": ("batched transformers generate", 2.0),
    "c": ("s1's re-prefill loop over transformers", 2.0),
    "d": ("the 6 settings run one by one through the engine", None),  # target: 0.8x the computed-token ratio
    "e": ("8 separate requests, prefix caching off", None),
    "f": ("transformers forward over padded batches of the pairs", None),
}


def load(path: str) -> dict[str, dict[str, dict]]:
    """scenario -> role ("engine" / "peer") -> benchmark entry."""
    with open(path) as f:
        data = json.load(f)
    found: dict[str, dict[str, dict]] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "scenario" in info and "role" in info:
            found.setdefault(info["scenario"], {})[info["role"]] = bench
    return found


def ratio_of(sides: dict[str, dict], key: str = "tokens_per_s") -> float | None:
    """Engine tokens/s over peer tokens/s: median rounds (tokens_per_s) or fastest (tokens_per_s_best)."""
    if "engine" not in sides or "peer" not in sides:
        return None
    return sides["engine"]["extra_info"][key] / sides["peer"]["extra_info"][key]


def target_of(key: str, sides: dict[str, dict]) -> float | None:
    """The ratio to reach: fixed, or for (d) 0.8 times the computed-token ratio (saved compute must show
    up as saved time); (e) has none, its counters are checked by the benchmark itself."""
    target = SCENARIOS[key][1]
    if key == "d" and "engine" in sides and "peer" in sides:
        computed = [sides[r]["extra_info"]["computed_tokens"] for r in ("peer", "engine")]
        target = 0.8 * computed[0] / computed[1]
    return target


def render(found: dict[str, dict[str, dict]]) -> str:
    lines = ["# Throughput: engine vs peer (same run, same model, same prompts)", ""]
    lines += [
        "tokens/s from each side's median round; the last column compares the fastest rounds instead.",
        "",
        "| scenario | engine tok/s | peer tok/s | ratio | target | result | ratio (fastest rounds) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for key in SCENARIOS:
        sides = found.get(key, {})
        ratio, target = ratio_of(sides), target_of(key, sides)
        tps = [f"{sides[r]['extra_info']['tokens_per_s']:.1f}" if r in sides else "-" for r in ("engine", "peer")]
        verdict = "-" if ratio is None or target is None else ("PASS" if ratio >= target else "MISS")
        best = ratio_of(sides, "tokens_per_s_best")
        shown, shown_best = ("-" if r is None else f"{r:.2f}x" for r in (ratio, best))
        shown_target = "-" if target is None else f">= {target:.2f}x"
        lines.append(f"| {key} | {tps[0]} | {tps[1]} | {shown} | {shown_target} | {verdict} | {shown_best} |")
    for key, (peer, _) in SCENARIOS.items():
        sides = found.get(key)
        if not sides:
            continue
        group = next(iter(sides.values())).get("group") or key
        lines += ["", f"## {group} (engine vs {peer})", ""]
        lines += ["| side | test | tokens | rounds | median s | min s | tokens/s | notes |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for role in ("engine", "peer"):
            if role not in sides:
                continue
            b, info = sides[role], sides[role]["extra_info"]
            stats = b["stats"]
            notes = ", ".join(
                f"{k}={_fmt(v)}" for k, v in info.items()
                if k not in ("scenario", "role", "tokens", "tokens_per_s", "tokens_per_s_best")
            )
            lines.append(
                f"| {role} | {b['name']} | {info['tokens']} | {stats['rounds']} | {stats['median']:.2f} | "
                f"{stats['min']:.2f} | {info['tokens_per_s']:.1f} | {notes} |"
            )
        ratio, target = ratio_of(sides), target_of(key, sides)
        if ratio is not None and target is not None:
            lines += ["", f"ratio {ratio:.2f}x, target >= {target:.2f}x: **{'PASS' if ratio >= target else 'MISS'}**"]
        elif ratio is not None:
            lines += ["", f"ratio {ratio:.2f}x"]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a pytest-benchmark JSON file (--benchmark-json=FILE)")
    args = parser.parse_args(argv)
    try:
        found = load(args.json)
    except (OSError, ValueError) as e:
        parser.error(f"{args.json}: not a readable pytest-benchmark JSON file ({e})")
    if not found:
        print(f"no throughput benchmarks in {args.json}", file=sys.stderr)
        return 1
    print(render(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
