"""Run an experiment file: personas, fidelity check, every debate concurrently, resume.

All debates advance at once (a thread each, bounded), so the engine always has a full
batch; every turn and survey is committed as it finishes, and the same command picks
up where a killed run stopped without recomputing anything.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stancelab._version import __version__
from stancelab.conversation.personas import (
    BUILTIN_PERSONAS,
    KNOWN_KINDS,
    PersonaSet,
    StoryDraft,
    generate_personas,
)
from stancelab.conversation.survey import SurveyAnswer, SurveyMode, parse_modes, survey_modes_for
from stancelab.conversation.templates import PromptFormat, PromptSet, load_prompts
from stancelab.debates.debate import Debate, DebateEvents, DebateSpec, Turn, run_debates
from stancelab.debates.experiment import (
    ExperimentConfig,
    ExperimentModel,
    PlannedDebate,
    plan_debates,
)
from stancelab.debates.fidelity import (
    TopicFidelity,
    screen_personas,
    summarise,
    survey_personas,
)
from stancelab.debates.formats import probe_format, resolve_format
from stancelab.debates.single import run_versions
from stancelab.debates.store import SCHEMA_VERSION, Store
from stancelab.engine.base import LanguageModel
from stancelab.engine.errors import ConfigError
from stancelab.engine.factory import ModelConfig, check_model, open_model

RUN_META = "run.json"
# Results are compatible across versions with the same major.minor and schema.
COMPATIBLE = ".".join(__version__.split(".")[:2])


@dataclass
class RunFolder:
    """Files of one experiment run: the config snapshot, personas, database, report."""

    path: Path

    @property
    def db(self) -> Path:
        """The SQLite results database."""
        return self.path / "stancelab.db"

    @property
    def personas(self) -> Path:
        """The persona set this run uses."""
        return self.path / "personas.yaml"

    @property
    def partial_personas(self) -> Path:
        """Stories written so far, kept when persona writing is killed."""
        return self.path / "personas.partial.yaml"

    @property
    def meta(self) -> Path:
        """run.json: run id, config fingerprint, versions."""
        return self.path / RUN_META

    @property
    def report_dir(self) -> Path:
        """Where ``stancelab report`` writes."""
        return self.path / "report"

    def read_meta(self) -> dict[str, Any]:
        """The run's metadata, or a clear error when the folder is not a run of this version."""
        if not self.meta.is_file():
            raise ConfigError(f"{self.path} is not a stancelab run folder (no {RUN_META})")
        try:
            data = dict(json.loads(self.meta.read_text()))
        except ValueError as exc:
            raise ConfigError(f"{self.meta} is damaged: {exc}") from exc
        if data.get("schema_version") != SCHEMA_VERSION or data.get("compatible") != COMPATIBLE:
            raise ConfigError(
                f"{self.path} was written by stancelab {data.get('stancelab')} (schema "
                f"{data.get('schema_version')}); this is {__version__} (schema "
                f"{SCHEMA_VERSION}): use a new --out folder rather than mix results"
            )
        return data


@dataclass
class Progress:
    """Counts a progress display can show; updated from worker threads."""

    total: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    on_cell: Callable[[str, int, int], None] | None = None
    """Called with (cell, total steps, steps already done) once the plan is known."""
    on_change: Callable[[str, int], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cell: str, total: int, done: int) -> None:
        """Add a debate's steps to its cell."""
        self.total[cell] = self.total.get(cell, 0) + total
        self.done[cell] = self.done.get(cell, 0) + done

    def announce(self) -> None:
        """Report every cell's totals to the display."""
        if self.on_cell:
            for cell, total in self.total.items():
                self.on_cell(cell, total, self.done.get(cell, 0))

    def advance(self, cell: str, n: int = 1) -> None:
        """Count finished steps of a cell (topic x setup)."""
        with self.lock:
            self.done[cell] = self.done.get(cell, 0) + n
        if self.on_change:
            self.on_change(cell, n)


