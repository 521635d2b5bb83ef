"""Bad input: one line on stderr naming the problem, exit 2, and the store left as it was."""

import hashlib
import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from stillroom.flows._cli import app
from stillroom.storage import Licence, Store
from tests.conftest import SENTINEL_KEY

OPENAI = {
    "teacher.provider": "openai",
    "teacher.model": "m",
    "teacher.base_url": "http://127.0.0.1:9/v1",
    "teacher.api_key_env": "STILLROOM_TEST_KEY",
}


def snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def seeded_store(tmp_path):
    store = Store(tmp_path / "store")
    store.commit("earlier", pa.table({"id": ["a"], "text": ["b"]}), licence=Licence("MIT"))
    return tmp_path / "store"


def run_cli(*args, env=None):
    result = CliRunner().invoke(app, list(args), env=env or {})
    return result.exit_code, result.stderr.strip(), result.stdout


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CASES = {
    "missing data file": (
        {"data.path": "/nonexistent/data.jsonl"},
        "data file not found: /nonexistent/data.jsonl",
    ),
    "wrong text field": ({"data.text_field": "body"}, "data.text_field 'body' is not a column"),
    "wrong id field": ({"data.id_field": "uid"}, "data.id_field 'uid' is not a column"),
    "unknown config key": ({"teacher.modle": "x"}, "unknown config key 'teacher.modle'"),
    "label set of one": ({"task.labels": ["only"]}, "needs at least 2 labels"),
    "unknown gold label": ({"task.labels": ["card_arrival", "other"]}, "is not in task.labels"),
    "invalid base_url": (
        {**OPENAI, "teacher.base_url": "localhost:8000"},
        "invalid teacher base_url",
    ),
    "missing API key": (
        OPENAI,
        "environment variable STILLROOM_TEST_KEY (teacher.api_key_env) is not set",
    ),
    "negative limit": ({"data.limit": -3}, "config key 'data.limit'"),
    "response cap too small": (
        {**OPENAI, "teacher.max_response_bytes": 10},
        "config key 'teacher.max_response_bytes'",
    ),
    "a name the store uses for source records": (
        {"name": "banking77-source"},
        "config key 'name': ends in '-source', which the store uses for the source records of "
        "dataset 'banking77': choose another name",
    ),
    # secrets and URLs that would leak or break
    "credentials in base_url": (
        {**OPENAI, "teacher.base_url": f"http://user:{SENTINEL_KEY}@127.0.0.1:9/v1"},
        "'teacher.base_url': must not hold credentials (user:password@host): put the key in an environment "
        "variable and name it in teacher.api_key_env",
    ),
    "query in base_url": (
        {**OPENAI, "teacher.base_url": "http://127.0.0.1:9/v1?api-version=2024-06-01"},
        "'teacher.base_url': must not have a query string or fragment: give query parameters as teacher.query",
    ),
    "secret in a plain header": (
        {**OPENAI, "teacher.headers": {"api-key": SENTINEL_KEY}},
        "header 'api-key' looks like it holds a secret: name the environment variable",
    ),
    "missing header variable": (
        {**OPENAI, "teacher.api_key_env": None, "teacher.header_env": {"api-key": "STILLROOM_NO"}},
        "environment variable STILLROOM_NO (teacher.header_env.api-key) is not set",
    ),
    "embedding student on a multi-label task": (
        {
            **OPENAI,
            "task.multi_label": True,
            "data.gold_field": None,
            "students": [{"kind": "embedding"}],
        },
        "students.0: the embedding student does not support multi-label tasks yet",
    ),
    "unknown student kind": ({"students": [{"kind": "gpt"}]}, "config key 'students.0'"),
    # label sets that cannot work
    "empty label": ({"task.labels": ["card_arrival", ""]}, "a label is empty"),
    "labels equal up to case": (
        {"task.labels": ["card_arrival", "Card_Arrival"]},
        "labels 'card_arrival' and 'Card_Arrival' are the same label to the answer parser",
    ),
    "label with spaces around": (
        {"task.labels": ["card_arrival", " card_linking "]},
        "label ' card_linking ' has leading or trailing spaces",
    ),
    "separator in a multi-label label": (
        {
            **OPENAI,
            "task.multi_label": True,
            "data.gold_field": None,
            "task.labels": ["card_arrival", "a|b"],
        },
        "label 'a|b' contains '|', which joins the labels of a multi-label answer",
    ),
    "unknown provider": ({"teacher.provider": "magic"}, "config key 'teacher.provider'"),
    # students and student teachers
    "bert base that is not an encoder": (
        {"students": [{"kind": "logreg"}, {"kind": "bert", "base": "/nonexistent/llama"}]},
        "students.1: bert student base '/nonexistent/llama' is not a transformers model folder",
    ),
    "bert alpha out of range": (
        {"students": [{"kind": "bert", "alpha": 1.5}]},
        "config key 'students.0.alpha': Input should be less than or equal to 1",
    ),
    "student teacher without a path": (
        {"teacher": {"provider": "student"}},
        "teacher.path is required for provider 'student'",
    ),
    "student teacher folder that is not a student": (
        {"teacher": {"provider": "student", "path": "/tmp"}},
        "teacher.path /tmp is not a trained student's folder (no student.json)",
    ),
    "student teacher with its own terms": (
        {"teacher": {"provider": "student", "path": "/tmp", "terms": "apache-2.0"}},
        "a student teacher inherits the terms of the teacher it learned from",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_or_data_is_one_line_exit_2_store_untouched(case, write_config, seeded_store):
    changes, message = CASES[case]
    before = snapshot(seeded_store)
    code, err, _ = run_cli("run", str(write_config(changes)))
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert SENTINEL_KEY not in err
    assert snapshot(seeded_store) == before


# a secret read from the environment that could not go in a header: named, never shown
SECRET_VARIABLES = {
    "key with a trailing non-breaking space": (
        {"STILLROOM_TEST_KEY": SENTINEL_KEY + "\xa0"},
        {},
        "environment variable STILLROOM_TEST_KEY (teacher.api_key_env) must hold",
    ),
    "key with a trailing carriage return": (
        {"STILLROOM_TEST_KEY": SENTINEL_KEY + "\r"},
        {},
        "environment variable STILLROOM_TEST_KEY (teacher.api_key_env) must hold",
    ),
    "header secret with a space inside": (
        {"STILLROOM_TEST_KEY": "sk-fine", "STILLROOM_HDR": "a " + SENTINEL_KEY},
        {"teacher.header_env": {"api-key": "STILLROOM_HDR"}},
        "environment variable STILLROOM_HDR (teacher.header_env.api-key) must hold",
    ),
}


@pytest.mark.parametrize("case", sorted(SECRET_VARIABLES))
def test_a_secret_that_cannot_go_in_a_header_is_exit_2_naming_its_variable(
    case, write_config, seeded_store
):
    env, changes, message = SECRET_VARIABLES[case]
    before = snapshot(seeded_store)
    code, err, out = run_cli("run", str(write_config({**OPENAI, **changes})), env=env)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert SENTINEL_KEY not in err + out
    assert snapshot(seeded_store) == before


def test_the_response_cap_reaches_the_teacher(write_config, monkeypatch):
    from stillroom.flows._config import load_config
    from stillroom.flows._teacher import build_teacher

    monkeypatch.setenv("STILLROOM_TEST_KEY", SENTINEL_KEY)
    config = load_config(write_config({**OPENAI, "teacher.max_response_bytes": 65_536}))
    assert build_teacher(config).max_response_bytes == 65_536


def test_bad_set_values(write_config, seeded_store):
    before = snapshot(seeded_store)
    code, err, _ = run_cli("run", str(write_config()), "--set", "task.labels=[a, b")
    assert (code, err) == (
        2,
        "stillroom: error: --set task.labels: '[a, b' is not a valid YAML value",
    )
    assert snapshot(seeded_store) == before


def test_bad_files(tmp_path, write_config, seeded_store):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    dupes = write_jsonl(tmp_path / "d.jsonl", [{"id": "1", "text": "a"}, {"id": "1", "text": "b"}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "text": "a"}\n{"id": 2, "te\n')
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"id": "1", "text": "  "}])
    number = write_jsonl(
        tmp_path / "number.jsonl", [{"id": "1", "text": "fine"}, {"id": "2", "text": 42}]
    )
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"id": "1", "text": "fine"}\n{"id": "2", "text": "x \\udc00"}\n')
    expected = {
        str(empty): "has no records",
        str(surrogate): "record 2 has a lone surrogate (\\udc00) in its 'text' field",
        dupes: "duplicate id '1'",
        str(broken): "line 2 is not valid JSON",
        blank: "have an empty 'text'",
        number: "record 2 has a int in its 'text' field (data.text_field), not text: 42",
    }
    before = snapshot(seeded_store)
    for path, message in expected.items():
        config = write_config({"data.path": path, "data.gold_field": None})
        code, err, _ = run_cli("label", str(config))
        assert (code, len(err.splitlines())) == (2, 1) and message in err, err
    assert snapshot(seeded_store) == before


