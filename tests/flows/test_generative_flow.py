"""Generative students end to end: a local teacher (a tiny in-test causal LM) writes completions
with their top-k logprobs, a half-depth student made of its own layers learns from them with
token-level distillation, and the report measures it on the held-out completions."""

import json
from statistics import fmean

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows import load_config
from stillroom.flows._cli import app
from stillroom.flows._training import held_out
from stillroom.storage import Store
from tests.students import test_generative

tiny_causal = test_generative.tiny_causal  # a 4-layer Llama with a byte-level BPE tokenizer


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr.strip(), result.stdout


def write(tmp_path, folder, students=None, changes=None):
    sentences = test_generative.SENTENCES
    rows = [
        {"id": f"g{i:02d}", "instruction": f"Write about {sentences[i % len(sentences)]}"}
        for i in range(40)
    ]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "gen",
        "store": str(tmp_path / "store"),
        "data": {"path": str(data), "instruction_field": "instruction", "licence": "MIT"},
        "task": {"kind": "generate", "max_tokens": 10, "top_logprobs": 3, "temperature": 0.8},
        "teacher": {"provider": "transformers", "model": str(folder), "min_labeled": 0},
        "students": students
        if students is not None
        else [
            {
                "kind": "generative",
                "base": str(folder),
                "init": "every_other_layer",
                "epochs": 4,
                "learning_rate": 0.01,
                "batch_size": 4,
            }
        ],
        "evaluate": {"test_fraction": 0.25, "generation_records": 5},
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


