"""`teacher.provider: recorded` end to end on the bundled real answers: ChatGPT's and
text-davinci-003's stance labels (llm_labels_css) and GPT-4's roleplay completions (GPTeacher).
Nothing is called; the versions carry the original model, date and terms; a record without an
answer fails with its reason; bad config or files are one line, exit 2, the store untouched."""

import json

import pyarrow as pa
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows._cli import app
from stillroom.labelers import NO_RECORDED_ANSWER
from stillroom.storage import Licence, Store
from tests.conftest import ROOT
from tests.flows.test_cli_errors import snapshot

STANCE = ROOT / "examples" / "data" / "llm_labels_css" / "semeval_stance.jsonl"


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr.strip(), result.stdout


def example(tmp_path, name, changes=None):
    """A bundled example with its paths made absolute and its store in tmp_path."""
    raw = yaml.safe_load((ROOT / "examples" / name).read_text())
    raw["store"] = str(tmp_path / "store")
    raw["data"]["path"] = str(ROOT / raw["data"]["path"])
    raw["teacher"]["path"] = str(ROOT / raw["teacher"]["path"])
    for dotted, value in (changes or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def stance_rows():
    return [json.loads(line) for line in STANCE.read_text().splitlines()]


@pytest.mark.parametrize("model", ["chatgpt", "text-davinci-003"])
def test_recorded_labels_replay_with_their_provenance_and_accuracy_vs_gold(tmp_path, model):
    name = "gpt-3.5-turbo" if model == "chatgpt" else model
    changes = {
        "teacher.model": name,
        "teacher.fields": {"label": f"llm_labels.{model}", "raw": f"llm_raw.{model}"},
    }
    config = example(tmp_path, "recorded.yaml", changes)
    code, err, out = cli("run", config, "--out", tmp_path / "run")
    assert code == 0, err

    rows = stance_rows()
    store = Store(tmp_path / "store")
    ref = store.resolve("stance-chatgpt@v1")
    stored = {r["id"]: r for r in store.load(ref).to_pylist()}
    assert len(stored) == len(rows) == 435
    for row in rows:
        kept = stored[row["id"]]
        assert kept["label"] == row["llm_labels"][model] and kept["gold"] == row["label"]
        assert kept["raw"] == row["llm_raw"][model]
        assert kept["probs"] == [float(kept["label"] == x) for x in ("against", "favor", "none")]

    manifest = store.manifest(ref)
    teacher = manifest["teacher"]
    assert (teacher["provider"], teacher["model"], teacher["recorded_at"]) == (
        "recorded",
        name,
        "2023",
    )
    assert teacher["prompt_hash"] is None and teacher["endpoint_host"] is None
    assert teacher["parameters"]["source"]["file"] == "semeval_stance.jsonl"
    assert manifest["terms"]["profile"] == "openai"
    assert manifest["terms"]["restrictions"] == ["no-competing-models"]
    assert manifest["licence"]["spdx"] == "NOASSERTION"
    assert manifest["labeling"]["cost_usd"] == 0

    # the model's accuracy against gold, as computed from the file itself
    accuracy = sum(r["llm_labels"][model] == r["label"] for r in rows) / len(rows)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["teacher"]["accuracy_vs_gold_all"] == pytest.approx(accuracy)
    assert report["teacher"]["gold_records"] == 435
    assert report["labeling"]["teacher_calls"] == 0 and report["labeling"]["cost_usd"] == 0
    assert report["students"][0]["kind"] == "logreg"
    md = (tmp_path / "run" / "report.md").read_text()
    assert f"Teacher {name} (answers recorded 2023) accuracy vs gold" in md
    assert f"{100 * accuracy:.1f}% over all 435 records with gold" in md
    assert f"answers {name} made in 2023, replayed; nothing was called or paid" in md
    card = (tmp_path / "store" / "datasets" / "stance-chatgpt" / "v1" / "README.md").read_text()
    assert "recorded_at: `2023`" in card and f"model: `{name}`" in card


def test_estimate_counts_the_records_with_a_recorded_answer(tmp_path):
    rows = stance_rows()
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows[35:]))
    config = example(tmp_path, "recorded.yaml", {"teacher.path": str(answers)})
    code, err, out = cli("estimate", config)
    assert code == 0, err
    fields = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert fields["teacher"] == "recorded answers of gpt-3.5-turbo (2023)"
    assert (fields["records"], fields["with a recorded answer"]) == ("435", "400")
    assert fields["without one (each fails, no recorded answer)"] == "35"
    assert not (tmp_path / "store").exists()