def test_config_file_problems(tmp_path):
    assert run_cli("run", str(tmp_path / "none.yaml"))[:2] == (
        2,
        f"stillroom: error: config file not found: {tmp_path / 'none.yaml'}",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    code, err, _ = run_cli("run", str(bad))
    assert code == 2 and "not valid YAML" in err
    code, err, _ = run_cli("run", str(bad), "--set", "novalue")
    assert code == 2


def test_bad_set_override(write_config):
    code, err, _ = run_cli("run", str(write_config()), "--set", "students.7.C=1")
    assert code == 2 and "students.7.C" in err


def test_the_key_is_never_printed(write_config):
    config = write_config({**OPENAI, "teacher.base_url": "not-a-url"})
    code, err, out = run_cli("run", str(config), env={"STILLROOM_TEST_KEY": SENTINEL_KEY})
    assert code == 2 and SENTINEL_KEY not in err + out


def test_datasets_commands(seeded_store):
    store = str(seeded_store)
    code, _, out = run_cli("datasets", "list", "--store", store)
    assert code == 0 and "earlier@v1" in out
    code, _, out = run_cli("datasets", "show", "earlier", "--store", store)
    assert code == 0 and json.loads(out)["licence"]["spdx"] == "MIT"
    assert run_cli("datasets", "verify", "earlier@v1", "--store", store)[0] == 0
    (seeded_store / "datasets" / "earlier" / "v1" / "data.parquet").write_bytes(b"tampered")
    code, err, _ = run_cli("datasets", "verify", "earlier", "--store", store)
    assert code == 1 and "modified" in err
    code, err, _ = run_cli("datasets", "show", "missing", "--store", store)
    assert code == 2 and "no dataset named 'missing'" in err


def test_estimate_counts_tokens_and_cost_without_a_key(write_config):
    config = write_config({**OPENAI, "data.limit": 100})
    code, err, out = run_cli("estimate", str(config))
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in (x.strip() for x in out.splitlines()))
    assert fields["records"] == "100" and fields["to label"] == "100"
    inputs, outputs = int(fields["input tokens"]), int(fields["output tokens (max)"])
    assert inputs > 100 * 200  # the 77-label system prompt alone is several hundred tokens
    assert float(fields["cost_usd (answered at once)"]) == pytest.approx(
        round((inputs * 0.15 + outputs * 0.6) / 1e6, 4)
    )
    # the default one re-ask per off-label answer resends the conversation: the max is higher
    assert float(fields["cost_usd (max, 1 re-ask(s) each)"]) > 2 * float(
        fields["cost_usd (answered at once)"]
    )


