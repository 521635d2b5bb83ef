import math

import pytest

from stillroom.labelers import TokenStep, canonical, label_distribution, match_label

LABELS = ["card_arrival", "card_linking", "exchange_rate"]


def step(token: str, p: float, *alternatives: tuple[str, float]) -> TokenStep:
    top = ((token, math.log(p)),) + tuple((t, math.log(q)) for t, q in alternatives)
    return TokenStep(token, math.log(p), top)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("positive", "positive"),
        (" Positive", "positive"),
        ('"NEGATIVE".', "negative"),
        ("positive\n\nbecause it is nice", "positive"),
        ("neutral", None),
        ("", None),
        ("positive or negative", None),
    ],
)
def test_match_label_is_strict_but_forgives_case_quotes_and_spaces(answer, expected):
    assert match_label(answer, ["negative", "positive"]) == expected


def test_canonical_keeps_inner_punctuation():
    assert canonical("  'reverted_card_payment?' ") == "reverted_card_payment"


def test_single_token_labels_renormalise_and_keep_coverage():
    steps = [step("positive", 0.6, ("negative", 0.3), ("Sorry", 0.1))]
    probs, coverage = label_distribution(steps, ["negative", "positive"])
    assert probs == pytest.approx([1 / 3, 2 / 3])
    assert coverage == pytest.approx(0.9)


def test_leading_space_and_case_variants_add_up():
    steps = [step(" positive", 0.5, (" Positive", 0.2), ("negative", 0.2), (" NEG", 0.1))]
    probs, coverage = label_distribution(steps, ["negative", "positive"])
    assert probs == pytest.approx([0.3, 0.7])
    assert coverage == pytest.approx(1.0)


def test_labels_that_share_a_first_token_are_told_apart_later():
    # P(card)=0.9 then P(_link | card)=0.7, P(_arr | card)=0.3; P(exchange)=0.1
    steps = [
        step("card", 0.9, ("exchange", 0.1)),
        step("_link", 0.7, ("_arr", 0.3)),
        step("ing", 1.0),
    ]
    probs, coverage = label_distribution(steps, LABELS)
    assert probs == pytest.approx([0.27, 0.63, 0.1])
    assert coverage == pytest.approx(1.0)


def test_an_alternative_shared_by_several_labels_is_split_evenly():
    steps = [step("exchange", 0.6, ("card", 0.4)), step("_rate", 1.0)]
    probs, _ = label_distribution(steps, LABELS)
    assert probs == pytest.approx([0.2, 0.2, 0.6])


def test_walk_stops_once_the_label_is_closed():
    # "positive\n\nIt was great" - tokens after the closing newline say nothing about the label
    steps = [
        step("positive", 0.8, ("negative", 0.2)),
        step("\n", 0.9, (".", 0.1)),
        step("It", 0.5, ("negative", 0.5)),
    ]
    probs, coverage = label_distribution(steps, ["negative", "positive"])
    assert probs == pytest.approx([0.2, 0.8])
    assert coverage == pytest.approx(1.0)  # '.' after the label is the same answer


def test_no_mass_on_any_label_gives_none():
    assert label_distribution([step("Sorry", 0.9, ("I", 0.1))], ["negative", "positive"]) is None
