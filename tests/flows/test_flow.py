"""The Prefect flows in-process under prefect_test_harness, with the embedded zero-shot teacher."""

import json

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom.flows import load_config
from stillroom.flows._cli import app
from stillroom.flows._flow import distill
from stillroom.flows._report import write_model_card
from stillroom.storage import Store
from stillroom.students import TfidfLogReg, TfidfLogRegMultiLabel


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_distill_then_train_and_evaluate_a_stored_version(write_config, tmp_path):
    config = load_config(write_config({"data.limit": 400}))
    report_path = distill(config, str(tmp_path / "run"))
    report = json.loads(report_path.read_text())
    dataset = report["dataset"]
    assert (dataset["name"], dataset["version"], dataset["rows"]) == ("banking77", "v1", 400)
    assert (
        dataset["train_records"] + dataset["calibration_records"] + dataset["test_records"] == 400
        and dataset["test_records"] > 30
        and dataset["calibration_records"] >= 20
    )
    lab = report["labeling"]
    assert (lab["records"], lab["labeled"], lab["failed"], lab["teacher_calls"]) == (
        400,
        400,
        0,
        400,
    )
    # zero-shot MiniLM on banking77 is far better than chance (1/77)
    assert report["teacher"]["accuracy_vs_gold"] > 0.4
    (student,) = report["students"]
    assert student["kind"] == "logreg" and 0.2 < student["agreement"] <= 1.0
    assert student["kl_teacher_student"] > 0 and 0 <= student["ece"] <= 1
    # calibrated on the calibration slice: a temperature, and ECE/KL before and after it
    assert student["calibration_temperature"] > 0 and student["variant"] is None
    assert 0 <= student["ece_uncalibrated"] <= 1 and student["kl_uncalibrated"] > 0
    bins = student["reliability"]["after"]
    assert sum(b["count"] for b in bins) == dataset["test_records"] and len(bins) == 15
    assert (tmp_path / "run" / "report.md").read_text().startswith("# banking77")
    card = (tmp_path / "run" / "students" / "0-logreg" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert (meta["library_name"], meta["license"], meta["datasets"]) == (
        "sklearn",
        "cc-by-4.0",
        ["banking77@v1"],
    )
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"][0] == {
        "type": "accuracy",
        "value": pytest.approx(student["agreement"]),
        "name": "agreement with the teacher",
    }
    assert "training data licence: `CC-BY-4.0` Creative Commons" in card
    assert "teacher terms (apache-2.0)" in card and "zero-shot `all-minilm-l6-v2`" in card
    assert 'TfidfLogReg.load("model.skops")' in card
    assert not (tmp_path / "run" / "students" / "0-logreg" / "MODEL_CARD.md").exists()

    store = Store(config.store)
    manifest = store.manifest(store.resolve("banking77"))
    assert manifest["parent"] == "banking77-source@v1"
    assert (
        manifest["teacher"]["provider"] == "zero-shot"
        and len(manifest["teacher"]["prompt_hash"]) == 16
    )
    assert (
        manifest["licence"]["spdx"] == "CC-BY-4.0" and manifest["terms"]["profile"] == "apache-2.0"
    )

    cli = CliRunner()
    trained = cli.invoke(
        app,
        ["train", str(write_config()), "--dataset", "banking77@v1", "--out", str(tmp_path / "t")],
    )
    assert trained.exit_code == 0, trained.output
    trained_card = tmp_path / "t" / "students" / "0-logreg" / "README.md"
    assert "license: cc-by-4.0" in trained_card.read_text()
    assert "model-index" not in trained_card.read_text()  # no metrics before evaluation
    evaluated = cli.invoke(
        app,
        ["evaluate", str(write_config()), "--dataset", "banking77", "--run", str(tmp_path / "t")],
    )
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "t" / "report.json").read_text())
    assert f"| agreement with the teacher | {again['students'][0]['agreement']:.4g} |" in (
        trained_card.read_text()
    )
    assert again["students"][0]["agreement"] == pytest.approx(student["agreement"])
    assert again["labeling"]["teacher_calls"] == 0

    label = cli.invoke(app, ["label", str(write_config({"data.limit": 400}))])
    assert label.exit_code == 0 and label.stdout.strip() == "banking77@v1"
    assert "0 teacher calls, 400 cache hits" in label.stderr