def test_show_failures_and_diff(tmp_path):
    store = Store(tmp_path / "s")
    rows = {
        "id": ["a", "b", "c"],
        "text": ["x", "y", "z"],
        "label": ["pos", None, "neg"],
        "error": [None, "off-label answer", None],
        "raw": ["pos", "I think\nmaybe", "neg"],
    }
    first = store.commit("d", pa.table(rows), licence=Licence("MIT"))
    rows2 = {**rows, "id": ["a", "b", "d"], "label": ["neg", "pos", "neg"], "error": [None] * 3}
    second = store.commit("d", pa.table(rows2), licence=Licence("MIT"))
    code, _, out = run_cli(
        "datasets", "show", str(first), "--store", str(store.root), "--failures", "5"
    )
    assert code == 0 and "1 failed records" in out and "b\toff-label answer\tI think maybe" in out
    code, _, out = run_cli("datasets", "diff", str(first), str(second), "--store", str(store.root))
    assert code == 0
    assert out.splitlines()[0] == "d@v1 -> d@v2: 1 added, 1 removed, 2 relabeled, 0 unchanged"
    assert out.splitlines()[1] == "agreement: 0.0% (0 of the 1 records both answered)"
    assert "a\tpos -> neg" in out and "b\tNone -> pos" in out
    # versions of different sizes, and of different datasets
    rows3 = {k: [*v, *v] for k, v in rows2.items()} | {"id": ["a", "b", "d", "e", "f", "g"]}
    rows3["label"] = ["neg", "pos", "pos", "neg", "neg", "neg"]
    other = store.commit("other", pa.table(rows3), licence=Licence("MIT"))
    code, _, out = run_cli("datasets", "diff", str(second), str(other), "--store", str(store.root))
    assert code == 0
    assert out.splitlines()[:2] == [
        "d@v2 -> other@v1: 3 added, 0 removed, 1 relabeled, 2 unchanged",
        "agreement: 66.7% (2 of the 3 records both answered)",
    ]
    assert "d\tneg -> pos" in out


