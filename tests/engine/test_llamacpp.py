"""The real in-process llama.cpp engine on the embedded SmolLM2-135M model."""

from __future__ import annotations

import pytest

from stancelab.conversation._survey import SCALE
from stancelab.engine._base import ChoiceRequest, Generation, GenerationRequest, PathRequest
from stancelab.engine._llamacpp import LlamaCppEngine
from stancelab.engine._scoring import score_by_token_tree
from stancelab.engine._wrappers import SharedInFlight

pytestmark = pytest.mark.engine

PROMPT = (
    "You are an American.\n\nThis is a debate about racism. Complete your next reply. "
    "Keep your reply shorter than 50 words.\n\nSystem: On a scale of 0 to 10, how much do "
    "you think that racism is a big problem?\nMe:"
)


def test_generate_batch_with_stop_and_seed(small_engine: LlamaCppEngine) -> None:
    requests = [
        GenerationRequest("The capital of France is", temperature=0.0, max_tokens=8),
        GenerationRequest("Count: one, two,", temperature=1.0, max_tokens=12, seed=7, stop=(",",)),
        GenerationRequest(
            [{"role": "user", "content": "Say hello."}], temperature=0.0, max_tokens=8
        ),
    ]
    first = small_engine.generate(requests)
    assert "Paris" in first[0].text
    assert "," not in first[1].text
    assert first[2].text.strip()
    assert all(g.completion_tokens > 0 for g in first)
    again = small_engine.generate(requests[:2])
    assert again[0].text == first[0].text
    # The repeated prompt is served from the prefix cache.
    assert again[0].cached_tokens > 0


def test_the_engine_answers_what_it_can_do(small_engine: LlamaCppEngine) -> None:
    assert small_engine.has_completion_route() and small_engine.has_chat_template()
    assert small_engine.has_token_paths() and small_engine.supports_adapters()
    assert small_engine.supports_streaming()
    # No cap below the vocabulary (SmolLM2's 49152 tokens): more than any server's 20.
    assert small_engine.logprobs_cap() == 49152
    [path] = small_engine.next_token_paths([PathRequest("Hello there", top_k=100)])
    assert len(path.tops[0].tokens) == 100


