"""lm-eval tasks as YAML over local JSONL files, the way s1's task dirs look (for the lm-eval tests)."""
import json
from pathlib import Path

HEADER = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
"""
MULTIPLE_CHOICE = """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""


def generate_until(generation_kwargs: str, repeats: int = 1) -> str:
    """A generate task's body; generation_kwargs are YAML lines under `generation_kwargs:`."""
    return f"""output_type: generate_until
doc_to_target: "{{{{answer}}}}"
repeats: {repeats}
generation_kwargs:
  until: ["Question:"]
  max_gen_toks: 40
  do_sample: false
{generation_kwargs}metric_list:
  - metric: exact_match
"""


def write_task(root: Path, name: str, docs: list[dict], body: str) -> None:
    """root/name.yaml over root/name.jsonl holding docs."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / f"{name}.yaml").write_text(HEADER.format(name=name, data=data) + body)