def test_log_prints_each_versions_lineage(tmp_path):
    store = Store(tmp_path / "s")
    source = store.commit(
        "d-source", pa.table({"id": ["a"], "text": ["x"]}), licence=Licence("MIT")
    )
    first = store.commit(
        "d",
        pa.table({"id": ["a"], "label": ["pos"]}),
        licence=Licence("MIT"),
        parent=source,
        message="first labels",
        command="stillroom label c.yaml",
    )
    second = store.commit(
        "d", pa.table({"id": ["a"], "label": ["neg"]}), licence=Licence("MIT"), parent=source
    )
    assert store.manifest(second)["previous"] == str(first)
    assert store.manifest(first)["previous"] is None
    code, _, out = run_cli("datasets", "log", "d", "--store", str(store.root))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("d@v2  ") and lines[0].endswith("1 rows  from d-source@v1")
    assert lines[1].startswith("d@v1  ")
    assert lines[2:] == ["    first labels", "    $ stillroom label c.yaml"]
    code, err, _ = run_cli("datasets", "log", "nope", "--store", str(store.root))
    assert code == 2 and "no dataset named 'nope'" in err


def test_estimate_counts_one_request_per_label_for_multi_label(write_config):
    config = write_config(
        {
            **OPENAI,
            "data.limit": 10,
            "data.gold_field": None,
            "task.multi_label": True,
            "task.labels": ["card_arrival", "card_linking", "exchange_rate"],
        }
    )
    code, err, out = run_cli("estimate", str(config))
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in (x.strip() for x in out.splitlines()))
    assert (fields["records"], fields["requests"], fields["to label"]) == ("10", "30", "30")


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(write_config, monkeypatch):
    from stillroom.flows import _teacher

    def broken(config):
        raise RuntimeError("disk on fire\nsecond line of detail")

    monkeypatch.setattr(_teacher, "preflight", broken)
    config = str(write_config())
    code, err, _ = run_cli("run", config)
    assert code == 1
    assert err == (
        "stillroom: error: RuntimeError: disk on fire (run with --debug for the traceback)"
    )
    for args, env in (
        ((["--debug", "run", config]), None),
        (["run", config], {"STILLROOM_DEBUG": "1"}),
    ):
        result = CliRunner().invoke(app, args, env=env or {})
        assert isinstance(result.exception, RuntimeError) and result.exit_code == 1


def test_a_teacher_that_rejects_the_key_mid_run_is_one_line_without_traceback(
    write_config, tmp_path
):
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import ROOT

    class Rejecting(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(401)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Rejecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = write_config({**OPENAI, "teacher.base_url": url, "data.limit": 20})
    env = {**os.environ, "STILLROOM_TEST_KEY": SENTINEL_KEY, "PREFECT_HOME": str(tmp_path / "p")}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stillroom", "label", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"stillroom: error: teacher endpoint 127.0.0.1:{server.server_address[1]} "
        "rejected the API key (HTTP 401)"
    ]
    assert SENTINEL_KEY not in result.stderr + result.stdout


def test_datasets_list_names_a_broken_version_and_lists_the_rest(seeded_store):
    store = Store(seeded_store)
    store.commit("other", pa.table({"id": ["x"], "text": ["y"]}), licence=Licence("MIT"))
    (seeded_store / "datasets" / "other" / "v1" / "manifest.json").unlink()
    code, err, out = run_cli("datasets", "list", "--store", str(seeded_store))
    assert code == 0 and "earlier@v1" in out and "other@v1" not in out
    assert err == "stillroom: warning: other@v1: manifest.json is missing"