def _steps(debate: Debate) -> int:
    return debate.spec.iterations + len(debate.survey_iterations)


def _steps_done(debate: Debate) -> int:
    surveyed = {it for it, _, _, _ in debate.surveys}
    return len(debate.turns) + len(surveyed)


def open_run_folder(
    config: ExperimentConfig, config_text: str, out: Path
) -> tuple[RunFolder, bool]:
    """Create the run folder, or check that an existing one holds this same experiment."""
    folder = RunFolder(out / config.name)
    if folder.meta.is_file():
        meta = folder.read_meta()
        if meta.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"{folder.path} holds a different version of experiment {config.name!r}; "
                "rename the experiment or choose another --out folder"
            )
        return folder, True
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        (folder.path / "experiment.yaml").write_text(config_text)
    except OSError as exc:
        raise ConfigError(f"cannot write run folder {folder.path}: {exc.strerror}") from exc
    return folder, False


class ModelPool:
    """One engine per distinct model config, shared by the agent kinds that use it."""

    STAT_KEYS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")

    def __init__(self, opener: Callable[[ModelConfig], LanguageModel] = open_model) -> None:
        self._engines: dict[str, LanguageModel] = {}
        self._opener = opener
        self._released = dict.fromkeys(self.STAT_KEYS, 0)  # counts of closed engines

    def _unique(self) -> list[LanguageModel]:
        # A caller's opener may hand out one engine for several configs.
        return list({id(e): e for e in self._engines.values()}.values())

    @staticmethod
    def _key(config: ModelConfig) -> str:
        # The same model in two prompt formats is one engine.
        return (
            config.engine_key() if isinstance(config, ExperimentModel) else config.model_dump_json()
        )

    def get(self, config: ModelConfig) -> LanguageModel:
        """Open (once) and return the engine for a config."""
        key = self._key(config)
        if key not in self._engines:
            self._engines[key] = self._opener(config)
        return self._engines[key]

    def describe(self) -> list[dict[str, Any]]:
        """What every open engine reports about itself."""
        return [e.describe() for e in self._unique()]

    def stats(self) -> dict[str, int]:
        """Summed token counts of every engine this pool opened, closed ones included."""
        return {
            k: self._released[k] + sum(getattr(e.stats, k) for e in self._unique())
            for k in self.STAT_KEYS
        }

    def release(self, keep: Sequence[ModelConfig]) -> None:
        """Close and forget every engine not opened for one of ``keep``."""
        wanted = {self._key(c) for c in keep}
        for key in [k for k in self._engines if k not in wanted]:
            engine = self._engines.pop(key)
            # Closed only once no remaining config (kept or not yet released) shares it.
            if all(e is not engine for e in self._engines.values()):
                for k in self.STAT_KEYS:
                    self._released[k] += getattr(engine.stats, k)
                engine.close()

    def close(self) -> None:
        """Close every engine."""
        for engine in self._unique():
            engine.close()


@dataclass
class RunResult:
    """What a run did, for the CLI to print."""

    folder: RunFolder
    run_id: str
    resumed: bool
    debates: int
    failed: int
    elapsed_s: float
    fidelity: list[TopicFidelity]
    fidelity_ok: bool | None
    stats: dict[str, int]


Formats = dict[tuple[str, str], PromptFormat]
"""(condition, agent kind) -> the prompt format that agent's model gets."""

WRITER = "personas"
"""The key of the persona writer's format in a Formats map."""


def _read_drafts(path: Path) -> list[StoryDraft]:
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        return [StoryDraft(**entry) for entry in data]
    except (yaml.YAMLError, TypeError) as exc:
        raise ConfigError(
            f"{path} is damaged ({exc}); delete it to write the stories again"
        ) from None


