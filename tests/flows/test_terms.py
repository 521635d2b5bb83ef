"""Terms that act: a version's usage restrictions computed from its source licence, what the data
config adds and the teacher's dated terms; training refused where they forbid it, unless
acknowledged, and the acknowledgement recorded in the run and every student's model card."""

import json

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from stillroom import storage
from stillroom.flows import load_config
from stillroom.flows._cli import app
from stillroom.flows._config import TERMS_PROFILES
from stillroom.storage import Store


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def kinds(restrictions):
    return [(r["restriction"], r["from"]) for r in restrictions]


def test_restrictions_come_from_the_licence_the_data_config_and_the_teacher():
    nc = storage.restrictions_of({"spdx": "CC-BY-NC-SA-4.0", "citation": "Doe 2020"}, None)
    assert kinds(nc) == [
        ("attribution", "source licence CC-BY-NC-SA-4.0"),
        ("non-commercial", "source licence CC-BY-NC-SA-4.0"),
        ("share-alike", "source licence CC-BY-NC-SA-4.0"),
    ]
    assert nc[0]["detail"] == "credit the source: Doe 2020"
    assert storage.restrictions_of({"spdx": "MIT"}, None) == []
    assert (
        storage.restrictions_of({"spdx": "NOASSERTION"}, TERMS_PROFILES["apache-2.0"].model_dump())
        == []
    )
    paid = storage.restrictions_of(
        {"spdx": "MIT"}, TERMS_PROFILES["openai"].model_dump(), ["no-training"]
    )
    assert kinds(paid) == [
        ("no-training", "the source data's terms (data.restrictions)"),
        ("no-competing-models", "teacher terms openai (as of 2024-01-31)"),
    ]
    assert storage.forbids_training(paid) == [paid[0]]
    for name in ("openai", "anthropic", "google-gemini"):
        profile = TERMS_PROFILES[name]
        assert profile.as_of and profile.url.startswith("https://") and '"' in profile.statement
        assert profile.restrictions == ["no-competing-models"]


def test_an_unknown_restriction_is_a_config_error(write_config):
    from stillroom.flows import ConfigError

    with pytest.raises(ConfigError, match="data.restrictions"):
        load_config(write_config({"data.restrictions": ["no-fun"]}))
    inline = {
        "profile": "acme",
        "statement": "x",
        "restrictions": ["no-training"],
        "as_of": "2026-01-01",
    }
    config = load_config(write_config({"teacher.terms": inline}))
    assert config.teacher.resolved_terms().restrictions == ["no-training"]


def test_training_on_a_no_training_version_stops_until_acknowledged(write_config, tmp_path):
    runner = CliRunner()
    config = write_config({"data.limit": 60, "data.restrictions": ["no-training"]})
    store_dir = config.parent / "store"

    refused = runner.invoke(app, ["run", str(config)])
    assert refused.exit_code == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert "may not be used to train models: no-training (the source data's terms" in message
    assert '--acknowledge-terms "REASON"' in message
    assert not (store_dir / "datasets").exists()  # nothing labeled, nothing paid

    labeled = runner.invoke(app, ["label", str(config)])  # labeling is not training
    assert labeled.exit_code == 0, labeled.output
    shown = runner.invoke(app, ["datasets", "show", "banking77", "--store", str(store_dir)])
    assert json.loads(shown.stdout)["restrictions"][1]["restriction"] == "no-training"
    assert "usage restrictions:" in shown.stderr
    assert (
        "  no-training (the source data's terms (data.restrictions)): may not be used"
        in shown.stderr
    )
    assert "  attribution (source licence CC-BY-4.0): credit the source" in shown.stderr
    card = (store_dir / "datasets" / "banking77" / "v1" / "README.md").read_text()
    assert "## Usage restrictions" in card
    assert yaml.safe_load(card.split("---\n")[1])["stillroom"]["restrictions"] == [
        "attribution",
        "no-training",
    ]

    out = tmp_path / "run"
    train = ["train", str(config), "--dataset", "banking77@v1", "--out", str(out)]
    no = runner.invoke(app, train)
    assert no.exit_code == 2 and "banking77@v1 may not be used to train models" in no.stderr
    assert not out.exists()

    yes = runner.invoke(app, [*train, "--acknowledge-terms", "internal evaluation only"])
    assert yes.exit_code == 0, yes.output
    record = json.loads((out / "train.json").read_text())["acknowledged_terms"]
    assert record["text"] == "internal evaluation only" and record["user"] and record["at"]
    assert record["overrides"][0].startswith("no-training (the source data's terms")
    evaluated = runner.invoke(
        app, ["evaluate", str(config), "--dataset", "banking77@v1", "--run", str(out)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    model_card = (out / "students" / "0-logreg" / "README.md").read_text()
    assert "**Terms acknowledged** by" in model_card and '"internal evaluation only"' in model_card
    assert "- no-training (the source data's terms" in model_card
    assert "## Evaluation" in model_card  # rewritten with metrics, the acknowledgement kept


def test_a_teachers_dated_terms_reach_the_version_and_the_card(write_config):
    config = write_config({"data.limit": 30, "teacher.terms": "openai"})
    assert CliRunner().invoke(app, ["label", str(config)]).exit_code == 0
    store = Store(config.parent / "store")
    manifest = store.manifest(store.resolve("banking77"))
    assert manifest["terms"]["as_of"] == "2024-01-31"
    assert ("no-competing-models", "teacher terms openai (as of 2024-01-31)") in kinds(
        manifest["restrictions"]
    )