def test_a_damaged_store_is_one_line_exit_2_and_nothing_is_lost(tmp_path, write_config):
    # a store path that is a file
    not_a_folder = tmp_path / "store-file"
    not_a_folder.write_text("x")
    code, err, _ = run_cli("label", str(write_config({"store": str(not_a_folder)})))
    assert code == 2 and err.startswith(f"stillroom: error: store {not_a_folder} is a file")
    # a cache that is not a database: named, with how to recover, and left as it was
    store = tmp_path / "store"
    store.mkdir()
    (store / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    code, err, _ = run_cli("label", str(write_config({"data.limit": 20})))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cache {store / 'cache.sqlite'} is damaged" in err and "move it aside" in err
    assert (store / "cache.sqlite").read_bytes() == b"this is not a database" * 100


def test_a_hand_edited_manifest_fails_verify_and_is_not_trained_on(tmp_path, write_config):
    store = Store(tmp_path / "store")
    rows = {"id": [f"r{i}" for i in range(40)], "text": [f"text {i}" for i in range(40)]}
    ref = store.commit("banking77", pa.table(rows), licence=Licence("CC-BY-4.0"))
    path = tmp_path / "store" / "datasets" / "banking77" / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["licence"]["spdx"], manifest["rows"] = "MIT", 999
    path.write_text(json.dumps(manifest))
    code, err, _ = run_cli("datasets", "verify", str(ref), "--store", str(tmp_path / "store"))
    assert code == 1 and "manifest: rows is 999 but data.parquet has 40" in err
    code, err, _ = run_cli("train", str(write_config()), "--dataset", str(ref))
    assert code == 2 and "banking77@v1 is damaged" in err and len(err.splitlines()) == 1


def test_a_student_teacher_must_know_the_tasks_labels(tmp_path, write_config, seeded_store):
    folder = tmp_path / "students" / "0-logreg"
    folder.mkdir(parents=True)
    info = {
        "kind": "logreg",
        "spec": {"kind": "logreg"},
        "dataset": "other@v1",
        "labels": ["card_arrival", "spam"],
        "teacher": {"provider": "openai", "model": "x"},
        "terms": {"profile": "openai", "statement": "s", "restrictions": []},
        "fingerprint": "0" * 64,
    }
    (folder / "student.json").write_text(json.dumps(info))
    before = snapshot(seeded_store)
    config = write_config({"teacher": {"provider": "student", "path": str(folder)}})
    code, err, _ = run_cli("run", str(config))
    assert code == 2 and len(err.splitlines()) == 1
    assert "was trained on other labels: task.labels has 'card_linking', which it never" in err
    (folder / "student.json").write_text('{"kind": "logreg"')
    code, err, _ = run_cli("run", str(config))
    assert code == 2 and f"{folder / 'student.json'} is damaged" in err
    assert snapshot(seeded_store) == before


def test_control_characters_from_a_store_are_escaped_when_printed(tmp_path):
    store = Store(tmp_path / "s")
    osc = "\x1b]0;pwned\x07"
    rows = {
        "id": ["a", f"b{osc}"],
        "text": ["x", "y"],
        "label": ["pos", None],
        "error": [None, "off-label answer\x1b[2J"],
        "raw": ["pos", f"{osc}I think\u202eevil"],
    }
    first = store.commit("d", pa.table(rows), licence=Licence("MIT"), message=f"msg{osc}")
    second = store.commit(
        "d", pa.table({**rows, "label": ["neg", f"pos{osc}"]}), licence=Licence("MIT")
    )
    root = str(store.root)
    outputs = [
        run_cli("datasets", "show", str(first), "--store", root, "--failures", "5"),
        run_cli("datasets", "diff", str(first), str(second), "--store", root),
        run_cli("datasets", "log", "d", "--store", root),
    ]
    for code, err, out in outputs:
        assert code == 0
        assert not any(c in err + out for c in "\x1b\x07\u202e"), (err + out)[-400:]
    show, diff, log = (out for _, _, out in outputs)
    assert (
        "b\\x1b]0;pwned\\x07\toff-label answer\\x1b[2J\t\\x1b]0;pwned\\x07I think\\u202eevil"
        in show
    )
    assert "b\\x1b]0;pwned\\x07\tNone -> pos\\x1b]0;pwned\\x07" in diff
    assert "    msg\\x1b]0;pwned\\x07" in log.splitlines()


def test_a_replaced_student_file_is_never_loaded(tmp_path, write_config):
    """A model file replaced after training (a pickle that runs a command) is refused by its
    digest on every path that loads students: evaluate --run, a student teacher, an incremental
    run measuring the current students; the error names the file and nothing runs."""
    from tests.planted import plant

    config = write_config({"data.limit": 150, "incremental": True})
    code, err, _ = run_cli("run", str(config), "--out", str(tmp_path / "run"))
    assert code == 0, err
    marker = tmp_path / "ran"
    model = plant(tmp_path / "run" / "students" / "0-logreg" / "model.skops", marker)
    named = f"{model} is not the file the student wrote"
    evaluate = (
        "evaluate",
        str(config),
        "--dataset",
        "banking77@v1",
        "--run",
        str(tmp_path / "run"),
    )
    teacher = {"name": "pool", "teacher": {"provider": "student", "path": str(model.parent)}}
    runs = {
        "evaluate --run": evaluate,
        "a student teacher": ("run", str(write_config(teacher, name="pool.yaml"))),
        "an incremental run": ("run", str(write_config({"data.limit": 200, "incremental": True}))),
    }
    store = snapshot(tmp_path / "store")
    for case, args in runs.items():
        code, err, _ = run_cli(*args)
        assert code == 2 and named in err.splitlines()[-1], (case, err)
        assert not marker.exists(), case
    assert snapshot(tmp_path / "store") == store  # refused before anything was labeled


def test_evaluate_run_reads_the_run_it_is_given_on_its_own_version(tmp_path, write_config):
    """train.json's folders are relative to the run: a copied run evaluates its own students
    (the original gone); a --dataset other than the run's version is refused, not ignored."""
    import shutil

    config = write_config({"data.limit": 150})
    code, err, _ = run_cli("run", str(config), "--out", str(tmp_path / "run"))
    assert code == 0, err
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.rmtree(tmp_path / "run")
    copy = tmp_path / "copy"
    code, err, _ = run_cli("evaluate", str(config), "--dataset", "banking77@v1", "--run", str(copy))
    assert code == 0, err
    assert json.loads((copy / "report.json").read_text())["students"][0]["kind"] == "logreg"
    code, err, _ = run_cli("label", str(write_config({"data.limit": 200})))
    assert code == 0, err
    before = snapshot(copy)
    for spec in ("banking77@v2", "banking77"):
        code, err, _ = run_cli("evaluate", str(config), "--dataset", spec, "--run", str(copy))
        assert code == 2 and len(err.splitlines()) == 1, err
        assert (
            f"--dataset {spec} is banking77@v2, but the students in {copy} were trained on "
            "banking77@v1: give --dataset banking77@v1, or leave out --run" in err
        )
    assert snapshot(copy) == before


def test_retry_malformed_reaches_the_teacher(write_config, monkeypatch):
    from stillroom.flows._config import load_config
    from stillroom.flows._teacher import build_teacher

    monkeypatch.setenv("STILLROOM_TEST_KEY", SENTINEL_KEY)
    config = load_config(write_config({**OPENAI, "teacher.retry_malformed": True}))
    assert build_teacher(config).retry_malformed


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"input_tokens": 1e999}, "line 2: input_tokens is inf, not a token count"),
        ({"cost_usd": float("nan")}, "line 2: cost_usd is nan, not a finite number from 0"),
        ({"output_tokens": 10**19}, "line 2: output_tokens is 10000000000000000000"),
    ],
)
def test_a_bad_line_in_cache_import_is_one_line_exit_2_nothing_imported(tmp_path, line, problem):
    from stillroom.storage import ResponseCache

    with ResponseCache(tmp_path / "a.sqlite") as source:
        source.put({"q": 1}, {"a": 1})
        source.put({"q": 2}, {"a": 2})
        source.export(tmp_path / "a.jsonl")
    first, second = (tmp_path / "a.jsonl").read_text().splitlines()
    crafted = tmp_path / "crafted.jsonl"
    crafted.write_text(f"{first}\n{json.dumps(json.loads(second) | line)}\n")
    store = tmp_path / "store"
    code, err, _ = run_cli("cache", "import", str(crafted), "--store", str(store))
    assert code == 2 and len(err.splitlines()) == 1 and problem in err, err
    assert "nothing was imported" in err
    with ResponseCache(store / "cache.sqlite") as cache:
        assert len(cache) == 0


