"""The transformers backend on a tiny random Llama model built offline in a temp folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stancelab.conversation._survey import SCALE  # noqa: E402
from stancelab.engine._base import ChoiceRequest, GenerationRequest  # noqa: E402
from stancelab.engine._errors import ConfigError, ModelError  # noqa: E402
from stancelab.engine._factory import open_model  # noqa: E402
from stancelab.engine._transformers_backend import (  # noqa: E402
    TransformersModel,
    load_transformers,
)
from stancelab.engine._wrappers import SharedInFlight  # noqa: E402

CORPUS = [
    "On a scale of 0 to 10, how much do you think that climate change is a big problem? "
    "0 1 2 3 4 5 6 7 8 9 10",
    "You are an American. This is a debate about racism. Me: I think it matters a lot.",
    "The capital of France is Paris. Gun violence and illegal immigration are topics.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not (loop.last and m['role'] == 'assistant') %}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path) -> None:
    """A byte-level BPE tokenizer trained on a few lines and a 2-layer random Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path) -> TransformersModel:
    return load_transformers(str(tiny_folder), batch_size=3)


def reference_logprobs(model: TransformersModel, prompt: str) -> Any:
    """Next-token log-softmax from a plain, unbatched forward pass."""
    ids = model.encode(prompt)
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)


def test_next_tokens_are_the_top_k_of_the_softmax(tiny: TransformersModel) -> None:
    prompts = [
        "The capital of France is",
        "Hi",
        "You are an American. This is a debate",
        "On a scale of 0 to 10,",
    ]
    # Different lengths in one padded batch must give each prompt its own distribution.
    results = tiny.next_tokens(prompts, 5)
    for prompt, top in zip(prompts, results, strict=True):
        ref = reference_logprobs(tiny, prompt)
        values, indices = torch.topk(ref, 5)
        assert [lp for _, lp in top.tokens] == pytest.approx(values.tolist(), abs=1e-4)
        expected = [tiny.tokenizer.decode([i]) for i in indices.tolist()]
        assert [t for t, _ in top.tokens] == expected
        assert top.prompt_tokens == len(tiny.encode(prompt))


def test_generate_is_seeded_greedy_and_stops(tiny: TransformersModel) -> None:
    prompt = "The capital of France is"
    a, b, c = tiny.generate(
        [GenerationRequest(prompt, temperature=1.0, max_tokens=12, seed=s) for s in (1, 1, 2)]
    )
    assert a.text == b.text and a.completion_tokens == b.completion_tokens
    assert (a.text, a.completion_tokens) != (c.text, c.completion_tokens)
    [greedy] = tiny.generate([GenerationRequest(prompt, temperature=0.0, max_tokens=1)])
    first = int(torch.argmax(reference_logprobs(tiny, prompt)))
    if first == tiny.tokenizer.eos_token_id:
        assert greedy.text == "" and greedy.finish_reason == "stop"
    else:
        assert greedy.text == tiny.tokenizer.decode([first]) and greedy.completion_tokens == 1
    [long] = tiny.generate([GenerationRequest(prompt, temperature=1.0, max_tokens=20, seed=3)])
    assert long.completion_tokens <= 20 and long.prompt_tokens == len(tiny.encode(prompt))
    if len(long.text) > 2:  # stop at a string the unconstrained sample contained
        stop = long.text[1:3]
        [cut] = tiny.generate(
            [GenerationRequest(prompt, temperature=1.0, max_tokens=20, seed=3, stop=(stop,))]
        )
        assert stop not in cut.text and long.text.startswith(cut.text)
        assert cut.finish_reason == "stop"


def test_chat_prompts_use_the_template_and_scoring_works(tiny: TransformersModel) -> None:
    chat = [{"role": "user", "content": "Rate it."}]
    ids = tiny.encode(chat)  # type: ignore[arg-type]
    assert tiny.tokenizer.decode(ids).endswith("<s>assistant\n")
    [g] = tiny.generate([GenerationRequest(chat, max_tokens=4, seed=0)])  # type: ignore[arg-type]
    assert g.prompt_tokens == len(ids)
    # A random model spreads its mass thinly: ask for the whole vocabulary.
    [scores] = tiny.score_choices(
        [ChoiceRequest("On a scale of 0 to 10, it is", SCALE)], top_k=1000
    )
    assert sum(scores.probabilities) == pytest.approx(1.0)
    assert 0.0 < scores.coverage <= 1.0
    assert tiny.stats.requests > 0 and tiny.stats.prompt_tokens > 0


def test_the_factory_opens_a_local_folder_offline(tiny_folder: Path) -> None:
    lm = open_model(
        {
            "name": str(tiny_folder),
            "backend": "transformers",
            "options": {"dtype": "float32", "batch_size": 2},
        }
    )
    assert isinstance(lm, SharedInFlight) and isinstance(lm.inner, TransformersModel)
    assert lm.inner.batch_size == 2
    info = lm.describe()
    assert info["engine"] == "transformers" and info["allow_download"] is False
    assert len(info["folder_sha256"]) == 64 and info["architectures"] == ["LlamaForCausalLM"]
    with pytest.raises(ConfigError, match=r"unknown transformers option 'dtyp'; known: allow"):
        open_model(
            {"name": str(tiny_folder), "backend": "transformers", "options": {"dtyp": "float32"}}
        )
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_transformers(str(tiny_folder), dtype="float8")


def test_missing_models_fail_in_one_line_without_network(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist.*allow_download: true") as info:
        load_transformers(str(tmp_path / "absent"))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="allow_download"):
        open_model({"name": "mistralai/Mistral-7B-v0.1", "backend": "transformers"})
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_transformers(str(tmp_path))
