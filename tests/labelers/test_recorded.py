"""The recorded teacher: answers looked up by record id, parsed as a live teacher's are, and never
invented; a file it cannot use is one clear error."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillroom.labelers import (
    EMPTY_COMPLETION,
    MALFORMED_RECORDED_ANSWER,
    NO_RECORDED_ANSWER,
    ClassifyTask,
    GenerateTask,
    LabelerError,
    Price,
    RecordedFields,
    RecordedTeacher,
    Teacher,
    TokenStep,
    Usage,
)

STANCE = ClassifyTask(("against", "favor", "none"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stance_rows():
    return [
        {"id": "a", "out": {"gpt-3.5-turbo": "Favor."}, "raw": {"gpt-3.5-turbo": "B: Favor."}},
        {"id": "b", "out": {"gpt-3.5-turbo": "against"}},
        {"id": "c", "out": {"gpt-3.5-turbo": None}, "raw": {"gpt-3.5-turbo": "I cannot say"}},
        {"id": "d", "out": {"gpt-3.5-turbo": "maybe"}},
        {"id": "e", "out": {"gpt-3.5-turbo": None}},
    ]


def test_recorded_labels_are_matched_and_failures_keep_their_reason(tmp_path):
    path = write_jsonl(tmp_path / "answers.jsonl", stance_rows())
    fields = RecordedFields(label="out.gpt-3.5-turbo", raw="raw.gpt-3.5-turbo")
    teacher = RecordedTeacher.from_file(
        STANCE, path, model="gpt-3.5-turbo", recorded_at="2023-03", fields=fields
    )
    assert isinstance(teacher, Teacher)
    seen = []
    answers = teacher.label([(i, "ignored") for i in "abcdez"], on_answer=seen.append)
    assert seen == answers
    a, b, c, d, e, z = answers
    # the label as a live answer is parsed (case, punctuation), one-hot without probabilities
    assert (a.label, a.probs, a.coverage, a.raw) == ("favor", (0.0, 1.0, 0.0), None, "B: Favor.")
    assert (b.label, b.probs, b.raw) == ("against", (1.0, 0.0, 0.0), "against")
    # answered, but naming no label: kept with what the model said
    assert (c.label, c.error, c.raw) == (None, "off-label answer", "I cannot say")
    assert (d.label, d.error, d.raw) == (None, "off-label answer", "maybe")
    # nothing recorded (a null, or no row at all): never invented
    assert (e.error, z.error) == (NO_RECORDED_ANSWER, NO_RECORDED_ANSWER)
    assert z.id == "z" and z.label is None and z.usage == Usage()
    # nothing was sent or paid
    assert teacher.stats.teacher_calls == 0 and teacher.stats.cost_usd == 0
    assert not teacher.budget_exhausted


def test_recorded_distributions_set_probs_and_coverage(tmp_path):
    rows = [
        {"id": "p", "probs": {"against": 0.2, "favor": 0.6, "none": 0.2}},
        # mass on an answer that is no label: renormalised, the coverage says how much
        {"id": "q", "probs": {"Against": 0.3, "favor": 0.1, "none": 0.1, "unsure": 0.5}},
        {"id": "r", "probs": [0.1, 0.1, 0.8], "label": "favor"},
        {"id": "s", "probs": [0.5, 0.5]},
        {"id": "t", "probs": {"against": -1.0, "favor": 2.0}},
        {"id": "u", "probs": "favor"},
    ]
    path = write_jsonl(tmp_path / "answers.jsonl", rows)
    teacher = RecordedTeacher.from_file(STANCE, path, model="m", recorded_at="2024")
    p, q, r, s, t, u = teacher.label([(x, "") for x in "pqrstu"])
    assert p.label == "favor" and p.probs == pytest.approx((0.2, 0.6, 0.2))
    assert p.coverage == pytest.approx(1.0)
    assert q.label == "against" and q.probs == pytest.approx((0.6, 0.2, 0.2))
    assert q.coverage == pytest.approx(0.5)
    # the recorded label is the answer; its distribution is kept as recorded
    assert r.label == "favor" and r.probs == pytest.approx((0.1, 0.1, 0.8))
    for bad in (s, t, u):
        assert bad.error == MALFORMED_RECORDED_ANSWER and bad.label is None, bad
    assert "2 values for 3 labels" in s.raw


def test_recorded_completions_keep_tokens_finish_reason_and_cost(tmp_path):
    steps = [
        {"token": "Hi", "logprob": -0.1, "top": [{"token": "Hi", "logprob": -0.1}]},
        {"token": "!", "logprob": -0.5, "top": []},
    ]
    rows = [
        {"id": "g1", "output": "Hi!", "finish": "stop", "tokens": steps, "in": 12},
        {"id": "g2", "output": "A long answer", "finish": "length", "in": 3, "out": 40},
        {"id": "g3", "output": "   "},
        {"id": "g4", "output": 7},
        {"id": "g5", "output": "x", "cost_usd": 0.5},
    ]
    fields = RecordedFields(
        completion="output", finish_reason="finish", input_tokens="in", output_tokens="out"
    )

    def replay(path):
        teacher = RecordedTeacher.from_file(
            GenerateTask(),
            path,
            model="gpt-4",
            recorded_at="2023-09-15",
            fields=fields,
            price=Price(1.0, 2.0),
        )
        return teacher.label([(f"g{i}", "") for i in range(1, 6)])

    g1, g2, g3, g4, g5 = replay(write_jsonl(tmp_path / "answers.jsonl", rows))
    # a Parquet file (with one type per column) gives the same answers
    parquet = tmp_path / "answers.parquet"
    keys = sorted({key for row in rows for key in row})
    columns = [{key: row.get(key) for key in keys} for row in rows if row["id"] != "g4"]
    pq.write_table(pa.Table.from_pylist(columns), parquet)
    from_parquet = replay(parquet)
    assert [from_parquet[i] for i in (0, 1, 2, 4)] == [g1, g2, g3, g5]
    assert from_parquet[3].error == NO_RECORDED_ANSWER
    assert (g1.completion, g1.finish_reason, g1.ok) == ("Hi!", "stop", True)
    assert g1.tokens == (TokenStep("Hi", -0.1, (("Hi", -0.1),)), TokenStep("!", -0.5, ()))
    # the recorded tokens say how many there were; the price says what they cost then
    assert g1.usage == Usage(12, 2, pytest.approx((12 * 1.0 + 2 * 2.0) / 1e6))
    assert (g2.finish_reason, g2.ok, g2.tokens) == ("length", True, None)
    assert g2.usage.output_tokens == 40
    assert (g3.error, g3.completion) == (EMPTY_COMPLETION, "   ")
    assert g4.error == MALFORMED_RECORDED_ANSWER
    assert g5.usage.cost_usd == 0.5 and g5.finish_reason is None


def test_provenance_names_the_model_the_date_and_the_file(tmp_path):
    path = write_jsonl(tmp_path / "answers.jsonl", stance_rows())
    fields = RecordedFields(label="out.gpt-3.5-turbo")
    teacher = RecordedTeacher.from_file(
        STANCE, path, model="gpt-3.5-turbo", recorded_at="2023", fields=fields
    )
    described = teacher.describe()
    assert described["provider"] == "recorded" and described["model"] == "gpt-3.5-turbo"
    assert described["recorded_at"] == "2023" and described["prompt_hash"] is None
    source = described["parameters"]["source"]
    assert source["file"] == "answers.jsonl" and source["answers"] == 5
    assert len(source["sha256"]) == 64
    # only the fields that differ from the defaults
    assert described["parameters"]["fields"] == {"label": "out.gpt-3.5-turbo"}


@pytest.mark.parametrize(
    ("content", "fields", "message"),
    [
        (
            '{"id": "a", "label": "favor"}\n{"id": "a", "label": "none"}\n',
            {},
            "id 'a' is there twice",
        ),
        ('{"label": "favor"}\n', {}, "row 1 has no 'id'"),
        ('{"id": "a", "label": "favor"}\nnot json\n', {}, "line 2 is not JSON"),
        ('{"id": "a", "label": "favor"}\n', {"label": "llm.chatgtp"}, "no field 'llm.chatgtp'"),
        ("[1, 2]\n", {}, "line 1 is not a JSON object"),
    ],
)
def test_a_file_it_cannot_use_is_one_clear_error(tmp_path, content, fields, message):
    path = tmp_path / "answers.jsonl"
    path.write_text(content)
    with pytest.raises(LabelerError, match=message) as info:
        RecordedTeacher.from_file(
            STANCE, path, model="m", recorded_at="2023", fields=RecordedFields(**fields)
        )
    assert "\n" not in str(info.value)


def test_a_missing_or_unknown_file_is_named(tmp_path):
    with pytest.raises(LabelerError, match="recorded answers file not found: .*nowhere.jsonl"):
        RecordedTeacher.from_file(STANCE, tmp_path / "nowhere.jsonl", model="m", recorded_at="2023")
    (tmp_path / "answers.csv").write_text("id,label\na,favor\n")
    with pytest.raises(LabelerError, match="expected a .jsonl or .parquet file"):
        RecordedTeacher.from_file(STANCE, tmp_path / "answers.csv", model="m", recorded_at="2023")


def test_a_json_array_file_and_a_byte_order_mark_are_read(tmp_path):
    array = tmp_path / "answers.json"
    array.write_text('[{"id": "a", "label": "favor"}, {"id": "b", "label": "none"}]')
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes('\ufeff{"id": "a", "label": "against"}\n'.encode())
    for path, expected in ((array, ["favor", "none"]), (bom, ["against", None])):
        teacher = RecordedTeacher.from_file(STANCE, path, model="m", recorded_at="2024")
        assert [a.label for a in teacher.label([("a", ""), ("b", "")])] == expected


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"input_tokens": -6_000_000}, "input_tokens"),
        ({"output_tokens": 1e999}, "output_tokens"),
        ({"cost_usd": -1.0}, "cost_usd"),
        ({"cost_usd": float("nan")}, "cost_usd"),
        ({"output_tokens": 2.5}, "output_tokens"),
        ({"probs": {"favor": 0.5, "unsure": float("inf")}}, "probs"),
        ({"probs": {"favor": 0.5, "unsure": -3.0}}, "probs"),
    ],
)
def test_recorded_usage_or_probabilities_that_cannot_be_true_are_malformed(tmp_path, fields, named):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "p", "label": "favor", **fields}])
    teacher = RecordedTeacher.from_file(STANCE, path, model="m", recorded_at="2024")
    (answer,) = teacher.label([("p", "")])
    assert answer.error == MALFORMED_RECORDED_ANSWER and named in answer.raw, answer
