"""Hugging Face datasets both ways through the CLI: a `save_to_disk` folder (a DatasetDict, gold
as ClassLabel integers, the licence in its info) or a folder of data files with a card as the
source; a labeled version exported and read back by `datasets.load_dataset`, and loaded with
`stillroom.load_version` split as the students split it."""

import json

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

import stillroom
from stillroom.flows._cli import app
from stillroom.flows._training import held_out
from stillroom.storage import Store

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def saved_dict(tmp_path, banking_rows, banking_labels):
    """A DatasetDict saved to disk: gold as ClassLabel integers, CC-BY-4.0 in its info."""
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=banking_labels),
        }
    )
    info = datasets.DatasetInfo(license="cc-by-4.0", features=features)

    def part(rows):
        columns = {
            "id": [r["id"] for r in rows],
            "text": [r["text"] for r in rows],
            "label": [banking_labels.index(r["label"]) for r in rows],
        }
        return datasets.Dataset.from_dict(columns, features=features, info=info)

    folder = tmp_path / "banking-hf"
    datasets.DatasetDict(
        {"train": part(banking_rows[:24]), "test": part(banking_rows[24:30])}
    ).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_dict_with_class_labels_is_a_source(
    saved_dict, write_config, delete, banking_rows
):
    runner = CliRunner()
    base = {"data.path": str(saved_dict), "data.licence": delete, "data.licence_statement": delete}

    missing = runner.invoke(app, ["label", str(write_config(base))])
    assert missing.exit_code == 2
    assert "holds splits train, test: choose one with data.split" in missing.stderr

    wrong = runner.invoke(app, ["label", str(write_config(base | {"data.split": "dev"}))])
    assert wrong.exit_code == 2 and "data.split 'dev' is not a split of" in wrong.stderr

    config = write_config(base | {"data.split": "train"})
    out = runner.invoke(app, ["label", str(config)])
    assert out.exit_code == 0, out.output
    store = Store(config.parent / "store")
    source = store.resolve("banking77-source")
    rows = store.load(source).to_pylist()
    # ClassLabel integers are read as their names, not refused as '0' is not in task.labels
    assert [r["gold"] for r in rows] == [r["label"] for r in banking_rows[:24]]
    licence = store.manifest(source)["licence"]
    assert licence["spdx"] == "CC-BY-4.0" and "dataset card" in licence["statement"]


