"""Shared fixtures: the local OpenAI-compatible server, a small slice of the bundled data, configs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.openai_server import FakeOpenAI, FakeTeacher

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "banking77.yaml"
DATA = ROOT / "examples" / "data" / "banking77" / "train.jsonl"
SENTINEL_KEY = "sk-SENTINEL-d0-not-leak-3f9a7c"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def banking_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture(scope="session")
def banking_labels() -> list[str]:
    return yaml.safe_load(EXAMPLE.read_text())["task"]["labels"]


TINY_BERT_WORDS = [
    "good",
    "great",
    "fun",
    "bad",
    "awful",
    "dull",
    "film",
    "movie",
    "story",
    "a",
    "the",
    "and",
    "very",
    "not",
]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, banking_rows: list[dict[str, str]]) -> str:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocabulary of the test words
    and the bundled data's 400 most common words, saved as a transformers folder."""
    from collections import Counter

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    counts = Counter(w for r in banking_rows for w in r["text"].lower().split() if w.isalpha())
    words = list(dict.fromkeys(TINY_BERT_WORDS + [w for w, _ in counts.most_common(400)]))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(special + words) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(special) + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def fake_openai(
    banking_rows: list[dict[str, str]],
) -> Iterator[Callable[..., tuple[FakeOpenAI, str]]]:
    """Start servers on 127.0.0.1 that know the bundled data's gold labels; stopped afterwards."""
    started: list[FakeOpenAI] = []

    def start(**kwargs: Any) -> tuple[FakeOpenAI, str]:
        kwargs.setdefault("teacher", FakeTeacher({r["text"]: r["label"] for r in banking_rows}))
        server = FakeOpenAI(**kwargs)
        url = server.start()
        started.append(server)
        return server, url

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a copy of the example config with the given changes (dotted keys) into tmp_path."""

    def write(changes: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
        raw = yaml.safe_load(EXAMPLE.read_text())
        raw["store"] = str(tmp_path / "store")
        raw["data"]["path"] = str(DATA)
        for dotted, value in (changes or {}).items():
            node = raw
            *parents, last = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            if value is _DELETE:
                node.pop(last, None)
            else:
                node[last] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


_DELETE = object()


@pytest.fixture
def delete() -> object:
    return _DELETE


# --- a real S3-compatible server (moto's server mode) on 127.0.0.1, for stores in object storage

S3_SECRET = "s3-secret-never-written-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)  # noqa: S310 (127.0.0.1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    yield url
    process.kill()
    process.wait(10)


@pytest.fixture
def bucket(s3_server, monkeypatch, request):
    env = {
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3fs = pytest.importorskip("s3fs")

    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"b-{slug}-{os.getpid()}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name