def test_records_without_a_recorded_answer_fail_with_that_reason(tmp_path):
    rows = stance_rows()[:40]
    answers = tmp_path / "answers.jsonl"
    # ten records have no answer, two have a null one: none is invented
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = example(
        tmp_path,
        "recorded.yaml",
        {"data.path": str(data), "teacher.path": str(answers), "students": []},
    )
    nulls = {"llm_labels": {"chatgpt": None}, "llm_raw": {"chatgpt": None}}
    rows[12].update(nulls)
    rows[13].update(nulls)
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "stance-chatgpt@v1", err
    assert "28 labeled, 12 failed (12 no recorded answer)" in err
    store = Store(tmp_path / "store")
    stored = store.load(store.resolve("stance-chatgpt@v1")).to_pylist()
    missing = {r["id"] for r in stored if r["error"] == NO_RECORDED_ANSWER}
    assert missing == {r["id"] for r in rows[:10]} | {rows[12]["id"], rows[13]["id"]}
    assert all(r["label"] is None and r["probs"] is None for r in stored if r["id"] in missing)


def test_recorded_completions_become_a_generate_version(tmp_path):
    config = example(tmp_path, "recorded-generate.yaml")
    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "roleplay-gpt4@v1", err
    source = [
        json.loads(line)
        for line in (ROOT / "examples" / "data" / "gpteacher" / "roleplay.jsonl").open()
    ]
    store = Store(tmp_path / "store")
    ref = store.resolve("roleplay-gpt4@v1")
    stored = {r["id"]: r for r in store.load(ref).to_pylist()}
    for row in source:
        kept = stored[row["id"]]
        assert kept["completion"] == row["output"] and kept["error"] is None
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        assert kept["text"] == prompt
        assert kept["finish_reason"] is None and kept["tokens"] is None
    manifest = store.manifest(ref)
    assert manifest["teacher"]["model"] == "gpt-4" and manifest["terms"]["profile"] == "openai"
    assert manifest["licence"]["spdx"] == "MIT"
    # the answers were made elsewhere: no max_tokens or temperature is claimed for them
    assert manifest["task"] == {
        "kind": "generate",
        "instructions": manifest["task"]["instructions"],
    }
    code, _, out = cli("datasets", "show", "roleplay-gpt4@v1", "--store", tmp_path / "store")
    assert code == 0 and "50 of 50 records completed, 0 failed." in out
    assert "Finish reasons: not recorded." in out and "(output tokens not recorded)" in out


BAD = {
    "no path": ({"teacher.path": None}, "teacher.path is required for provider 'recorded'"),
    "no model": ({"teacher.model": None}, "teacher.model is required for provider 'recorded'"),
    "no date": (
        {"teacher.recorded_at": None},
        "teacher.recorded_at is required for provider 'recorded'",
    ),
    "not a date": (
        {"teacher.recorded_at": "early 2023"},
        "config key 'teacher.recorded_at': 'early 2023' is not a date",
    ),
    "a called teacher's key": (
        {"teacher.concurrency": 8},
        "teacher.concurrency is for a teacher that is called; provider 'recorded' calls nothing",
    ),
    "an unknown field": (
        {"teacher.fields.labels": "x"},
        "unknown config key 'teacher.fields.labels'",
    ),
    "a field the rows lack": (
        {"teacher.fields.label": "llm_labels.chatgtp"},
        "have no field 'llm_labels.chatgtp' or 'probs'",
    ),
    "no such file": ({"teacher.path": "/nowhere/answers.jsonl"}, "recorded answers file not found"),
    "recorded keys elsewhere": (
        {"teacher.provider": "zero-shot", "teacher.path": None, "teacher.fields": None},
        "teacher.recorded_at is only for provider 'recorded'",
    ),
    "multi-label": (
        {"task.multi_label": True},
        "task.multi_label is not supported with a recorded teacher yet",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recorded_config_is_one_line_exit_2_store_untouched(case, tmp_path):
    store = Store(tmp_path / "store")
    store.commit("earlier", pa.table({"id": ["a"], "text": ["b"]}), licence=Licence("MIT"))
    before = snapshot(tmp_path / "store")
    changes, message = BAD[case]
    code, err, _ = cli("run", example(tmp_path, "recorded.yaml", changes))
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert snapshot(tmp_path / "store") == before


def test_generation_keys_do_not_shape_recorded_completions(tmp_path):
    config = example(tmp_path, "recorded-generate.yaml", {"task.max_tokens": 64})
    code, err, _ = cli("label", config)
    assert code == 2
    assert err == (
        "stillroom: error: task.max_tokens does not shape recorded answers (they were made already): "
        "remove it for provider recorded"
    )
