"""`task.kind: generate` end to end through the local OpenAI-compatible server: config, ingest of
Alpaca-style records, the stored completions with their tokens, the cache, the generation
report and `datasets show`; bad input is one line, exit 2, and the store is left as it was."""

import json
from statistics import fmean

import numpy as np
import pyarrow as pa
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows import ConfigError, load_config
from stillroom.flows._cli import app
from stillroom.flows._teacher import build_teacher, read_source
from stillroom.labelers import EMPTY_COMPLETION, REFUSAL, Price
from stillroom.storage import Licence, Store
from tests.conftest import DATA
from tests.flows.test_cli_errors import snapshot
from tests.labelers import test_local
from tests.openai_server import REFUSAL_TEXT, expected_generation

tiny_lm = test_local.tiny_lm  # a tiny Llama with random weights, saved as a transformers folder
PRICE = {"input_per_1m": 1.0, "output_per_1m": 2.0}
EDGES = {"r07": "EMPTY", "r13": "REFUSE", "r21": "FILTER"}


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def alpaca_rows(n=30):
    """Alpaca-style records: every third has an input, three trigger the server's edge cases."""
    rows = []
    for i in range(n):
        record_id = f"r{i:02d}"
        instruction = f"Write about river number {i} {EDGES.get(record_id, '')}".strip()
        rows.append(
            {
                "id": record_id,
                "instruction": instruction,
                "input": f"The river runs past house {i}." if i % 3 == 0 else "",
                "output": "the river runs under the bridge" if i % 2 else None,
            }
        )
    return rows