def load_or_make_personas(
    config: ExperimentConfig,
    folder: RunFolder,
    models: ModelPool,
    log: Callable[[str], None] = print,
    writer_format: PromptFormat = PromptFormat.CHAT,
) -> PersonaSet:
    """The run's persona set: its own copy, the configured file, or newly generated.

    Generated stories are saved one by one as they are written (personas.partial.yaml in
    the run folder), so a run killed while writing keeps the finished ones.
    """
    if folder.personas.is_file():
        return PersonaSet.load(folder.personas)
    source = config.personas.file
    if source is not None and source.is_file():
        personas = PersonaSet.load(source)
    elif config.personas.generate is not None:
        drafts = _read_drafts(folder.partial_personas)
        total = 2 * config.personas.generate
        log(
            f"writing {total - len(drafts)} persona stories ({writer_format} format)"
            + (f", {len(drafts)} kept from an earlier attempt" if drafts else "")
            + "…"
        )
        writer_config = config.personas.model or config.model
        writer = models.get(writer_config)
        lock = threading.Lock()

        def keep(draft: StoryDraft) -> None:
            with lock:
                drafts.append(draft)
                tmp = folder.partial_personas.with_name(folder.partial_personas.name + ".tmp")
                tmp.write_text(
                    yaml.safe_dump(
                        [dataclasses.asdict(d) for d in drafts], sort_keys=False, allow_unicode=True
                    )
                )
                tmp.replace(folder.partial_personas)

        personas = generate_personas(
            writer,
            config.personas.generate,
            config.topic_objects(),
            seed=config.seed,
            prompt_folder=config.prompts.folder,
            prompt_format=writer_format,
            done=list(drafts),
            on_story=keep,
            workers=writer_config.parallel,
        )
    else:
        raise ConfigError(f"persona file {source} does not exist and personas.generate is not set")
    for p in personas.personas:
        if not p.background.strip():
            raise ConfigError(f"persona {p.name!r} has an empty background story")
    return personas


def _save_personas(config: ExperimentConfig, folder: RunFolder, personas: PersonaSet) -> None:
    source = config.personas.file
    if source is not None and not source.is_file():  # a reusable copy where the file asked
        source.parent.mkdir(parents=True, exist_ok=True)
        personas.save(source)
    personas.save(folder.personas)
    folder.partial_personas.unlink(missing_ok=True)


def resolve_formats(config: ExperimentConfig) -> Formats:
    """Every (condition, kind) model entry's prompt format, and the persona writer's.

    Cheap checks only (GGUF metadata): a chat format on a GGUF without a chat template is
    refused here, before anything is written.
    """
    formats: Formats = {}
    for condition in config.condition_names():
        for kind in KNOWN_KINDS:
            entry = config.model_for(kind, condition)
            formats[(condition, kind)] = resolve_format(entry, config.format_for(entry))
    writer = config.personas.model or config.model
    formats[("", WRITER)] = resolve_format(writer, config.format_for(writer), writing=True)
    return formats


def run_experiment(
    config: ExperimentConfig,
    config_text: str,
    out: Path,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    models: ModelPool | None = None,
) -> RunResult:
    """Run (or resume) every debate of an experiment; returns when all are finished."""
    formats = resolve_formats(config)
    chat = PromptFormat.CHAT in formats.values()
    prompts = load_prompts(
        config.prompts.folder,
        config.prompts.version,
        format=PromptFormat.CHAT if chat else PromptFormat.TRANSCRIPT,
    ).with_question(config.survey.question)
    modes = parse_modes(config.survey.modes)
    if config.conditions:  # a bad adapter in the last condition must fail now, not hours later
        for condition in config.conditions:
            for model in {
                m.model_dump_json(): m
                for m in (config.model_for(k, condition.name) for k in KNOWN_KINDS)
            }.values():
                check_model(model)
    owned = models is None  # a caller's pool stays open for the caller
    pool = ModelPool() if models is None else models
    try:
        # The first condition's engines are opened and asked whether they take their
        # format (a chat-only server refuses a transcript) before any file is written.
        first = config.condition_names()[0]
        for kind in KNOWN_KINDS:
            probe_format(pool.get(config.model_for(kind, first)), formats[(first, kind)])
        folder, resumed = open_run_folder(config, config_text, out)
        store = Store(folder.db)
        return _run(config, prompts, modes, formats, folder, resumed, store, pool, progress, log)
    finally:
        if owned:
            pool.close()


