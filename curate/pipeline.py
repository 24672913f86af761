"""The whole curation, stage by stage: pool -> quality -> decontamination -> difficulty -> domain -> diversity."""
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curate.attempt_cache import AttemptCache
from curate.champ_pool import champ_cache_path, champ_pool
from curate.decontaminate import decontaminate
from curate.difficulty import AttemptSettings, filter_by_difficulty, model_name
from curate.diversity import select_diverse
from curate.domain import assign_domains
from curate.funnel import StageResult
from curate.output import write_outputs
from curate.pool import PoolRow, load_pool
from curate.quality import FORMAT_RULES, filter_quality
from curate.report import write_report


@dataclass
class CurateConfig:
    pool: str
    output: str
    evals: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    size: int = 1000
    think_format: str = "s1"
    thinking_cap: int = 1024
    max_answer_tokens: int = 256
    seed: int = 0
    tokenizer: str | None = None  # trace lengths are counted in its tokens; default: the first model's
    cache: str | None = None  # default: OUTPUT/attempts.jsonl
    batch_size: int = 32
    keep_sources: list[str] = field(default_factory=list)
    classify_domains: bool = False  # ignore the pool's own domain field
    limit: int | None = None  # the first N pool rows only
    progress: bool = True

    @property
    def settings(self) -> AttemptSettings:
        return AttemptSettings(self.thinking_cap, self.think_format, self.max_answer_tokens)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.output) / "attempts.jsonl"

    def tokenizer_dir(self) -> str:
        if self.tokenizer:
            return self.tokenizer
        if self.models:
            return self.models[0]
        from engine.weights import default_model_dir
        return str(default_model_dir())


def resolve_models(models: list[str]) -> list[str]:
    """'default' names the engine's default model."""
    if "default" not in models:
        return models
    from engine.weights import default_model_dir
    return [str(default_model_dir()) if m == "default" else m for m in models]


def eval_questions(specs: list[str]) -> list[str]:
    from benchmarks.evalsets import load_eval_set
    return [item.question for spec in specs for item in load_eval_set(spec)]


def read_pool(config: CurateConfig, rows: list[PoolRow] | None = None) -> list[PoolRow]:
    rows = (load_pool(config.pool, config.progress) if rows is None else rows)[:config.limit]
    if config.classify_domains:
        for row in rows:
            row.domain = None
    return rows


def run_pipeline(config: CurateConfig, command: str = "") -> tuple[list[StageResult], dict[str, Path]]:
    config.models = resolve_models(config.models)
    rows = read_pool(config)
    results = [filter_quality(rows)]
    results.append(decontaminate(results[-1].kept, eval_questions(config.evals), progress=config.progress))
    results.append(filter_by_difficulty(results[-1].kept, config.models, config.settings, config.cache_path,
                                        config.tokenizer_dir(), config.batch_size, progress=config.progress))
    results.append(assign_domains(results[-1].kept))
    candidates = results[-1].kept
    results.append(select_diverse(candidates, config.size, config.seed, tuple(config.keep_sources)))
    selected = results[-1].kept
    paths = write_outputs(selected, config.output, config.think_format)
    paths["report"] = write_report(results, candidates, selected, config.output, command)
    return results, paths


def dry_run(config: CurateConfig) -> str:
    """What each stage would do. The cheap stages (quality, decontamination) run to count what flows on; no model
    is loaded, nothing is written."""
    config.models = resolve_models(config.models)
    if config.pool == "champ" and not champ_cache_path().is_file():
        rows = read_pool(config, champ_pool(grade_fn=lambda output, reference: True, progress=False))
        lines = [f"pool: champ is not built yet: the run first grades its teacher traces (minutes; then cached at "
                 f"{champ_cache_path()}); the counts below take every problem's longest trace as correct"]
    else:
        rows = read_pool(config)
        lines = [f"pool: {config.pool}: {len(rows)} rows"]
    quality = filter_quality(rows)
    lines.append(f"quality: drop errors, missing fields, {len(FORMAT_RULES)} format rules "
                 f"({', '.join(r.name for r in FORMAT_RULES)}), exact and normalised duplicates -> "
                 f"{quality.rows_out} of {quality.rows_in} kept {dict(quality.reasons())}")
    questions = eval_questions(config.evals)
    decon = decontaminate(quality.kept, questions)
    lines.append(f"decontamination: word 8-grams against {len(questions)} questions of {config.evals or 'no eval sets'}"
                 f" -> {decon.rows_out} of {decon.rows_in} kept")
    cache = AttemptCache(config.cache_path)
    distinct = {r.question_hash for r in decon.kept}
    lines.append(f"difficulty: trace tokens by {config.tokenizer_dir()}; greedy attempts, thinking cap "
                 f"{config.thinking_cap}, format {config.think_format}, batch {config.batch_size}, cache "
                 f"{config.cache_path} ({len(cache)} attempts)")
    for model in config.models:
        cached = sum(cache.get(h, model_name(model), config.settings.key) is not None for h in distinct)
        lines.append(f"  {model}: {len(distinct) - cached} of {len(distinct)} questions to attempt")
    if not config.models:
        lines.append("  no models: nothing is dropped")
    own = Counter(r.domain for r in decon.kept if r.domain)
    lines.append(f"domain: {sum(own.values())} rows keep the pool's field ({len(own)} domains), "
                 f"{decon.rows_out - sum(own.values())} get MSC keyword rules")
    lines.append(f"diversity: select {config.size} with seed {config.seed}"
                 + (f", must keep sources {config.keep_sources}" if config.keep_sources else ""))
    lines.append(f"outputs: {config.output}/selected.jsonl, sft_{config.think_format}.jsonl, report.md, "
                 "domains.png, trace_lengths.png")
    return "\n".join(lines)