@pytest.mark.parametrize(
    ("spdx", "expected"),
    [
        ("CC-BY-4.0", {"license": "cc-by-4.0"}),
        ("GPL-3.0-or-later", {"license": "gpl-3.0"}),
        ("ODbL-1.0", {"license": "odbl"}),
        ("NOASSERTION", {"license": "unknown"}),
        (None, {"license": "unknown"}),
        ("LicenseRef-Acme-Internal", {"license": "other", "license_name": "acme-internal"}),
        ("MIT OR Apache-2.0", {"license": "other", "license_name": "mit-or-apache-2.0"}),
    ],
)
def test_model_card_licence_is_an_id_the_hub_accepts(spdx, expected, tmp_path):
    manifest = {"licence": {"spdx": spdx}, "teacher": {"provider": "openai", "model": "gpt-x"}}
    card = write_model_card(tmp_path, TfidfLogReg(), "logreg", "d@v1", manifest).read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert {k: v for k, v in meta.items() if k.startswith("license")} == expected
    assert f"training data licence: `{spdx}`" in card  # the body keeps the licence as stated


def test_model_card_names_a_hub_teacher_its_restrictions_and_only_known_metrics(tmp_path):
    manifest = {
        "licence": {"spdx": "MIT", "statement": "MIT licence", "source": "https://x.test/d"},
        "teacher": {"provider": "transformers", "model": "HuggingFaceTB/SmolLM2-360M-Instruct"},
        "terms": {
            "profile": "openai",
            "statement": "No competing models.",
            "restrictions": ["no-competing-models"],
        },
        "task": {"multi_label": True},
    }
    metrics = {
        "agreement": 0.5,
        "accuracy_vs_gold": None,
        "f1_micro_vs_teacher": 0.75,
        "size_bytes": 2048,
    }
    path = write_model_card(
        tmp_path, TfidfLogRegMultiLabel(), "logreg", "tags@v2", manifest, metrics
    )
    card = path.read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert path == tmp_path / "README.md"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert "multi-label" in meta["tags"] and meta["metrics"] == ["accuracy", "f1"]
    (result,) = meta["model-index"][0]["results"]
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("accuracy", 0.5), ("f1", 0.75)]
    assert "- restrictions inherited from the teacher: no-competing-models" in card
    assert "- data source: https://x.test/d" in card
    assert "| model file size, bytes | 2048 |" in card and "gold" not in card
    assert 'TfidfLogRegMultiLabel.load("model.skops")' in card


def test_budget_stops_cleanly_and_a_higher_budget_continues(write_config, fake_openai, monkeypatch):
    server, url = fake_openai()
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    changes = {
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.base_url": url,
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "teacher.price": {"input_per_1m": 50.0, "output_per_1m": 50.0},
        "teacher.budget_usd": 0.5,
        "data.limit": 120,
        "teacher.concurrency": 4,
    }
    cli = CliRunner()
    first = cli.invoke(app, ["label", str(write_config(changes))])
    assert first.exit_code == 0, first.output
    assert (
        "budget reached" in first.stderr and "re-run the same command to continue" in first.stderr
    )
    store = Store(load_config(write_config(changes)).store)
    v1 = store.load(store.resolve("banking77@v1")).to_pylist()
    stopped = [r for r in v1 if r["error"] == "budget exhausted"]
    paid = sum(server.billed.values())
    assert stopped and len(stopped) + paid == 120
    spend = cli.invoke(app, ["spend", "--store", str(store.root)])
    spent = float(spend.stdout.strip().splitlines()[-1].removeprefix("total: $"))
    assert 0 < spent <= 0.5

    second = cli.invoke(app, ["label", str(write_config({**changes, "teacher.budget_usd": 100.0}))])
    assert second.exit_code == 0 and second.stdout.strip() == "banking77@v2", second.output
    v2 = store.load(store.resolve("banking77@v2")).to_pylist()
    assert all(r["label"] for r in v2) and max(server.billed.values()) == 1
    assert sum(server.billed.values()) == 120
    assert [r["probs"] for r in v2 if r["id"] not in {s["id"] for s in stopped}] == [
        r["probs"] for r in v1 if r["error"] is None
    ]


