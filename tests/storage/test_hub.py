"""Versions as Hugging Face datasets: a DatasetDict in memory, and an exported folder that
`datasets.load_dataset` reads back to the same records, features and card."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stillroom.storage import HubError, Licence, Store, front_matter, spdx_of

datasets = pytest.importorskip("datasets")

LABELS = ["negative", "neutral", "positive"]


def labeled(n=10):
    label = [LABELS[i % 3] if i != 4 else None for i in range(n)]
    probs = [
        None
        if lab is None
        else [0.1 * (i % 3 == 0) + 0.8 * (LABELS[j] == lab) + 0.05 for j in range(3)]
        for i, lab in enumerate(label)
    ]
    # a distribution, as verify checks
    probs = [None if p is None else [x / sum(p) for x in p] for p in probs]
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "gold": [LABELS[(i + 1) % 3] for i in range(n)],
            "label": label,
            "probs": probs,
            "coverage": [1.0] * n,
            "error": [None if lab else "off-label answer" for lab in label],
            "raw": label,
        }
    )


META = {
    "kind": "labeled",
    "task": {"kind": "classify", "labels": LABELS, "multi_label": False},
    "teacher": {"provider": "openai", "model": "gpt-x", "prompt_hash": "abc123"},
    "terms": {
        "profile": "openai",
        "statement": "No competing models.",
        "restrictions": ["no-competing-models"],
    },
}


def commit(tmp_path, spdx="CC-BY-4.0", source="https://example.org/data"):
    store = Store(tmp_path / "store")
    ref = store.commit("demo", labeled(), licence=Licence(spdx, "as stated", source), metadata=META)
    return store, ref


def test_a_version_is_a_dataset_dict_with_class_labels_and_fixed_size_probs(tmp_path):
    store, ref = commit(tmp_path)
    held = [i % 4 == 0 for i in range(10)]
    ds = store.dataset_dict(ref, held)
    assert set(ds) == {"train", "test"} and (ds["train"].num_rows, ds["test"].num_rows) == (7, 3)
    features = ds["train"].features
    assert features["label"].names == LABELS and features["gold"].names == LABELS
    assert features["probs"].length == 3
    test = ds["test"].to_list()
    assert [r["id"] for r in test] == ["r0", "r4", "r8"]
    assert test[0]["label"] == 0 and test[1]["label"] is None  # a failed record keeps no label
    assert features["label"].int2str(ds["train"][0]["label"]) == "neutral"  # r1
    assert ds["train"].info.license == "CC-BY-4.0"


def test_export_round_trips_through_load_dataset(tmp_path):
    store, ref = commit(tmp_path)
    held = [i % 4 == 0 for i in range(10)]
    out = store.export(ref, tmp_path / "export", held)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    direct = store.dataset_dict(ref, held)
    for split in ("train", "test"):
        assert loaded[split].features == direct[split].features
        assert loaded[split].to_list() == direct[split].to_list()
    # the label order travels in the Parquet schema too, for readers that are not `datasets`
    schema = pq.read_schema(out / "data" / "train-00000-of-00001.parquet")
    assert json.loads(schema.metadata[b"stillroom"])["labels"] == LABELS
    meta = front_matter((out / "README.md").read_text())
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["text-classification"]
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": "data/test-*.parquet"},
    ]
    known = meta["stillroom"]
    assert known["dataset"] == "demo@v1" and known["prompt_hash"] == "abc123"
    assert known["teacher"] == {"provider": "openai", "model": "gpt-x"}
    assert known["terms"]["restrictions"] == ["no-competing-models"]
    assert json.loads((out / "stillroom.json").read_text())["content_sha256"]


@pytest.mark.parametrize(
    ("spdx", "expected"),
    [
        ("NOASSERTION", {"license": "unknown"}),
        (
            "LicenseRef-SMS-Spam-Collection-v1",
            {
                "license": "other",
                "license_name": "sms-spam-collection-v1",
                "license_link": "https://example.org/data",
            },
        ),
        ("MIT", {"license": "mit"}),
    ],
)
def test_the_card_licence_is_a_hub_id_never_a_lower_cased_spdx_ref(tmp_path, spdx, expected):
    store, ref = commit(tmp_path, spdx)
    for text in (
        (store.export(ref, tmp_path / "out") / "README.md").read_text(),
        (store.path(ref) / "README.md").read_text(),  # the version's own card too
    ):
        meta = yaml.safe_load(text.split("---\n")[1])
        assert {k: v for k, v in meta.items() if k.startswith("license")} == expected


def test_reading_a_cards_licence_back_to_spdx():
    assert spdx_of({"license": "cc-by-nc-4.0"}) == "CC-BY-NC-4.0"
    assert spdx_of({"license": "apache-2.0"}) == "Apache-2.0"
    assert spdx_of({"license": "unknown"}) == "NOASSERTION"
    assert (
        spdx_of({"license": "other", "license_name": "acme internal"}) == "LicenseRef-acme-internal"
    )
    assert spdx_of({}) is None
    assert front_matter("no front matter") == {} and front_matter("---\n: : :\n---\n") == {}


def test_export_never_writes_into_a_folder_that_has_files(tmp_path):
    store, ref = commit(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(HubError, match="exists and is not an empty folder"):
        store.export(ref, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_a_label_outside_the_label_set_is_named(tmp_path):
    store = Store(tmp_path / "store")
    table = labeled().set_column(3, "label", pa.array(["nope"] * 10))
    ref = store.commit("odd", table, licence=Licence("MIT"), metadata=META)
    with pytest.raises(HubError, match="'nope' is not one of the version's labels"):
        store.dataset_dict(ref)