def test_scores_sum_to_one_and_ten_has_its_own_mass(small_engine: LlamaCppEngine) -> None:
    [scores] = small_engine.score_choices([ChoiceRequest(PROMPT, SCALE)])
    assert sum(scores.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < scores.coverage <= 1.0
    assert scores.requests >= 2


def test_ten_is_not_mistaken_for_one(small_engine: LlamaCppEngine) -> None:
    prompt = (
        "Scores run from 0 to 10. A perfect film gets 10.\n"
        "Film: flawless masterpiece. Score: 10\nFilm: flawless, perfect. Score:"
    )
    [s] = small_engine.score_choices([ChoiceRequest(prompt, SCALE)])
    assert s.probabilities[10] > s.probabilities[1]
    assert s.most_likely == "10"


def test_path_scoring_matches_the_tree_walk_in_fewer_requests(
    small_engine: LlamaCppEngine,
) -> None:
    prompts = [PROMPT, PROMPT.replace("racism", "climate change"), PROMPT.replace("an", "a")]
    requests = [ChoiceRequest(p, SCALE) for p in prompts]
    tree = score_by_token_tree(small_engine.next_tokens, requests)
    paths = small_engine.score_choices(requests)
    for old, new in zip(tree, paths, strict=True):
        tv = 0.5 * sum(
            abs(a - b) for a, b in zip(old.probabilities, new.probabilities, strict=True)
        )
        # Measured: the tree walk against itself differs by up to 0.012 (llama.cpp's logits
        # depend on how a token was batched), paths against the walk by up to 0.025 on Qwen
        # 0.5B and 0.029 on SmolLM2 within the full suite. A scoring bug ("10" folded into
        # "1", a biased distribution reported) moves far more than 0.05.
        assert tv < 0.05
        assert new.requests < old.requests
        assert new.nodes >= 2


def test_token_paths_report_the_unbiased_distribution(small_engine: LlamaCppEngine) -> None:
    # The bias steers the greedy path through " " then "1"; the reported tops must be
    # the model's own next-token distribution at each node, as next_tokens gives it.
    [path] = small_engine.next_token_paths([PathRequest(PROMPT, 10, 3, prefer=(" ", "1"))])
    assert len(path.tops) == 3
    node = PROMPT
    for top, token in zip(path.tops, path.tokens, strict=False):
        [reference] = small_engine.next_tokens([node], 10)
        assert dict(top.tokens[:3]) == pytest.approx(dict(reference.tokens[:3]), abs=0.02)
        node += token


def test_engine_rejects_bad_requests_with_engine_error(small_engine: LlamaCppEngine) -> None:
    from stancelab.engine._errors import EngineError

    with pytest.raises(EngineError):
        small_engine._call({"no_prompt": True}, chat=False)


def test_backend_sampling_option_from_a_model_entry() -> None:
    from stancelab.engine._factory import open_model

    engine = open_model(
        {
            "name": "smollm2-135m",
            "parallel": 2,
            "ctx_per_slot": 512,
            "options": {"backend_sampling": True},
        }
    )
    with engine:
        assert engine.describe()["backend_sampling"] is True
        first, second = engine.generate(
            [
                GenerationRequest("The weather today is", max_tokens=12, temperature=1.0, seed=7),
                GenerationRequest("The weather today is", max_tokens=12, temperature=1.0, seed=7),
            ]
        )
        assert first.completion_tokens > 0 and first.text == second.text  # seeded


def test_replies_sample_the_whole_distribution(small_engine: LlamaCppEngine) -> None:
    """T=1.0 means the model's whole distribution (the paper's API), not llama.cpp's cut."""
    import math

    from stancelab.engine._factory import open_model

    prompt = "Here is a list of random English words: apple, river, "
    requests = [GenerationRequest(prompt, temperature=1.0, max_tokens=1, seed=s) for s in range(48)]
    truncated = open_model(
        {
            "name": "smollm2-135m",
            "parallel": 4,
            "ctx_per_slot": 512,
            "options": {"sampling": {"top_k": 40, "top_p": 0.95, "min_p": 0.05}},
        }
    )
    with truncated:
        assert truncated.describe()["sampling"]["top_k"] == 40
        top = truncated.next_tokens([prompt], 40)[0].tokens
        # The tokens llama.cpp's default chain keeps: min_p 0.05 of the best, top_p 0.95.
        kept: set[str] = set()
        mass = 0.0
        for token, logprob in top:
            if math.exp(logprob) < 0.05 * math.exp(top[0][1]) or mass >= 0.95:
                break
            kept.add(token)
            mass += math.exp(logprob)
        cut = [g.text for g in truncated.generate(requests)]
    whole = [g.text for g in small_engine.generate(requests)]
    assert small_engine.describe()["sampling"] == {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
    assert all(text in kept for text in cut)
    # This prompt leaves about a fifth of the mass outside the kept tokens.
    assert sum(text not in kept for text in whole) >= 4


def test_more_conversations_than_slots_come_back_from_the_ram_cache(
    small_engine: LlamaCppEngine,
) -> None:
    """Six conversations on four slots: each one's next turn is restored from llama.cpp's
    RAM prompt cache, not recomputed."""
    contexts = [
        f"Speaker {k} talks about {topic}: " + " ".join(f"{topic}{i}" for i in range(60))
        for k, topic in enumerate(("apple", "river", "stone", "cloud", "maple", "tiger"))
    ]

    def turn(prompts: list[str]) -> list[Generation]:
        return small_engine.generate(
            [
                GenerationRequest(p, temperature=0.0, max_tokens=2, conversation_id=f"c{k}")
                for k, p in enumerate(prompts)
            ]
        )

    first = turn(contexts)
    second = turn([c + " and then" for c in contexts])
    for before, after in zip(first, second, strict=True):
        # Everything the first request computed, less the token llama.cpp always
        # evaluates again.
        assert after.cached_tokens >= before.prompt_tokens - 1


def test_identical_deterministic_requests_at_once_are_sent_once(
    small_engine: LlamaCppEngine,
) -> None:
    """Four copies of one greedy path request at once (every repetition's Default agent
    before the first reply) reach llama.cpp fewer than four times and get one answer;
    sampled replies are always sent."""
    request = PathRequest(PROMPT, top_k=5, max_tokens=3, prefer=(" ", "1"))
    lm = SharedInFlight(small_engine)  # as open_model wraps every model it opens
    stats = lm.stats
    assert stats is small_engine.stats  # the wrapper reports the engine's own totals
    before, recomputed = stats.requests, stats.recomputed_tokens
    paths = lm.next_token_paths([request] * 4)
    sent = stats.requests - before
    assert sent < 4 and sent + lm.in_flight.shared == 4
    assert all(p.tokens == paths[0].tokens and p.tops == paths[0].tops for p in paths)
    # A copy computed nothing: the answers' own counts add up to what the engine did.
    assert sum(p.prompt_tokens == 0 for p in paths) == 4 - sent
    assert sum(p.prompt_tokens for p in paths) == stats.recomputed_tokens - recomputed

    before = stats.requests
    lm.generate([GenerationRequest(PROMPT, temperature=1.0, max_tokens=4)] * 4)
    assert stats.requests - before == 4