def test_a_half_depth_student_learns_the_local_teachers_completions(tiny_causal, tmp_path):
    from transformers import AutoModelForCausalLM

    config = write(tmp_path, tiny_causal)
    code, err, out = cli("run", config, "--out", tmp_path / "run")
    assert code == 0, err
    # imported after the run has imported it: absl (which rouge-score imports) binds a log
    # handler to the sys.stderr of its first import, which must not be pytest's
    from rouge_score import rouge_scorer

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    store = Store(tmp_path / "store")
    stored = store.load(store.resolve("gen@v1")).to_pylist()
    completed = [r for r in stored if r["error"] is None]
    assert report["dataset"]["train_records"] + report["dataset"]["test_records"] == len(completed)

    (student,) = report["students"]
    assert student["kind"] == "generative" and student["layers"] == 2
    # the teacher's tokens are the student's own: every training completion is distilled but
    # those where the random teacher wrote a special token, which the completion's text lacks
    test = held_out([r["id"] for r in completed], 0.25, 0)
    train = [r for r, t in zip(completed, test, strict=True) if not t]
    spelled = [r for r in train if "".join(t["token"] for t in r["tokens"]) == r["completion"]]
    assert student["train_records"] == len(train) == report["dataset"]["train_records"]
    assert student["kd_records"] == len(spelled) > len(train) / 2
    assert student["nll_after"] < student["nll_before"]
    assert all(h["kl"] is not None for h in student["history"])

    folder = tmp_path / "run" / "students" / "0-generative"
    held = [json.loads(line) for line in (folder / "held_out.jsonl").open()]
    assert len(held) == student["generated_records"] == 5
    by_id = {r["id"]: r for r in completed}
    for row in held:
        assert row["teacher"] == by_id[row["id"]]["completion"]
        assert row["prompt"] == by_id[row["id"]]["text"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = fmean(scorer.score(r["teacher"], r["student"])["rougeL"].fmeasure for r in held)
    assert student["rougeL_vs_teacher"] == pytest.approx(rouge, abs=1e-4)
    assert student["exact_match_vs_teacher"] == pytest.approx(
        fmean(r["teacher"].strip() == r["student"].strip() for r in held), abs=1e-4
    )
    assert student["samples"] == held[:3] and student["latency_ms_per_record"] > 0

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "nll_after" not in card
    assert "NLL per token of the teacher's completions, after training" in card
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Students (held-out)" in md and "teacher and student side by side" in md
    assert f"{student['nll_before']:.3f} | {student['nll_after']:.3f}" in md
    assert "2 layers" in md

    # train and evaluate again from the CLI, on the same version: the same split
    code, err, out = cli("train", config, "--dataset", "gen@v1", "--out", tmp_path / "again")
    assert code == 0, err
    trained = json.loads((tmp_path / "again" / "train.json").read_text())
    assert trained["train_records"] == report["dataset"]["train_records"]


def test_generate_configs_and_versions_meet_the_right_students(tiny_causal, tmp_path):
    config = write(tmp_path, tiny_causal, students=[])
    code, err, out = cli("label", config)
    assert code == 0 and out.strip() == "gen@v1", err
    code, err, _ = cli("train", config, "--dataset", "gen@v1")
    assert code == 2 and "holds completions and the config has no students" in err

    classify = tmp_path / "classify.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["task"] = {"labels": ["a", "b"]}
    raw["teacher"] = {"provider": "zero-shot"}
    raw["students"] = [{"kind": "logreg"}]
    raw["data"] = {"path": raw["data"]["path"], "text_field": "instruction"}
    classify.write_text(yaml.safe_dump(raw))
    code, err, _ = cli("train", classify, "--dataset", "gen@v1")
    assert code == 2 and "train it with a generate config whose students are kind generative" in err

    # a generative student in a classify config classifies by writing labels: not completions
    raw["students"] = [{"kind": "generative"}]
    classify.write_text(yaml.safe_dump(raw))
    code, err, _ = cli("train", classify, "--dataset", "gen@v1")
    assert code == 2 and "train it with a generate config whose students are kind generative" in err

    bad = write(tmp_path, tiny_causal, changes={"students": [{"kind": "logreg"}]})
    code, err, _ = cli("run", bad)
    assert code == 2 and "a logreg student classifies" in err

    missing = write(
        tmp_path, tiny_causal, students=[{"kind": "generative", "base": str(tmp_path / "none")}]
    )
    code, err, _ = cli("run", missing)
    assert code == 2 and "students.0: generative student base" in err, err

    full = write(
        tmp_path,
        tiny_causal,
        students=[{"kind": "generative", "distill": "full"}],
        changes={"teacher": {"provider": "openai", "model": "m", "price": "unknown"}},
    )
    code, err, _ = cli("run", full)
    assert code == 2 and "distill full computes a local teacher's whole distribution" in err
    assert load_config(write(tmp_path, tiny_causal)).students[0].kind == "generative"


def test_step_by_step_a_student_of_labels_and_rationales_beside_one_of_labels(
    tiny_causal, write_config, fake_openai, monkeypatch, tmp_path
):
    _, url = fake_openai()
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    student = {"kind": "generative", "base": str(tiny_causal), "epochs": 2, "batch_size": 8}
    student |= {"learning_rate": 0.01, "max_new_tokens": 6}
    config = write_config(
        {
            "teacher.provider": "openai",
            "teacher.model": "fake",
            "teacher.base_url": url,
            "teacher.api_key_env": "STILLROOM_TEST_KEY",
            "teacher.price": "unknown",
            "task.rationale": True,
            "data.limit": 48,
            "students": [student | {"rationale": True}, student],
            "evaluate.test_fraction": 0.25,
        }
    )
    code, err, _ = cli("run", config, "--out", tmp_path / "run")
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    both, labels_only = report["students"]
    assert (both["variant"], labels_only["variant"]) == ("rationales", None)
    train = report["dataset"]["train_records"] + report["dataset"]["calibration_records"]
    assert both["train_records"] == labels_only["train_records"] == train
    assert both["rationale_records"] == train and labels_only["rationale_records"] == 0
    # twice the examples, and rationales are longer than labels
    tokens = [s["history"][0]["completion_tokens"] for s in (both, labels_only)]
    assert tokens[0] > 2 * tokens[1]
    for i, entry in enumerate((both, labels_only)):
        held = [
            json.loads(line)
            for line in (
                tmp_path / "run" / "students" / f"{i}-generative" / "held_out.jsonl"
            ).open()
        ]
        assert len(held) == report["dataset"]["test_records"]
        agreement = sum(r["student"] == r["teacher"] for r in held) / len(held)
        assert entry["agreement"] == pytest.approx(agreement, abs=1e-6)
        assert entry["unparsed"] == sum(r["student"] is None for r in held)
        assert entry["kl_teacher_student"] is None and entry["predict_ms_per_1k"] > 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| generative (rationales) |" in md and "| generative |" in md

    bad = write_config({"students": [student | {"rationale": True}]}, name="bad.yaml")
    code, err, _ = cli("run", bad)
    assert code == 2 and "set task.rationale true so the teacher gives them" in err
