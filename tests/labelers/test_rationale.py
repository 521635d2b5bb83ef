"""Distilling step by step, the teacher's side: a classification asked for a short rationale and
then a last line "Label: <label>" keeps the rationale apart, and the label's distribution comes
from the tokens after "Label:" (exactly the server's); an answer without that line is off-label."""

import pytest

from stillroom.labelers import (
    ClassifyTask,
    LabelerError,
    OpenAITeacher,
    RecordedFields,
    RecordedTeacher,
    prompt_hash,
    system_prompt,
)
from stillroom.labelers._openai import _after_rationale
from stillroom.labelers._parse import TokenStep
from tests.conftest import SENTINEL_KEY
from tests.openai_server import FakeOpenAI, FakeTeacher, expected_rationale

LABELS = ("arrival", "linking", "exchange", "pin", "topup")
TASK = ClassifyTask(LABELS, "Classify the banking message.", rationale=True)
TEXTS = [(f"r{i}", f"message number {i} about my account") for i in range(12)]


def teacher(url, task=TASK, **kwargs):
    return OpenAITeacher(task, model="fake", base_url=url, api_key=SENTINEL_KEY, **kwargs)


def test_the_prompt_asks_for_a_rationale_and_names_a_new_template():
    plain = ClassifyTask(LABELS, "Classify the banking message.")
    assert "First give a short rationale" in system_prompt(TASK)
    assert '"Label: <label>"' in system_prompt(TASK)
    assert "First give a short rationale" not in system_prompt(plain)
    assert prompt_hash(TASK) != prompt_hash(plain)


def test_the_rationale_is_kept_apart_and_the_distribution_is_the_servers():
    server = FakeOpenAI(FakeTeacher(accuracy=1.0), outside_mass=0.1)
    with server as url:
        t = teacher(url)
        body = t.build_request(TEXTS[0][1])
        assert body["max_tokens"] > 200  # room for the rationale before the label
        answers = t.label(TEXTS)
    for (record_id, text), answer in zip(TEXTS, answers, strict=True):
        truth = server.teacher.distribution(text, list(LABELS))
        assert answer.id == record_id and answer.label == max(truth, key=truth.get)
        assert answer.rationale == expected_rationale(text, answer.label)
        assert answer.raw == f"{answer.rationale}\nLabel: {answer.label}"
        assert answer.coverage == pytest.approx(0.9)
        for label in LABELS:
            assert answer.probs[LABELS.index(label)] == pytest.approx(truth.get(label, 0.0))


def test_without_logprobs_the_label_is_one_hot_and_the_rationale_kept():
    server = FakeOpenAI(FakeTeacher(accuracy=1.0), logprobs=False)
    with server as url:
        (answer,) = teacher(url).label(TEXTS[:1])
    assert answer.rationale == expected_rationale(TEXTS[0][1], answer.label)
    assert sorted(answer.probs) == [0.0, 0.0, 0.0, 0.0, 1.0] and answer.coverage is None


def test_an_answer_without_the_label_line_is_asked_again_then_kept_as_off_label():
    bodies = []
    server = FakeOpenAI(
        FakeTeacher(accuracy=1.0), faults={"off_label": 1.0}, on_request=bodies.append
    )
    with server as url:
        (answer,) = teacher(url, answer_retries=1).label(TEXTS[:1])
    assert answer.error == "off-label answer" and answer.rationale is None
    assert len(bodies) == 2
    follow_up = bodies[-1]["messages"][-1]["content"]
    assert 'on a last line "Label: <label>"' in follow_up


def test_the_label_line_is_found_however_it_is_dressed():
    steps = [TokenStep(t, 0.0) for t in ["Because", " cards", ".\n", "**", "Label", ":**", " pin"]]
    why, said, rest = _after_rationale("Because cards.\n**Label:** pin", steps)
    assert (why, said) == ("Because cards.", "pin")
    assert [s.token for s in rest] == ["pin"]
    # the last such line counts: a rationale may mention the word
    why, said, _ = _after_rationale("The label: unclear at first.\nlabel: arrival", [])
    assert (why, said) == ("The label: unclear at first.", "arrival")
    assert _after_rationale("arrival", []) == (None, "arrival", [])


def test_json_output_cannot_carry_a_rationale_first():
    with pytest.raises(LabelerError, match="use response_format text"):
        teacher("http://127.0.0.1:9/v1", response_format="json_schema")


def test_recorded_rationales_are_replayed(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "a", "label": "pin", "why": "It mentions a blocked PIN."}\n')
    recorded = RecordedTeacher.from_file(
        TASK, path, model="m", recorded_at="2024", fields=RecordedFields(rationale="why")
    )
    (answer,) = recorded.label([("a", "")])
    assert (answer.label, answer.rationale) == ("pin", "It mentions a blocked PIN.")


def test_byte_tokens_before_the_label_line_do_not_shift_the_cut():
    # the card emoji arrives as byte tokens whose texts are longer than the one character
    tokens = ["Card", " \\xf0\\x9f", "\\x92\\xb3", " lost", ".\n", "Label", ":", " pin"]
    steps = [TokenStep(t, 0.0, ((t, 0.0),)) for t in tokens]
    why, said, rest = _after_rationale("Card 💳 lost.\nLabel: pin", steps)
    assert (why, said) == ("Card 💳 lost.", "pin")
    assert [s.token for s in rest] == ["pin"]
