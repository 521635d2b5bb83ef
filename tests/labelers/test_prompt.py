import pytest

from stillroom.labelers import (
    ClassifyTask,
    LabelerError,
    OpenAITeacher,
    build_messages,
    prompt_hash,
)


def test_messages_carry_system_prompt_labels_descriptions_and_shots():
    task = ClassifyTask(
        ("ham", "spam"),
        "Is this SMS spam?",
        {"spam": "unsolicited advertising"},
        examples=(("win a prize now", "spam"), ("see you at 5", "ham")),
        system="You are careful.",
    )
    messages = build_messages(task, "free entry!!")
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    system = messages[0]["content"]
    assert (
        system.startswith("You are careful.")
        and "- spam: unsolicited advertising" in system
        and "- ham" in system
    )
    assert messages[2]["content"] == "spam" and messages[-1]["content"] == "free entry!!"


def test_any_prompt_change_changes_the_hash_and_the_cache_key():
    base = ClassifyTask(("ham", "spam"), "Is this SMS spam?")
    variants = [
        ClassifyTask(("ham", "spam"), "Is this SMS spam? Be strict."),
        ClassifyTask(("ham", "spam"), "Is this SMS spam?", {"ham": "a normal message"}),
        ClassifyTask(("ham", "spam"), "Is this SMS spam?", examples=(("hi", "ham"),)),
        ClassifyTask(("ham", "spam"), "Is this SMS spam?", system="Persona."),
    ]
    hashes = {prompt_hash(t) for t in [base, *variants]}
    assert len(hashes) == 5
    bodies = [OpenAITeacher(t, model="m").build_request("x") for t in [base, *variants]]
    assert len({str(b) for b in bodies}) == 5


def test_shot_labels_must_be_in_the_label_set():
    with pytest.raises(LabelerError, match="few-shot example label 'eggs'"):
        ClassifyTask(("ham", "spam"), examples=(("x", "eggs"),))