def _run(
    config: ExperimentConfig,
    prompts: PromptSet,
    modes: tuple[SurveyMode, ...],
    formats: Formats,
    folder: RunFolder,
    resumed: bool,
    store: Store,
    models: ModelPool,
    progress: Progress | None,
    log: Callable[[str], None],
) -> RunResult:
    conditions = config.condition_names()
    engines = _engines(config, models, conditions[0])
    # A server without token log-probabilities cannot score answers: fall back to
    # generated answers for every agent (one instrument per run) and record it.
    notes: list[str] = []
    for engine in {id(e): e for e in engines.values()}.values():
        fallback, note = survey_modes_for(engine, modes)
        if note:
            modes, notes = fallback, [*notes, note]
            log(f"WARNING: {note}")
    kind_formats = {kind: formats[(conditions[0], kind)] for kind in KNOWN_KINDS}
    fresh = not folder.personas.is_file()
    personas = load_or_make_personas(config, folder, models, log, formats[("", WRITER)])
    if fresh and config.personas.screen and config.personas.generate is not None:
        log("screening the stories: re-drawing those whose own survey sits on the wrong side…")
        personas, screened = screen_personas(
            personas,
            models.get(config.personas.model or config.model),
            engines,
            kind_formats,
            config.topic_objects(),
            prompts,
            modes,
            max_redraws=config.personas.screen_max_redraws,
            seed=config.seed,
            prompt_format=formats[("", WRITER)],
            prompt_folder=config.prompts.folder,
        )
        personas.meta["screen"] = screened
        log(
            f"screen: {screened['redrawn']} re-draw(s); "
            f"{screened['still_wrong']} stor(y/ies) still on the wrong side"
        )
    if fresh:
        _save_personas(config, folder, personas)
    pools = {kind: personas.of_kind(kind) for kind in ("republican", "democrat")}
    default = BUILTIN_PERSONAS["default"][0]
    plan = plan_debates(config, pools, default)

    if resumed:
        run_id = str(folder.read_meta()["run_id"])
        store.set_run_status(run_id, "running")
    else:
        versions = {
            **run_versions(models.describe(), prompts, config.seed, modes, notes),
            "prompt_formats": {(f"{c}/{k}" if c else k): str(f) for (c, k), f in formats.items()},
            "persona_screen": personas.meta.get("screen", {"on": False}),
        }
        run_id = store.start_run(config.model_dump(mode="json"), versions, kind="experiment")
        meta = {
            "run_id": run_id,
            "fingerprint": config.fingerprint(),
            "stancelab": __version__,
            "compatible": COMPATIBLE,
            "schema_version": SCHEMA_VERSION,
            "experiment": config.name,
        }
        tmp = folder.meta.with_name(RUN_META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(folder.meta)

    # Personas are checked on the first condition's model (the base model, by convention).
    fidelity, fidelity_ok = _fidelity(
        config, personas, prompts, kind_formats, modes, engines, store, run_id, log
    )
    debates = _debates(config, plan, prompts, modes, formats, store, run_id)
    if progress is not None:
        for planned, debate, _ in debates:
            progress.add(_cell(planned), _steps(debate), _steps_done(debate))
        progress.announce()

    start = time.perf_counter()
    failed = 0
    try:
        # One condition at a time: its engines get the whole CPU/GPU (two llama.cpp engines
        # competing for the same cores slow both down many times), then are closed.
        for index, condition in enumerate(conditions):
            part = [d for d in debates if d[0].condition == condition]
            if index > 0:
                later = [config.model_for(k, c) for c in conditions[index:] for k in KNOWN_KINDS]
                models.release(keep=later)
                if any(not d.done for _, d, _ in part):
                    engines = _engines(config, models, condition)
                    _check_modes(engines, modes, condition)
                    for kind, engine in engines.items():
                        probe_format(engine, formats[(condition, kind)])
                    store.update_run_versions(
                        run_id,
                        {
                            f"models[{condition}]": [
                                e.describe() for e in {id(e): e for e in engines.values()}.values()
                            ]
                        },
                    )
            failed += _drive(config, part, engines, store, progress, condition)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.finish_run(run_id, status=status, error=str(exc) or type(exc).__name__)
        raise
    elapsed = time.perf_counter() - start
    store.finish_run(
        run_id,
        status="complete" if not failed else "complete-with-failures",
        error=f"{failed} debate(s) failed" if failed else None,
    )
    return RunResult(
        folder,
        run_id,
        resumed,
        len(debates),
        failed,
        elapsed,
        fidelity,
        fidelity_ok,
        models.stats(),
    )


def _engines(
    config: ExperimentConfig, models: ModelPool, condition: str
) -> dict[str, LanguageModel]:
    return {kind: models.get(config.model_for(kind, condition)) for kind in KNOWN_KINDS}


def _check_modes(
    engines: dict[str, LanguageModel], modes: tuple[SurveyMode, ...], condition: str
) -> None:
    for engine in engines.values():
        _, note = survey_modes_for(engine, modes)
        if note:  # one survey instrument per run: a later model cannot switch it
            raise ConfigError(
                f"condition {condition!r}: {note}; set survey.modes: [generate] "
                "so every condition is measured the same way"
            )


def _cell(planned: PlannedDebate) -> str:
    cell = f"{planned.topic} · {planned.setup}"
    return f"{planned.condition} · {cell}" if planned.condition else cell


def _fidelity(
    config: ExperimentConfig,
    personas: PersonaSet,
    prompts: PromptSet,
    formats: dict[str, PromptFormat],
    modes: tuple[SurveyMode, ...],
    engines: dict[str, LanguageModel],
    store: Store,
    run_id: str,
    log: Callable[[str], None],
) -> tuple[list[TopicFidelity], bool | None]:
    if not config.personas.check_fidelity:
        return [], None
    topics = config.topic_objects()
    rows = store.persona_checks(run_id)
    if not rows:
        log("fidelity check: surveying every persona before any debate…")
        checked = []
        default = BUILTIN_PERSONAS["default"][0]
        # The run's own instrument: distribution where the engines give log-probabilities.
        mode = SurveyMode.DISTRIBUTION if SurveyMode.DISTRIBUTION in modes else modes[0]
        for kind in KNOWN_KINDS:
            group = personas.of_kind(kind) if kind != "default" else [default]
            if group:
                checked += survey_personas(
                    engines[kind], group, topics, prompts, mode, formats[kind]
                )
        store.add_persona_checks(run_id, checked)
        rows = store.persona_checks(run_id)
    summary = summarise(rows, topics)  # type: ignore[arg-type]
    verdicts = [
        t.holds(config.personas.min_on_side, config.personas.min_separation) for t in summary
    ]
    known = [v for v in verdicts if v is not None]
    ok = all(known) if known else None
    if ok is False:
        weak = [t.topic for t, v in zip(summary, verdicts, strict=True) if v is False]
        log(
            f"WARNING: the model does not hold its personas on {', '.join(weak)}: partisans "
            f"do not sit on their party's side (need {config.personas.min_on_side:.0%}) or are "
            f"less than {config.personas.min_separation} apart. Attitude curves from this "
            "model say little about partisan debates."
        )
    return summary, ok


def _debates(
    config: ExperimentConfig,
    plan: list[PlannedDebate],
    prompts: PromptSet,
    modes: tuple[SurveyMode, ...],
    formats: Formats,
    store: Store,
    run_id: str,
) -> list[tuple[PlannedDebate, Debate, int]]:
    stored = {row.key: row for row in store.debates(run_id)}
    out = []
    for planned in plan:
        spec = DebateSpec(
            topic=planned.topic,
            personas=planned.personas,
            iterations=config.iterations,
            seed=planned.seed,
            word_limit=config.reply.word_limit,
            survey_modes=modes,
            max_retries=config.reply.max_retries,
            max_tokens=config.reply.max_tokens,
            temperature=config.reply.temperature,
        )
        agent_formats = [formats[(planned.condition, p.kind)] for p in planned.personas]
        debate = Debate(spec, prompts, agent_formats)
        row = stored.get(planned.key)
        if row is None:
            debate_id = store.add_debate(
                run_id,
                debate,
                key=planned.key,
                setup=planned.setup,
                repetition=planned.repetition,
                condition=planned.condition,
            )
        else:
            debate_id = row.id
            store.restore(debate_id, debate)
        out.append((planned, debate, debate_id))
    return out


def _drive(
    config: ExperimentConfig,
    debates: list[tuple[PlannedDebate, Debate, int]],
    engines: dict[str, LanguageModel],
    store: Store,
    progress: Progress | None,
    condition: str = "",
) -> int:
    """Run every unfinished debate in a bounded pool of threads; returns failures."""
    write_lock = threading.Lock()
    stop = threading.Event()
    cells = {id(d): _cell(p) for p, d, _ in debates}
    ids = {id(d): debate_id for _, d, debate_id in debates}

    def on_turn(d: Debate, turn: Turn) -> None:
        with write_lock:
            store.add_turn(ids[id(d)], d, turn)
        if progress:
            progress.advance(cells[id(d)])

    def on_survey(d: Debate, answers: list[SurveyAnswer]) -> None:
        with write_lock:
            store.add_surveys(ids[id(d)], answers)
        if progress:
            progress.advance(cells[id(d)])

    def choose(d: Debate, agent: int) -> LanguageModel:
        return engines[d.spec.personas[agent].kind]

    events = DebateEvents(on_turn=on_turn, on_survey=on_survey, should_stop=stop.is_set)

    def drive(debate: Debate) -> None:
        run_debates(choose, [debate], events)
        if debate.done and not stop.is_set():
            with write_lock:
                store.finish_debate(ids[id(debate)], error=debate.failed)

    todo = [d for _, d, _ in debates if not d.done]
    for _, d, debate_id in debates:  # finished before a crash but not marked
        if d.done and d.failed is None:
            store.finish_debate(debate_id)
    workers = config.workers or 2 * max(config.model_for(k, condition).parallel for k in engines)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="debate")
    futures = [pool.submit(drive, d) for d in todo]
    try:
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            exc = future.exception()
            if exc is not None:
                raise exc
    except BaseException:
        stop.set()  # let running debates finish their current step, then stop
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return sum(1 for _, d, _ in debates if d.failed)


def experiment_status(folder: RunFolder) -> dict[str, Any]:
    """Progress of a run folder: debates, turns and surveys done per topic and setup."""
    meta = folder.read_meta()
    if not folder.db.is_file():
        raise ConfigError(f"{folder.path} has no results database yet")
    store = Store(folder.db)
    run = store.get_run(str(meta["run_id"]))
    config = run.config

    cells, surveys = store.progress(run.id)
    expected_turns = int(config.get("iterations", 0)) * int(config.get("repetitions", 0))
    return {
        "run_id": run.id,
        "experiment": meta.get("experiment"),
        "status": run.status,
        "error": run.error,
        "cells": cells,
        "expected_turns_per_cell": expected_turns,
        "survey_answers": surveys,
        "created_at": str(run.created_at),
        "finished_at": str(run.finished_at) if run.finished_at else None,
    }
