"""`stillroom estimate` for `task.kind: generate`: max_tokens per completion as the upper bound,
and once completions of the same shape are paid for, an expected cost at their mean length."""

import pytest
from prefect.testing.utilities import prefect_test_harness

from stillroom.storage import Store
from tests.flows.test_generate_flow import cli, write_generate

EXPECTED = (
    "observed completions",
    "output tokens (observed mean)",
    "output tokens (expected)",
    "cost_usd (expected, at the observed mean)",
)


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def estimate(config, *overrides):
    args = [a for o in overrides for a in ("--set", o)]
    code, err, out = cli("estimate", config, *args)
    assert code == 0, err
    return dict(line.strip().split(": ", 1) for line in out.splitlines())


def label_first(tmp_path, url, n):
    """Label the first `n` records; their output tokens, as paid for."""
    code, err, out = cli("label", write_generate(tmp_path, url, changes={"data.limit": n}))
    assert code == 0 and out.strip() == "gen@v1", err
    store = Store(tmp_path / "store")
    return [r["output_tokens"] for r in store.load(store.resolve("gen@v1")).to_pylist()]


def test_without_observations_only_the_upper_bound_is_given_and_nothing_is_created(tmp_path):
    fields = estimate(write_generate(tmp_path))
    assert int(fields["output tokens (max_tokens each, upper bound)"]) == 30 * 24
    assert not set(EXPECTED) & set(fields)
    assert not (tmp_path / "store").exists()


def test_the_expected_cost_uses_the_mean_output_of_the_completions_paid_for(fake_openai, tmp_path):
    _, url = fake_openai()
    lengths = label_first(tmp_path, url, 10)
    # the empty completion (r07) was paid for and is observed too; some ran to max_tokens
    assert len(lengths) == 10 and 0 in lengths and 0 < sum(lengths) < 10 * 24
    fields = estimate(write_generate(tmp_path, url))
    assert (fields["already cached"], fields["to label"]) == ("10", "20")
    assert int(fields["output tokens (max_tokens each, upper bound)"]) == 20 * 24
    assert int(fields["observed completions"]) == 10
    assert float(fields["output tokens (observed mean)"]) == round(sum(lengths) / 10, 2)
    expected = int(fields["output tokens (expected)"])
    assert expected == round(sum(lengths) / 10 * 20)
    inputs = int(fields["input tokens"])
    assert float(fields["cost_usd (expected, at the observed mean)"]) == pytest.approx(
        round((inputs * 1.0 + expected * 2.0) / 1e6, 4)
    )
    assert float(fields["cost_usd (expected, at the observed mean)"]) < float(
        fields["cost_usd (upper bound, all max_tokens long)"]
    )

    # all cached: nothing more is expected, the observations still show
    fields = estimate(write_generate(tmp_path, url, changes={"data.limit": 10}))
    assert (fields["to label"], fields["output tokens (expected)"]) == ("0", "0")
    assert fields["observed completions"] == "10"


@pytest.mark.parametrize(
    "override", ["name=other", "teacher.model=bigger", "task.max_tokens=64"], ids=str
)
def test_only_completions_of_the_same_name_model_and_max_tokens_are_observed(
    override, fake_openai, tmp_path
):
    _, url = fake_openai()
    label_first(tmp_path, url, 10)
    fields = estimate(write_generate(tmp_path, url), override)
    assert not set(EXPECTED) & set(fields)