def test_multi_label_asks_one_yes_no_question_per_label(
    write_config, fake_openai, monkeypatch, tmp_path
):
    server, url = fake_openai()
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    labels = ["card_arrival", "card_linking", "exchange_rate"]
    config = load_config(
        write_config(
            {
                "teacher.provider": "openai",
                "teacher.model": "fake",
                "teacher.base_url": url,
                "teacher.api_key_env": "STILLROOM_TEST_KEY",
                "task.labels": labels,
                "task.multi_label": True,
                "data.gold_field": None,
                "data.limit": 80,
            }
        )
    )
    report = json.loads(distill(config, str(tmp_path / "run")).read_text())
    assert report["labeling"]["teacher_calls"] == 240 == len(server.billed)  # 80 records x 3 labels
    assert max(server.billed.values()) == 1
    rows = Store(config.store).load(Store(config.store).resolve("banking77")).to_pylist()
    for row in rows:
        assert len(row["probs"]) == 3 and all(0 <= p <= 1 for p in row["probs"])
        chosen = {lab for lab, p in zip(labels, row["probs"], strict=True) if p >= 0.5}
        assert set(filter(None, row["label"].split("|"))) == chosen
    assert len({row["label"] for row in rows}) > 2  # the label sets differ between records
    (student,) = report["students"]
    assert 0 <= student["f1_micro_vs_teacher"] <= 1 and 0 <= student["f1_macro_vs_teacher"] <= 1
    assert student["kl_teacher_student"] > 0
    manifest = Store(config.store).manifest(Store(config.store).resolve("banking77"))
    assert manifest["task"]["multi_label"] is True
    assert manifest["teacher"]["multi_label"] == "one yes/no question per label"


def test_a_bert_student_is_calibrated_quantized_and_saved_as_a_transformers_folder(
    write_config, tmp_path, tiny_bert
):
    from transformers import AutoModelForSequenceClassification

    from stillroom.students import BertStudent

    spec = {"kind": "bert", "base": tiny_bert, "epochs": 2, "quantize": "int8", "seed": 3}
    config = load_config(write_config({"data.limit": 300, "students": [spec]}))
    report = json.loads(distill(config, str(tmp_path / "run")).read_text())
    bert, int8 = report["students"]
    assert (bert["kind"], bert["variant"], int8["variant"]) == ("bert", None, "int8")
    assert bert["calibration_temperature"] > 0 and bert["train_s"] > 0
    assert int8["train_s"] is None and 0.0 <= int8["agreement_with_student"] <= 1.0
    assert int8["size_bytes"] < bert["size_bytes"]
    folder = tmp_path / "run" / "students" / "0-bert"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label[0] == config.task.labels[0]
    assert len(model.config.id2label) == len(config.task.labels)
    student = BertStudent.load(folder)
    assert student.calibration_temperature_ == pytest.approx(bert["calibration_temperature"])
    assert (student.get_params()["seed"], student.get_params()["epochs"]) == (3, 2)
    assert BertStudent.load(folder / "int8").is_quantized
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and 'pipeline("text-classification"' in card
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| bert (int8) |" in md and "same label as the uncompressed student" in md
    assert not list((tmp_path / "store" / "checkpoints").glob("*/checkpoint.pt"))


