"""The generative student on a tiny in-test causal LM (random weights, a byte-level BPE tokenizer
trained here): the distillation losses against hand-computed values, the half-depth init, SFT
that lowers the NLL of the teacher's completions, the top-k KL where the teacher's tokens align,
LoRA, save/load as a transformers folder, and a fit that resumes after it was stopped."""

import math

import numpy as np
import pytest
import torch

from stillroom.students import (
    Example,
    GenerativeStudent,
    full_kd_loss,
    keep_every_other_layer,
    sparse_kd_loss,
)

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SENTENCES = [
    "the river runs under the old bridge",
    "a small boat drifts past the mill",
    "rain falls on the quiet town at night",
    "the baker opens the shop before dawn",
    "children play by the water in summer",
    "the bridge was built of grey stone",
    "birds sing in the trees near the river",
    "the mill turns slowly in the wind",
]


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    """A 4-layer Llama with random weights and a byte-level BPE tokenizer trained on SENTENCES,
    saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-causal")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # the alphabet is the corpus's characters only: no token is part of a multi-byte character,
    # so whatever a random model writes decodes token by token
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    corpus = SENTENCES + ["user", "assistant", "system", "Write about the river."]
    backend.train_from_iterator(corpus * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def examples(n=8):
    return [Example(f"Write line {i}.", SENTENCES[i % len(SENTENCES)]) for i in range(n)]


def student(folder, **kwargs):
    params = {
        "base": str(folder),
        "epochs": 15,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "max_new_tokens": 12,
        "lora": 0,  # every weight: on a CPU the default would train LoRA adapters
        "progress": False,
        "seed": 0,
    }
    return GenerativeStudent(**(params | kwargs))


def test_sparse_kd_loss_equals_the_hand_computed_value():
    # 2 positions, a vocabulary of 4; the teacher's top-2 and a catch-all for the rest
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    ids = torch.tensor([[0, 1], [2, -1]])
    teacher = torch.tensor([[math.log(0.6), math.log(0.3)], [math.log(0.5), 0.0]])
    t = 2.0
    expected = 0.0
    for row, (tops, lps) in enumerate([([0, 1], [0.6, 0.3]), ([2], [0.5])]):
        q = np.exp(logits[row].numpy()) / np.exp(logits[row].numpy()).sum()
        p_buckets = np.array([*lps, 1 - sum(lps)])
        q_buckets = np.array([*(q[i] for i in tops), 1 - sum(q[i] for i in tops)])
        p_t = p_buckets ** (1 / t) / (p_buckets ** (1 / t)).sum()
        q_t = q_buckets ** (1 / t) / (q_buckets ** (1 / t)).sum()
        expected += t**2 * float(np.sum(p_t * np.log(p_t / q_t)))
    loss = sparse_kd_loss(logits, ids, teacher, t)
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)
    # equal distributions over the buckets: no loss; gradients stay finite with empty slots
    same = torch.log_softmax(logits, dim=-1).gather(1, ids.clamp_min(0))
    leaf = logits.clone().requires_grad_(True)
    zero = sparse_kd_loss(leaf, ids, same.detach(), 1.0)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    zero.backward()
    assert torch.isfinite(leaf.grad).all()


def test_full_kd_loss_equals_the_hand_computed_value():
    student_logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher_logits = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    t = 1.5

    def softmax(z):
        e = np.exp(z / t)
        return e / e.sum()

    expected = np.mean(
        [
            np.sum(softmax(tl) * np.log(softmax(tl) / softmax(sl)))
            for sl, tl in zip(student_logits.numpy(), teacher_logits.numpy(), strict=True)
        ]
    )
    loss = full_kd_loss(student_logits, teacher_logits, t)
    assert loss.item() == pytest.approx(t**2 * expected, rel=1e-5)


def test_every_other_layer_keeps_the_teachers_own_weights_and_still_generates(tiny_causal):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_causal)
    half = keep_every_other_layer(AutoModelForCausalLM.from_pretrained(tiny_causal))
    assert half.config.num_hidden_layers == len(half.model.layers) == 2
    for kept, original in zip(
        half.model.layers, [full.model.layers[0], full.model.layers[2]], strict=True
    ):
        for (name, a), (_, b) in zip(
            kept.state_dict().items(), original.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert [layer.self_attn.layer_idx for layer in half.model.layers] == [0, 1]
    # generating with the KV cache gives the tokens a full forward pass picks
    ids = torch.tensor([[5, 9, 14, 20]])
    out = half.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for step in range(6):
        prefix = out[:, : 4 + step]
        assert half(prefix).logits[0, -1].argmax().item() == out[0, 4 + step].item()


def test_sft_lowers_the_nll_of_the_teachers_completions_and_saves_a_standard_folder(
    tiny_causal, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train = examples()
    before = student(tiny_causal, epochs=1, learning_rate=1e-12).fit(train).nll(train)
    fitted = student(tiny_causal).fit(train)
    after = fitted.nll(train)
    assert after < 0.7 * before
    assert fitted.kd_examples_ == 0 and all(h["kl"] is None for h in fitted.history_)
    assert fitted.history_[-1]["loss"] < fitted.history_[0]["loss"]
    assert fitted.history_[0]["completion_tokens"] > 0 and fitted.history_[0]["tokens_per_s"] > 0
    written = fitted.generate([e.prompt for e in train[:3]])
    assert all(isinstance(w, str) for w in written)

    folder = fitted.save(tmp_path / "student")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template == CHAT
    for (name, a), (_, b) in zip(
        model.state_dict().items(), fitted.model_.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    loaded = GenerativeStudent.load(folder)
    assert loaded.nll(train) == pytest.approx(after, rel=1e-6)
    assert loaded.generate([e.prompt for e in train[:3]]) == written


def teacher_tokens(tokenizer, text, k=3, seed=0):
    """The teacher's tokens of `text` in the student's vocabulary, with k alternatives each."""
    rng = np.random.default_rng(seed)
    steps = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        pool = [i for i in range(10, len(tokenizer)) if i != token]
        others = rng.choice(pool, size=k - 1, replace=False)
        probs = [0.7, *([0.2 / (k - 1)] * (k - 1))]
        top = [
            (tokenizer.decode([t]), math.log(p))
            for t, p in zip([token, *others], probs, strict=True)
        ]
        steps.append((tokenizer.decode([token]), math.log(0.7), top))
    return steps


def test_top_k_distillation_applies_where_the_teachers_tokens_align(tiny_causal):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    train = [
        Example(e.prompt, e.completion, teacher_tokens(tokenizer, e.completion, seed=i))
        for i, e in enumerate(examples())
    ]
    # one example whose tokens do not spell its completion: cross-entropy alone
    train[0] = Example(train[0].prompt, "something else entirely", train[0].tokens)
    fitted = student(tiny_causal, epochs=2, alpha=0.5, temperature=1.0).fit(train)
    assert fitted.kd_examples_ == 7
    assert all(h["kl"] is not None and h["kl"] > 0 for h in fitted.history_)
    sft = student(tiny_causal, epochs=2, distill="none").fit(train)
    assert sft.kd_examples_ == 0 and all(h["kl"] is None for h in sft.history_)
    # the KL term changes what is learned
    assert fitted.nll(train[1:]) != pytest.approx(sft.nll(train[1:]), rel=1e-6)


def test_alternatives_without_mass_are_skipped_and_no_alternative_means_no_kd(tiny_causal):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    text = SENTENCES[0]
    steps = teacher_tokens(tokenizer, text)
    # OpenAI lists its unlikeliest alternatives at -9999: exp() is 0, they add nothing
    dead = [(t, lp, [*top, (top[-1][0], -9999.0)]) for t, lp, top in steps]
    bare = [(t, lp, []) for t, lp, _ in steps]
    train = [Example("Write.", text, dead), Example("Write again.", text, bare)]
    fitted = student(tiny_causal, epochs=1).fit(train)
    assert fitted.kd_examples_ == 1


def test_full_vocabulary_distillation_from_a_local_teacher(tiny_causal):
    fitted = student(tiny_causal, epochs=2, distill="full", teacher=str(tiny_causal))
    fitted.init = "every_other_layer"
    fitted.fit(examples())
    assert fitted.model_.config.num_hidden_layers == 2 and fitted.kd_examples_ == 8
    assert all(h["kl"] is not None and h["kl"] >= 0 for h in fitted.history_)


def test_lora_auto_is_rank_8_on_a_cpu_for_a_pretrained_base_only(tiny_causal):
    cpu = torch.device("cpu")
    assert GenerativeStudent(base=str(tiny_causal))._rank(cpu) == 8
    assert GenerativeStudent(init="every_other_layer")._rank(cpu) is None
    assert GenerativeStudent()._rank(torch.device("cuda")) is None
    assert GenerativeStudent(lora=0)._rank(cpu) is None
    assert GenerativeStudent(lora=4)._rank(torch.device("cuda")) == 4
    fitted = student(tiny_causal, lora="auto", epochs=1).fit(examples()[:4])
    assert fitted.lora_ == 8 and fitted.history_[0]["loss"] > 0
    with pytest.raises(ValueError, match="lora must be a rank"):
        GenerativeStudent(base=str(tiny_causal), lora="big").check()


def test_lora_trains_adapters_and_saves_merged_or_apart(tiny_causal, tmp_path):
    from transformers import AutoModelForCausalLM

    train = examples()
    fitted = student(tiny_causal, lora=4, epochs=3).fit(train)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal)
    # merged: the adapters moved the linear weights, the embeddings did not move
    assert not torch.equal(
        fitted.model_.model.layers[0].self_attn.q_proj.weight,
        base.model.layers[0].self_attn.q_proj.weight,
    )
    assert torch.equal(fitted.model_.model.embed_tokens.weight, base.model.embed_tokens.weight)
    folder = fitted.save(tmp_path / "merged")
    assert not (folder / "adapter_config.json").exists()
    assert GenerativeStudent.load(folder).nll(train) == pytest.approx(fitted.nll(train), rel=1e-5)

    apart = student(tiny_causal, lora=4, epochs=3, merge_lora=False).fit(train)
    folder = apart.save(tmp_path / "apart")
    assert (folder / "adapter_config.json").is_file()
    assert GenerativeStudent.load(folder).nll(train) == pytest.approx(apart.nll(train), rel=1e-5)


def test_a_stopped_fit_resumes_to_the_same_weights(tiny_causal, tmp_path, monkeypatch):
    from stillroom.students import _generative

    train = examples(12)
    params = {"epochs": 2, "batch_size": 2, "checkpoint_every": 2}
    whole = student(tiny_causal, **params).fit(train)

    steps = {"n": 0}
    real_step = _generative._Run._step

    def stop_after_five(self):
        steps["n"] += 1
        if steps["n"] == 6:
            raise KeyboardInterrupt  # as a kill would, between two checkpoints
        real_step(self)

    monkeypatch.setattr(_generative._Run, "_step", stop_after_five)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        student(tiny_causal, checkpoint_dir=str(checkpoints), **params).fit(train)
    assert len(list(checkpoints.glob("generative-*/checkpoint.pt"))) == 1
    monkeypatch.setattr(_generative._Run, "_step", real_step)
    resumed = student(tiny_causal, checkpoint_dir=str(checkpoints), **params).fit(train)
    for (name, a), (_, b) in zip(
        resumed.model_.state_dict().items(), whole.model_.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not list(checkpoints.glob("generative-*/checkpoint.pt"))


def test_bad_parameters_are_one_clear_error(tiny_causal, tmp_path):
    with pytest.raises(ValueError, match="init must be 'every_other_layer' or None"):
        student(tiny_causal, init="every_third").fit(examples())
    with pytest.raises(ValueError, match="distill 'full' needs the teacher's local model folder"):
        student(tiny_causal, distill="full").fit(examples())
    with pytest.raises(ValueError, match="is not a transformers model folder"):
        student(tmp_path).fit(examples())
    with pytest.raises(ValueError, match="no examples to learn from"):
        student(tiny_causal).fit([])
    with pytest.raises(ValueError, match="keep merge_lora true with init"):
        student(tiny_causal, lora=4, merge_lora=False, init="every_other_layer").fit(examples())
    with pytest.raises(ValueError, match="not fitted yet"):
        student(tiny_causal).generate(["hi"])