def test_verify_fails_a_version_whose_probabilities_are_nan(tmp_path):
    store = Store(tmp_path / "store")
    rows = {"id": ["a", "b"], "text": ["x", "y"], "probs": [[0.5, 0.5], [float("nan")] * 2]}
    ref = store.commit("d", pa.table(rows), licence=Licence("MIT"))
    code, err, _ = run_cli("datasets", "verify", str(ref), "--store", str(tmp_path / "store"))
    assert code == 1 and "probabilities that are not a distribution" in err and "'b'" in err


def test_out_is_refused_unless_new_empty_or_a_run_of_this_config(tmp_path, write_config):
    """--out into a folder of the user's is refused before anything is written; into a run of
    this config, the new students replace all the old ones."""
    config = write_config({"data.limit": 150})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "report.json").write_text('{"mine": true}')
    before = snapshot(mine)
    refused = f"--out {mine} is not empty and not a run folder of 'banking77'"
    code, err, _ = run_cli("run", str(config), "--out", str(mine))
    assert code == 2 and len(err.splitlines()) == 1 and refused in err, err
    assert not (tmp_path / "store" / "datasets").exists()  # refused before labeling
    run = tmp_path / "run"
    code, err, _ = run_cli("run", str(config), "--out", str(run))
    assert code == 0, err
    code, err, _ = run_cli("train", str(config), "--dataset", "banking77@v1", "--out", str(mine))
    assert code == 2 and len(err.splitlines()) == 1 and refused in err, err
    assert snapshot(mine) == before
    stale = run / "students" / "1-embedding"
    stale.mkdir()
    (stale / "model.skops").write_text("an earlier run's student")
    code, err, _ = run_cli("train", str(config), "--dataset", "banking77@v1", "--out", str(run))
    assert code == 0, err
    assert sorted(p.name for p in (run / "students").iterdir()) == ["0-logreg"]
    assert not (run / "report.json").exists()  # the old students' report went with them
    code, err, _ = run_cli("run", str(write_config({"name": "other"})), "--out", str(run))
    assert code == 2 and "not a run folder of 'other'" in err


