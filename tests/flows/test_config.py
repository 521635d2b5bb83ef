import pytest

from stillroom.flows import ConfigError, load_config
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher.budget_usd": -1}, "config key 'teacher.budget_usd'"),
        ({"teacher.rpm": 0}, "config key 'teacher.rpm'"),
        ({"teacher.tpm": -5}, "config key 'teacher.tpm'"),
        (
            {"teacher.provider": "openai", "teacher.model": "m", "teacher.price": None},
            "teacher.price is required for provider 'openai'",
        ),
        ({"teacher.price": "free"}, "config key 'teacher.price'"),
        ({"teacher.terms": "mystery"}, "unknown terms profile 'mystery'"),
        ({"task.labels": ["a", "b", "a"]}, "duplicate label 'a'"),
        ({"students": [{"kind": "gpt"}]}, "config key 'students.0"),
        (
            {"students": [{"kind": "bert", "alpha": 2}]},
            "students.0.alpha': Input should be less than or equal to 1",
        ),
        ({"task.multi_label": True}, "task.multi_label needs a teacher that can answer yes/no"),
    ],
)
def test_bad_values_name_the_key(write_config, changes, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        load_config(write_config(changes))


def test_unknown_price_is_allowed_and_disables_cost(write_config):
    config = load_config(
        write_config(
            {"teacher.provider": "openai", "teacher.model": "m", "teacher.price": "unknown"}
        )
    )
    assert config.teacher.known_price() is None


def test_overrides_parse_yaml_values(write_config):
    config = load_config(
        write_config(),
        ["teacher.rpm=120", "data.limit=5", "teacher.api_key_env=null", "students.0.soft=false"],
    )
    assert (config.teacher.rpm, config.data.limit, config.teacher.api_key_env) == (120, 5, None)
    assert config.students[0].soft is False
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        load_config(write_config(), ["teacher.rpm"])


def test_defaults_per_provider(write_config, delete):
    config = load_config(write_config({"teacher.model": delete, "teacher.terms": delete}))
    assert (config.teacher.model, config.teacher.resolved_terms().profile) == (
        "all-minilm-l6-v2",
        "apache-2.0",
    )
    local = load_config(write_config({"teacher.provider": "transformers", "teacher.model": delete}))
    assert local.teacher.model == "smollm2"
    paid = load_config(
        write_config(
            {
                "teacher.provider": "openai",
                "teacher.model": "gpt-4o-mini",
                "teacher.terms": "openai",
            }
        )
    )
    assert paid.teacher.resolved_terms().restrictions == ["no-competing-models"]


def test_a_budget_with_an_unknown_price_is_not_enforced_and_says_so(write_config, tmp_path, caplog):
    from stillroom.flows._teacher import budget_left
    from stillroom.storage import ResponseCache

    config = load_config(
        write_config(
            {
                "teacher.provider": "openai",
                "teacher.model": "m",
                "teacher.price": "unknown",
                "teacher.budget_usd": 5,
            }
        )
    )
    assert budget_left(config, ResponseCache(tmp_path / "c.sqlite", tag=config.name)) is None
    assert "teacher.budget_usd is not enforced" in caplog.text


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_bundled_example_is_a_valid_config_with_its_files_there(example):
    config = load_config(ROOT / "examples" / example)
    assert (ROOT / config.data.path).is_file()
    for path in (config.task.examples, config.teacher.path):
        assert path is None or (ROOT / path).is_file(), path