def test_a_trained_student_teaches_the_next_one_free_and_passes_on_its_terms(
    write_config, tmp_path
):
    first = load_config(write_config({"data.limit": 300}))
    distill(first, str(tmp_path / "run1"))
    folder = tmp_path / "run1" / "students" / "0-logreg"
    info = json.loads((folder / "student.json").read_text())
    assert info["dataset"] == "banking77@v1" and info["teacher"]["provider"] == "zero-shot"

    teacher = {"provider": "student", "path": str(folder)}
    changes = {"name": "pool", "data.limit": 600, "teacher": teacher}
    second = load_config(write_config(changes, name="pool.yaml"))
    report = json.loads(distill(second, str(tmp_path / "run2")).read_text())
    lab = report["labeling"]
    assert (lab["labeled"], lab["teacher_calls"], lab["cost_usd"]) == (600, 600, 0.0)
    # the pool's student learns the teaching student's labels, which are easy to imitate
    assert report["students"][0]["agreement"] > 0.8

    store = Store(second.store)
    manifest = store.manifest(store.resolve("pool"))
    recorded = manifest["teacher"]
    assert (recorded["provider"], recorded["model"]) == ("student", str(folder))
    assert recorded["parameters"]["trained_on"] == "banking77@v1"
    assert recorded["parameters"]["student_of"]["model"] == "all-minilm-l6-v2"
    assert manifest["terms"]["profile"] == "apache-2.0"
    assert manifest["terms"]["statement"].startswith("Labels from a stillroom student")

    # the same labeling path: a second run is served from the cache
    again = json.loads(distill(second, str(tmp_path / "run3")).read_text())
    assert (again["labeling"]["teacher_calls"], again["labeling"]["cache_hits"]) == (0, 600)


def test_a_rationale_is_stored_beside_each_label(write_config, fake_openai, monkeypatch):
    from tests.openai_server import expected_rationale

    server, url = fake_openai()
    monkeypatch.setenv("STILLROOM_TEST_KEY", "sk-test")
    changes = {
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.base_url": url,
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "teacher.price": "unknown",
        "task.rationale": True,
        "data.limit": 20,
    }
    result = CliRunner().invoke(app, ["label", str(write_config(changes))])
    assert result.exit_code == 0 and result.stdout.strip() == "banking77@v1", result.output
    store = Store(load_config(write_config(changes)).store)
    ref = store.resolve("banking77@v1")
    rows = store.load(ref).to_pylist()
    assert len(rows) == 20 and all(r["label"] for r in rows)
    for row in rows:
        assert row["rationale"] == expected_rationale(row["text"], row["label"])
        assert row["raw"] == f"{row['rationale']}\nLabel: {row['label']}"
    manifest = store.manifest(ref)
    assert manifest["task"]["rationale"] is True and manifest["schema"]["rationale"] == "string"

    bad = write_config({"task.rationale": True, "teacher.provider": "zero-shot"})
    out = CliRunner().invoke(app, ["label", str(bad)])
    assert out.exit_code == 2 and "task.rationale needs a teacher that writes text" in out.stderr


def test_an_endpoint_that_echoes_the_key_leaves_it_nowhere(write_config, fake_openai, monkeypatch):
    from pathlib import Path

    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from tests.conftest import SENTINEL_KEY

    secret = "hdr-SECRET-77c1"
    server, url = fake_openai(faults={"echo": 0.3}, echo_status=402, seed=4)
    monkeypatch.setenv("STILLROOM_TEST_KEY", SENTINEL_KEY)
    monkeypatch.setenv("STILLROOM_HDR", secret)
    changes = {
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.base_url": url,
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "teacher.header_env": {"api-key": "STILLROOM_HDR"},
        "teacher.price": "unknown",
        "teacher.max_retries": 0,
        "teacher.answer_retries": 0,
        "data.limit": 30,
    }
    result = CliRunner().invoke(app, ["label", str(write_config(changes))])
    assert result.exit_code == 0, result.output
    store = Store(load_config(write_config(changes)).store)
    rows = store.load(store.resolve("banking77@v1")).to_pylist()
    # the Prefect database (its log table), the store (data, manifest, card, cache), the output
    database = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[-1])
    assert database.is_file()
    files = [database, *(p for p in store.root.rglob("*") if p.is_file())]
    for data in [result.output.encode(), *(p.read_bytes() for p in files)]:
        assert SENTINEL_KEY.encode() not in data and secret.encode() not in data
    echoed = [r["error"] for r in rows if (r["error"] or "").startswith("HTTP 402")]
    assert echoed and all("[redacted]" in e for e in echoed)
    assert server.faults_sent["echo"] == len(echoed)