def test_a_folder_of_data_files_with_a_card(tmp_path, write_config, delete, banking_rows):
    folder = tmp_path / "files"
    (folder / "data").mkdir(parents=True)
    for split, rows in (("train", banking_rows[:20]), ("validation", banking_rows[20:26])):
        with (folder / "data" / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    (folder / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme data\nlanguage: en\n---\n# x\n"
    )
    config = write_config(
        {"data.path": str(folder), "data.split": "validation", "data.licence": delete}
    )
    out = CliRunner().invoke(app, ["label", str(config)])
    assert out.exit_code == 0, out.output
    store = Store(config.parent / "store")
    source = store.manifest(store.resolve("banking77-source"))
    assert source["rows"] == 6 and source["licence"]["spdx"] == "LicenseRef-acme-data"
    assert source["language"] == ["en"]
    assert store.manifest(store.resolve("banking77"))["language"] == ["en"]  # carried on


def test_export_and_load_version_split_as_the_students(write_config, tmp_path):
    runner = CliRunner()
    config = write_config({"data.limit": 40})
    assert runner.invoke(app, ["label", str(config)]).exit_code == 0
    store_dir = str(config.parent / "store")
    store = Store(store_dir)
    table = store.load(store.resolve("banking77"))
    ids = table.column("id").to_pylist()
    expected_test = {i for i, t in zip(ids, held_out(ids, 0.2, 0), strict=True) if t}

    loaded = stillroom.load_version("banking77", store_dir)
    assert {r["id"] for r in loaded["test"]} == expected_test
    assert loaded["train"].num_rows + loaded["test"].num_rows == 40
    names = loaded["train"].features["label"].names
    first = table.to_pylist()[ids.index(loaded["train"][0]["id"])]
    assert names[loaded["train"][0]["label"]] == first["label"]
    assert loaded["train"][0]["probs"] == pytest.approx(first["probs"])

    other = write_config({"evaluate.test_fraction": 0.5, "evaluate.seed": 3}, "other.yaml")
    by_config = stillroom.load_version("banking77", config=str(other))
    halves = {i for i, t in zip(ids, held_out(ids, 0.5, 3), strict=True) if t}
    assert {r["id"] for r in by_config["test"]} == halves

    out_dir = tmp_path / "export"
    out = runner.invoke(
        app, ["datasets", "export", "banking77@v1", str(out_dir), "--store", store_dir]
    )
    assert out.exit_code == 0, out.output
    back = datasets.load_dataset(str(out_dir), cache_dir=str(tmp_path / "hf-cache"))
    for split in ("train", "test"):
        assert back[split].to_list() == loaded[split].to_list()
        assert back[split].features == loaded[split].features

    again = runner.invoke(
        app, ["datasets", "export", "banking77@v1", str(out_dir), "--store", store_dir]
    )
    assert again.exit_code == 2 and "is not an empty folder" in again.stderr
    none = runner.invoke(
        app, ["datasets", "export", "nope", str(tmp_path / "n"), "--store", store_dir]
    )
    assert none.exit_code == 2 and "no dataset named 'nope'" in none.stderr


def test_each_labeled_version_records_its_message_command_and_lineage(write_config, monkeypatch):
    runner = CliRunner()
    config = write_config({"data.limit": 12})
    argv = ["stillroom", "label", str(config), "--set", "teacher.api_key_env=SECRET_NAME"]
    monkeypatch.setattr("sys.argv", argv)
    out = runner.invoke(app, ["label", str(config), "-m", "first pass"])
    assert out.exit_code == 0, out.output
    again = runner.invoke(app, ["label", str(write_config({"data.limit": 14}))])
    assert again.exit_code == 0, again.output
    store = Store(config.parent / "store")
    first, second = (store.manifest(store.resolve(f"banking77@v{n}")) for n in (1, 2))
    assert first["message"] == "first pass"
    assert first["command"] == f"stillroom label {config} --set teacher.api_key_env=HIDDEN"
    assert first["parent"] == "banking77-source@v1" and first["previous"] is None
    assert second["parent"] == "banking77-source@v2" and second["previous"] == "banking77@v1"
    assert second["message"] == "14 of 14 records labeled by zero-shot all-minilm-l6-v2"
    source = store.manifest(store.resolve("banking77-source@v2"))
    assert (
        source["previous"] == "banking77-source@v1" and "14 records read from" in source["message"]
    )
    log = runner.invoke(app, ["datasets", "log", "banking77", "--store", str(store.root)])
    assert log.exit_code == 0
    assert log.stdout.splitlines()[0].endswith("14 rows  from banking77-source@v2")


def test_a_teammate_imports_paid_answers_and_labels_without_paying(
    write_config, fake_openai, tmp_path
):
    runner = CliRunner()
    server, url = fake_openai()
    key = "sk-never-in-a-file-0123456789"
    teacher = {
        "teacher.provider": "openai",
        "teacher.model": "fake",
        "teacher.base_url": url,
        "teacher.api_key_env": "STILLROOM_TEST_KEY",
        "data.limit": 25,
    }
    mine = write_config(teacher | {"store": str(tmp_path / "mine")}, "mine.yaml")
    env = {"STILLROOM_TEST_KEY": key}
    assert runner.invoke(app, ["label", str(mine)], env=env).exit_code == 0
    paid = server.requests
    assert paid >= 25

    shared = tmp_path / "answers.jsonl.gz"
    out = runner.invoke(app, ["cache", "export", str(shared), "--store", str(tmp_path / "mine")])
    assert out.exit_code == 0 and out.stdout.strip() == f"25 answers written to {shared}"
    import gzip

    with gzip.open(shared, "rt") as f:
        assert key not in f.read()

    theirs = write_config(teacher | {"store": str(tmp_path / "theirs")}, "theirs.yaml")
    imported = runner.invoke(
        app, ["cache", "import", str(shared), "--store", str(tmp_path / "theirs")]
    )
    assert imported.exit_code == 0
    assert imported.stdout.strip() == "25 answers added, 0 already present (kept), 0 rejected"
    labeled = runner.invoke(app, ["label", str(theirs)], env=env)
    assert labeled.exit_code == 0, labeled.output
    assert server.requests == paid  # every answer came from the imported cache
    assert "0 teacher calls, 25 cache hits, $0.0000" in labeled.stderr
    a, b = (Store(tmp_path / s) for s in ("mine", "theirs"))
    assert (
        a.manifest(a.resolve("banking77"))["content_sha256"]
        == b.manifest(b.resolve("banking77"))["content_sha256"]
    )

    missing = runner.invoke(
        app, ["cache", "import", str(tmp_path / "nope.jsonl"), "--store", str(tmp_path / "theirs")]
    )
    assert missing.exit_code == 2 and "no such file to import" in missing.stderr


def test_gc_removes_stale_checkpoints_and_unfinished_commits(tmp_path):
    import os
    import time

    store = tmp_path / "store"
    stale = store / "checkpoints" / "generative-abc"
    stale.mkdir(parents=True)
    (stale / "state.pt").write_bytes(b"x" * 2_000_000)
    live = store / "checkpoints" / "generative-new"
    live.mkdir()
    (live / "state.pt").write_bytes(b"y")
    unfinished = store / "datasets" / "d" / ".tmp-1"
    unfinished.mkdir(parents=True)
    old = time.time() - 3 * 3600
    for path in (stale, stale / "state.pt", unfinished):
        os.utime(path, (old, old))
    runner = CliRunner()
    dry = runner.invoke(app, ["datasets", "gc", "--store", str(store), "--dry-run"])
    assert dry.exit_code == 0 and stale.exists()
    assert f"would remove {unfinished} (0.0 MB)" in dry.stdout
    assert f"would remove {stale} (2.0 MB)" in dry.stdout
    done = runner.invoke(app, ["datasets", "gc", "--store", str(store)])
    assert done.exit_code == 0 and "2 leftovers, 2.0 MB freed" in done.stderr
    assert not stale.exists() and not unfinished.exists() and live.exists()


def test_a_run_with_its_store_in_object_storage(bucket, write_config, tmp_path, monkeypatch):
    import s3fs

    from tests.conftest import S3_SECRET

    monkeypatch.chdir(tmp_path)
    store = f"s3://{bucket}/project"
    config = write_config({"store": store, "data.limit": 60})
    runner = CliRunner()
    out = runner.invoke(app, ["run", str(config)])
    assert out.exit_code == 0, out.output
    assert "the response cache stays a local file, .stillroom-local/cache.sqlite" in out.stderr
    s = Store(store)
    ref = s.resolve("banking77")
    assert s.verify(ref).ok and s.manifest(ref)["rows"] == 60
    assert s.manifest(ref)["parent"] == "banking77-source@v1"
    # the response cache stays a local SQLite file; the run folder is copied into the store
    assert (tmp_path / ".stillroom-local" / "cache.sqlite").is_file()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    runs = fs.ls(f"{bucket}/project/runs")
    assert len(runs) == 1
    uploaded = {p.rsplit("/", 1)[-1] for p in fs.find(runs[0])}
    assert {"report.json", "report.md", "train.json", "model.skops"} <= uploaded
    report = json.loads(fs.cat_file(f"{runs[0]}/report.json"))
    assert report["dataset"]["version"] == "v1" and report["students"][0]["agreement"] > 0
    for path in fs.find(bucket):
        assert S3_SECRET.encode() not in fs.cat_file(path)
    listed = runner.invoke(app, ["datasets", "list", "--store", store])
    assert listed.exit_code == 0 and "banking77@v1" in listed.stdout
    verified = runner.invoke(app, ["datasets", "verify", "banking77@v1", "--store", store])
    assert verified.exit_code == 0 and verified.stdout.strip() == "banking77@v1: ok"
    # a second run pays nothing: the local cache answers, the same content is the same version
    again = runner.invoke(app, ["label", str(config)])
    assert again.exit_code == 0 and again.stdout.strip() == "banking77@v1"


def test_a_recorded_command_keeps_no_url_path_user_or_query(monkeypatch):
    from stillroom.flows._labeling import command_line

    argv = [
        "stillroom",
        "run",
        "c.yaml",
        "--set",
        "drift={webhook: {url: https://hooks.example/hook/T0KEN?sig=S1G}}",
        "--set",
        "drift.webhook.url=https://hooks.example/T0KEN",
        "--store",
        "s3://user:PASSW0RD@bucket/prefix",
    ]
    monkeypatch.setattr("sys.argv", argv)
    assert command_line() == (
        "stillroom run c.yaml --set 'drift={webhook: {url: https://hooks.example}}' "
        "--set drift.webhook.url=HIDDEN --store s3://bucket/prefix"
    )
