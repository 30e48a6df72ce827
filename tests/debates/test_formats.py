"""The two prompt formats: transcript stays the paper's Figure 2, chat renders the same
content as messages; bad formats are refused in one line before anything is written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from stancelab.conversation._personas import Persona, personas_for
from stancelab.conversation._survey import SurveyMode
from stancelab.conversation._templates import PromptFormat, load_prompts
from stancelab.debates._debate import Debate, DebateSpec, Turn, run_debates
from stancelab.debates._experiment import load_experiment
from stancelab.debates._formats import check_format_option, resolve_format
from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig
from stancelab.engine._fake import ScriptedModel
from stancelab.engine._models import gguf_chat_template
from stancelab.engine.openai._transport import is_chat_only_answer

TRANSCRIPT = load_prompts()
CHAT = load_prompts(format="chat")
PERSONAS = (
    Persona("Jack", "republican", "Your name is Jack. You are a rancher."),
    Persona("Abigail", "democrat", "Your name is Abigail. You teach."),
    Persona("Sam", "default", "You are an American."),
)


def debate_with_turns(prompts: object, formats: object = None) -> Debate:
    debate = Debate(DebateSpec("climate change", PERSONAS, 6, first_speaker=0), prompts, formats)  # type: ignore[arg-type]
    for i, (speaker, text) in enumerate([(0, "Jack one."), (1, "Abi one."), (2, "Sam one.")]):
        debate.turns.append(Turn(i + 1, speaker, text, text))
    return debate


def test_transcript_is_byte_identical_to_figure_2() -> None:
    debate = debate_with_turns(TRANSCRIPT)
    expected_head = (
        "Your name is Abigail. You teach.\n\nThis is a debate about climate change. Complete "
        "your next reply. Keep your reply shorter than 50 words.\n\n"
        "Jack: Jack one.\nMe: Abi one.\nSam: Sam one.\n"
    )
    assert debate.turn_prompt(1) == expected_head + "Me:"
    assert debate.survey_prompt(1) == (
        expected_head + "System: On a scale of 0 to 10, how much do you think that climate "
        "change is a big problem?\nMe:"
    )
    # The transcript hash is the one runs recorded before the chat format existed.
    assert TRANSCRIPT.fingerprint() == load_prompts(format="transcript").fingerprint()
    assert TRANSCRIPT.describe()["format"] == "transcript"
    assert CHAT.fingerprint() != TRANSCRIPT.fingerprint()


def test_chat_renders_the_same_content_as_messages() -> None:
    debate = debate_with_turns(CHAT)
    messages = debate.turn_prompt(2)
    assert isinstance(messages, list)
    assert messages[0] == {
        "role": "system",
        "content": "You are an American.\n\nThis is a debate about climate change. Complete "
        "your next reply. Keep your reply shorter than 50 words.",
    }
    assert messages[1] == {"role": "user", "content": "Jack: Jack one.\n\nAbigail: Abi one."}
    assert messages[2] == {"role": "assistant", "content": "Sam one."}
    assert messages[3]["role"] == "user"
    assert messages[3]["content"] == CHAT.chat_turn
    # Jack's view: his own reply is an assistant message, the others' one user message
    # that also carries the request for his next reply.
    jack = debate.turn_prompt(0)
    assert [m["role"] for m in jack] == ["system", "assistant", "user"]  # type: ignore[index]
    assert jack[2]["content"].startswith("Abigail: Abi one.\n\nSam: Sam one.\n\n")  # type: ignore[index]
    survey = debate.survey_prompt(0)
    assert survey[-1]["content"] == (  # type: ignore[index]
        "Abigail: Abi one.\n\nSam: Sam one.\n\nOn a scale of 0 to 10, how much do you think "
        "that climate change is a big problem? Answer with one number from 0 to 10."
    )
    assert survey[:-1] == jack[:-1]


def test_agents_on_different_formats_in_one_debate() -> None:
    debate = debate_with_turns(CHAT, [PromptFormat.TRANSCRIPT, PromptFormat.CHAT, "chat"])
    assert isinstance(debate.turn_prompt(0), str)
    assert isinstance(debate.turn_prompt(1), list)
    with pytest.raises(ConfigError, match="chat templates"):
        debate_with_turns(TRANSCRIPT, [PromptFormat.CHAT] * 3)


def test_chat_survey_never_enters_any_history() -> None:
    def reply(request: GenerationRequest) -> str:
        assert isinstance(request.prompt, list)
        for message in request.prompt:
            assert "On a scale" not in message["content"]
            assert "Answer with one number" not in message["content"]
            assert message["content"] != "7"
        if "On a scale" in request.prompt[-1]["content"]:
            raise AssertionError("survey requests are greedy generations, never turns")
        return "I think we should act now."

    model = ScriptedModel(reply=lambda r: "7" if r.temperature == 0 else reply(r))
    spec = DebateSpec(
        "climate change",
        tuple(personas_for(["republican", "democrat", "default"])),
        6,
        survey_modes=(SurveyMode.GENERATE,),
    )
    debate = Debate(spec, CHAT)
    run_debates(model, [debate])
    assert len(debate.turns) == 6 and len(debate.surveys) == 9
    assert all(a.score == 7.0 for a in debate.surveys.values())
    surveys = [r for r in model.generated if r.temperature == 0]
    assert surveys and all(isinstance(r.prompt, list) for r in surveys)
    assert all(r.max_tokens == 16 for r in surveys)


def write_gguf(path: Path, with_template: bool) -> Path:
    """A GGUF header with a few metadata keys (and no tensors)."""

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    entries = [
        string("general.architecture") + struct.pack("<I", 8) + string("llama"),
        string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("b"),
        string("llama.context_length") + struct.pack("<II", 4, 2048),
    ]
    if with_template:
        entries.append(string("tokenizer.chat_template") + struct.pack("<I", 8) + string("{{ x }}"))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries))
    return path


def test_chat_on_a_gguf_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    bare = write_gguf(tmp_path / "bare.gguf", with_template=False)
    templated = write_gguf(tmp_path / "chat.gguf", with_template=True)
    assert gguf_chat_template(bare) is None
    assert gguf_chat_template(templated) == "{{ x }}"
    with pytest.raises(ConfigError, match=r"no chat template.*prompt_format: transcript"):
        resolve_format(ModelConfig(name=str(bare)), "chat")
    assert resolve_format(ModelConfig(name=str(bare)), None) == PromptFormat.TRANSCRIPT
    # auto: transcript on local engines (measured better), chat on servers.
    assert resolve_format(ModelConfig(name=str(templated)), "auto") == PromptFormat.TRANSCRIPT
    assert resolve_format(ModelConfig(name=str(templated)), "chat") == PromptFormat.CHAT
    assert resolve_format(ModelConfig(name=str(bare)), "transcript") == PromptFormat.TRANSCRIPT
    remote = ModelConfig(name="gpt-x", backend="openai", base_urls=["http://127.0.0.1:9/v1"])
    assert resolve_format(remote, None) == PromptFormat.CHAT
    # Stories: auto writes them in chat wherever there is a template; explicit wins.
    assert resolve_format(ModelConfig(name=str(templated)), "auto", writing=True) == "chat"
    assert resolve_format(ModelConfig(name=str(bare)), "auto", writing=True) == "transcript"
    written = resolve_format(ModelConfig(name=str(templated)), "transcript", writing=True)
    assert written == PromptFormat.TRANSCRIPT


def test_unknown_formats_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown prompt format 'markdown'"):
        check_format_option("markdown")
    with pytest.raises(ConfigError, match="unknown prompt format"):
        load_prompts(format="markdown")
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: e\nmodel: smollm2-135m\ntopics: [racism]\nsetups: [two-way]\n"
        "repetitions: 1\niterations: 1\npersonas: {generate: 1}\nprompt_format: markdown\n"
    )
    with pytest.raises(ConfigError, match=r"prompt_format: Input should be") as info:
        load_experiment(path)
    assert "\n" not in str(info.value)
    path.write_text(
        "name: e\nmodel: {name: smollm2-135m, prompt_format: xml}\ntopics: [racism]\n"
        "setups: [two-way]\nrepetitions: 1\niterations: 1\npersonas: {generate: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"model.prompt_format"):
        load_experiment(path)


def test_per_model_entry_format_wins_over_the_experiment(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: e\nmodel: smollm2-135m\nmodels: {default: {name: smollm2-135m, "
        "prompt_format: transcript}}\nprompt_format: chat\ntopics: [racism]\n"
        "setups: [three-way]\nrepetitions: 1\niterations: 1\npersonas: {generate: 1}\n"
    )
    config = load_experiment(path)
    assert config.format_for(config.model_for("republican")) == "chat"
    assert config.format_for(config.model_for("default")) == "transcript"
    # One engine serves both formats of the same model.
    assert config.model_for("default").engine_key() == config.model_for("republican").engine_key()


def test_chat_only_answers_are_recognised() -> None:
    openai_404 = (
        "This is a chat model and not supported in the v1/completions endpoint. "
        "Did you mean to use v1/chat/completions?"
    )
    assert is_chat_only_answer("/completions", 404, openai_404)
    assert is_chat_only_answer("/completions", 404, "Not Found")
    assert not is_chat_only_answer("/completions", 404, "The model `x` does not exist.")
    assert not is_chat_only_answer("/chat/completions", 404, openai_404)
    assert not is_chat_only_answer("/completions", 400, openai_404)