def test_a_train_json_naming_folders_outside_its_run_is_refused(tmp_path):
    from stillroom.flows._errors import SetupError
    from stillroom.flows._training import read_trained

    run = tmp_path / "run"
    with pytest.raises(SetupError, match=f"{run} is not a run folder made by train"):
        read_trained(run)
    run.mkdir()
    for folder in ("/elsewhere/students/0-logreg", "../other/students/0-logreg"):
        entry = {"folder": folder, "spec": {"kind": "logreg"}}
        (run / "train.json").write_text(json.dumps({"dataset": "x@v1", "students": [entry]}))
        with pytest.raises(SetupError, match=f"names {folder}, which"):
            read_trained(run)
    inside = {"folder": str(run / "students" / "0-logreg"), "spec": {"kind": "logreg"}}
    (run / "train.json").write_text(json.dumps({"dataset": "x@v1", "students": [inside]}))
    assert read_trained(run)["students"][0]["folder"] == run / "students" / "0-logreg"


def test_label_retry_malformed_asks_again_what_was_cached_malformed(tmp_path, write_config):
    from tests.openai_server import FakeOpenAI

    server = FakeOpenAI(hostile={"logprob": 1000})
    with server as url:
        config = write_config(
            {
                **OPENAI,
                "teacher.base_url": url,
                "teacher.price": "unknown",
                "teacher.min_labeled": 0,
                "data.limit": 3,
            }
        )
        env = {"STILLROOM_TEST_KEY": SENTINEL_KEY}
        code, err, _ = run_cli("label", str(config), env=env)
        assert code == 0 and "3 failed (3 malformed answer: a logprob is 1000" in err, err
        server.hostile = {}
        code, err, _ = run_cli("label", str(config), env=env)  # cached: not paid again
        assert code == 0 and sum(server.billed.values()) == 3, err
        code, err, _ = run_cli("label", str(config), "--retry-malformed", env=env)
    assert code == 0 and sum(server.billed.values()) == 6 and "3 labeled, 0 failed" in err, err