def write_generate(tmp_path, url="http://127.0.0.1:9/v1", changes=None, rows=None):
    data = tmp_path / "alpaca.jsonl"
    rows = alpaca_rows() if rows is None else rows
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "gen",
        "store": str(tmp_path / "store"),
        "data": {
            "path": str(data),
            "instruction_field": "instruction",
            "input_field": "input",
            "gold_field": "output",
            "licence": "MIT",
            "licence_statement": "MIT License",
        },
        "task": {
            "kind": "generate",
            "instructions": "Answer in prose.",
            "system_prompt": "You write calm prose.",
            "max_tokens": 24,
            "top_logprobs": 3,
        },
        "teacher": {
            "provider": "openai",
            "model": "fake",
            "base_url": url,
            "api_key_env": None,
            "price": PRICE,
            "terms": "openai",
        },
    }
    for dotted, value in (changes or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "generate.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr.strip(), result.stdout


def sent(config_path, text):
    """What the server answers to the request the configured teacher sends for `text`."""
    teacher = build_teacher(load_config(config_path))
    return expected_generation(teacher.build_request(text))


def as_steps(choice):
    """The server's logprobs as the stored `tokens` column holds them."""
    if "logprobs" not in choice:
        return None
    return [
        {
            "token": s["token"],
            "logprob": s["logprob"],
            "top": [{"token": t["token"], "logprob": t["logprob"]} for t in s["top_logprobs"]],
        }
        for s in choice["logprobs"]["content"]
    ]


def test_label_stores_exactly_what_the_server_sent_and_a_rerun_pays_nothing(fake_openai, tmp_path):
    server, url = fake_openai()
    config = write_generate(tmp_path, url)
    code, err, out = cli("label", config)
    assert code == 0, err
    assert out.strip() == "gen@v1"
    assert "27 completed, 3 failed" in err and "30 teacher calls, 0 cache hits" in err
    assert sum(server.billed.values()) == 30

    store = Store(tmp_path / "store")
    rows = store.load(store.resolve("gen@v1")).to_pylist()
    assert [r["id"] for r in rows] == [f"r{i:02d}" for i in range(30)]
    by_id = {r["id"]: r for r in rows}
    # the prompt: the instruction, then a blank line and the input when there is one
    assert by_id["r03"]["text"] == "Write about river number 3\n\nThe river runs past house 3."
    assert by_id["r04"]["text"] == "Write about river number 4"
    assert (
        by_id["r01"]["gold"] == "the river runs under the bridge" and by_id["r02"]["gold"] is None
    )
    price = Price(**PRICE)
    for row in rows:
        response = sent(config, row["text"])
        choice = response["choices"][0]
        usage = response["usage"]
        assert row["tokens"] == as_steps(choice), row["id"]
        assert row["finish_reason"] == choice["finish_reason"]
        assert (row["input_tokens"], row["output_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert row["cost_usd"] == pytest.approx(
            price.cost(usage["prompt_tokens"], usage["completion_tokens"])
        )
        if row["id"] not in EDGES:
            assert row["error"] is None
            assert row["completion"] == row["raw"] == choice["message"]["content"]
            assert row["completion"] == "".join(s["token"] for s in row["tokens"])
            assert all(len(s["top"]) == 3 for s in row["tokens"])
    assert {r["finish_reason"] for r in rows if r["id"] not in EDGES} >= {"length"}

    # failures are rows, with their reason and what the teacher said
    empty, refused, filtered = (by_id[i] for i in EDGES)
    assert (empty["error"], empty["completion"], empty["raw"]) == (EMPTY_COMPLETION, "", "")
    assert (refused["error"], refused["completion"], refused["raw"]) == (
        REFUSAL,
        None,
        REFUSAL_TEXT,
    )
    assert filtered["error"] == f"{REFUSAL}: content_filter"
    assert filtered["finish_reason"] == "content_filter" and filtered["raw"]

    manifest = store.manifest(store.resolve("gen@v1"))
    assert manifest["task"] == {
        "kind": "generate",
        "max_tokens": 24,
        "temperature": 0.0,
        "stop": [],
        "top_logprobs": 3,
        "instructions": "Answer in prose.",
    }
    teacher = manifest["teacher"]
    assert (teacher["provider"], teacher["model"], len(teacher["prompt_hash"])) == (
        "openai",
        "fake",
        16,
    )
    assert teacher["parameters"]["max_tokens"] == 24
    assert manifest["licence"]["spdx"] == "MIT" and manifest["terms"]["profile"] == "openai"
    assert manifest["labeling"]["labeled"] == 27 and manifest["labeling"]["failures"] == {
        EMPTY_COMPLETION: 1,
        REFUSAL: 1,
        f"{REFUSAL}: content_filter": 1,
    }
    assert manifest["schema"]["tokens"] == (
        "list<item: struct<token: string, logprob: double, "
        "top: list<item: struct<token: string, logprob: double>>>>"
    )
    assert (
        "task_categories:\n- text-generation"
        in (tmp_path / "store" / "datasets" / "gen" / "v1" / "README.md").read_text()
    )
    assert cli("datasets", "verify", "gen@v1", "--store", tmp_path / "store")[0] == 0

    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "gen@v1", err
    assert "0 teacher calls, 30 cache hits" in err
    assert sum(server.billed.values()) == 30


def test_run_writes_the_generation_report_and_show_prints_it(fake_openai, tmp_path):
    _, url = fake_openai()
    rows = alpaca_rows()
    config = write_generate(tmp_path, url, rows=rows)
    # two references are exactly what the teacher writes: exact match is 2 of the rest
    for i in (5, 11):
        prompt = f"Write about river number {i}"
        rows[i]["output"] = sent(config, prompt)["choices"][0]["message"]["content"]
    config = write_generate(tmp_path, url, rows=rows)
    code, err, out = cli("run", config, "--out", tmp_path / "run")
    assert code == 0, err
    assert out.strip().endswith(str(tmp_path / "run" / "report.json"))
    assert "training" not in err.splitlines()[-1] and "statistics" in err.splitlines()[-1]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["students"] == [] and report["teacher"] == {
        "provider": "openai",
        "model": "fake",
        "recorded_at": None,
        "accuracy_vs_gold": None,
    }
    assert report["dataset"] == {"name": "gen", "version": "v1", "rows": 30}
    assert (report["labeling"]["labeled"], report["labeling"]["teacher_calls"]) == (27, 30)

    store = Store(tmp_path / "store")
    stored = store.load(store.resolve("gen@v1")).to_pylist()
    done = [r for r in stored if r["error"] is None]
    pairs = [(r["completion"], r["gold"]) for r in done if r["gold"] is not None]
    # imported here, after the run has imported it: absl (which rouge-score imports) binds a log
    # handler to the sys.stderr of its first import, and a later logging.config call closes
    # that stream, which must not be pytest's
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    lengths = [r["output_tokens"] for r in done]
    gen = report["generation"]
    assert (gen["records"], gen["completed"], gen["failed"]) == (30, 27, 3)
    assert gen["failures"] == {EMPTY_COMPLETION: 1, REFUSAL: 1, f"{REFUSAL}: content_filter": 1}
    finish = {}
    for r in stored:
        if r["finish_reason"]:
            finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
    assert gen["finish_reasons"] == finish and set(finish) == {"stop", "length", "content_filter"}
    assert gen["output_tokens"] == {
        "mean": pytest.approx(fmean(lengths), abs=1e-4),
        "median": pytest.approx(float(np.median(lengths)), abs=1e-4),
        "p95": pytest.approx(float(np.percentile(lengths, 95)), abs=1e-4),
    }
    assert gen["references"] == len(pairs) > 10
    rouge = fmean(scorer.score(g, c)["rougeL"].fmeasure for c, g in pairs)
    assert gen["rougeL_vs_reference"] == pytest.approx(rouge, abs=1e-4) and 0 < rouge < 1
    assert gen["exact_match_vs_reference"] == pytest.approx(2 / len(pairs), abs=1e-4)
    assert gen["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in stored), abs=1e-6)
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.startswith("# gen: generation report")
    assert "27 of 30 records completed, 3 failed" in md and "ROUGE-L F1" in md

    code, _, out = cli("datasets", "show", "gen@v1", "--store", tmp_path / "store", "--failures", 5)
    assert code == 0
    assert f"ROUGE-L F1 {gen['rougeL_vs_reference']:.4f}" in out
    assert "Finish reasons: " in out and "output tokens" in out and "3 failed records" in out
    assert f"r13\t{REFUSAL}\t{REFUSAL_TEXT}" in out

    # a config without students has nothing to train: refused before anything runs
    code, err, _ = cli("train", config, "--dataset", "gen@v1")
    assert code == 2 and "gen@v1 holds completions and the config has no students" in err


def test_a_local_transformers_teacher_generates_through_the_same_flow(tiny_lm, tmp_path):
    teacher = {"provider": "transformers", "model": str(tiny_lm), "min_labeled": 0}
    config = write_generate(tmp_path, changes={"teacher": teacher, "data.limit": 8})
    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "gen@v1", err
    assert "8 teacher calls, 0 cache hits" in err
    store = Store(tmp_path / "store")
    rows = store.load(store.resolve("gen@v1")).to_pylist()
    assert len(rows) == 8 and all(r["error"] in (None, EMPTY_COMPLETION) for r in rows)
    for row in rows:
        assert row["finish_reason"] in ("stop", "length") and row["cost_usd"] == 0
        assert isinstance(row["completion"], str) and row["tokens"]
        assert all(len(s["top"]) == 3 for s in row["tokens"])
    manifest = store.manifest(store.resolve("gen@v1"))
    assert manifest["teacher"]["provider"] == "transformers"
    assert manifest["teacher"]["parameters"]["max_tokens"] == 24
    assert manifest["terms"]["profile"] == "apache-2.0"
    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "gen@v1" and "0 teacher calls, 8 cache hits" in err


def test_estimate_counts_prompts_and_max_tokens_as_an_upper_bound(tmp_path):
    config = write_generate(tmp_path)
    code, err, out = cli("estimate", config)
    assert code == 0, err
    fields = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert (fields["records"], fields["requests"], fields["to label"]) == ("30", "30", "30")
    assert int(fields["output tokens (max_tokens each, upper bound)"]) == 30 * 24
    inputs = int(fields["input tokens"])
    assert inputs > 30 * 10
    assert float(fields["cost_usd (upper bound, all max_tokens long)"]) == (
        pytest.approx(round((inputs * 1.0 + 30 * 24 * 2.0) / 1e6, 4))
    )


def test_config_defaults_and_the_kind_specific_keys(tmp_path):
    config = load_config(write_generate(tmp_path), ["task.max_tokens=256"])
    assert config.students == [] and config.task.labels is None
    plain = write_generate(tmp_path)
    raw = yaml.safe_load(plain.read_text())
    for key in ("instructions", "max_tokens", "top_logprobs"):
        del raw["task"][key]
    plain.write_text(yaml.safe_dump(raw))
    defaults = load_config(plain).task
    assert (defaults.instructions, defaults.max_tokens, defaults.top_logprobs) == ("", 256, 0)
    assert (defaults.temperature, defaults.stop) == (0.0, [])
    with pytest.raises(ConfigError, match="task.max_tokens is only for task.kind generate"):
        load_config(write_generate(tmp_path), ["task.kind=classify", "task.labels=[a, b]"])


def test_a_prompt_template_wraps_the_instruction_and_input(tmp_path):
    template = "### Instruction\n{instruction}\n### Input\n{input}\n### Response"
    config = load_config(write_generate(tmp_path, changes={"data.prompt_template": template}))
    texts = read_source(config).column("text").to_pylist()
    assert texts[3] == (
        "### Instruction\nWrite about river number 3\n### Input\n"
        "The river runs past house 3.\n### Response"
    )
    assert texts[4].endswith("### Input\n\n### Response")


BAD = {
    "no instruction field in the data": (
        {"data.path": str(DATA), "data.input_field": None, "data.gold_field": None},
        f"data.instruction_field 'instruction' is not a column of {DATA}",
    ),
    "top_logprobs above 20": (
        {"task.top_logprobs": 21},
        "config key 'task.top_logprobs': Input should be less than or equal to 20",
    ),
    "zero-shot provider": (
        {"teacher": {"provider": "zero-shot"}},
        "teacher.provider zero-shot cannot generate: use provider openai, transformers or recorded",
    ),
    "student provider": (
        {"teacher": {"provider": "student", "path": "/tmp"}},
        "teacher.provider student cannot generate: use provider openai, transformers or recorded",
    ),
    "labels for generate": (
        {"task.labels": ["a", "b"]},
        "task.labels is only for task.kind classify: remove it for task.kind generate",
    ),
    "students for generate": (
        {"students": [{"kind": "logreg"}]},
        "students.0: a logreg student classifies; a generate version's completions train kind generative",
    ),
    "a classification teacher key": (
        {"teacher.temperature": 0.7},
        "teacher.temperature is for classification: set task.temperature for task.kind generate",
    ),
    "template with an unknown field": (
        {"data.prompt_template": "{text}"},
        "data.prompt_template uses {text}, which these records do not have",
    ),
    "an empty instruction": (
        {"data.instruction_field": "output", "data.input_field": None},
        "record(s) have an empty 'output', first id 'r00'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_generate_input_is_one_line_exit_2_store_untouched(case, tmp_path):
    store = Store(tmp_path / "store")
    store.commit("earlier", pa.table({"id": ["a"], "text": ["b"]}), licence=Licence("MIT"))
    before = snapshot(tmp_path / "store")
    changes, message = BAD[case]
    code, err, _ = cli("run", write_generate(tmp_path, changes=changes))
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert snapshot(tmp_path / "store") == before
