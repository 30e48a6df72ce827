"""Run a plan: an experiment file or a single debate, every debate concurrently, resume.

Everything a run needs is resolved first into a ``Plan`` (``plan_experiment`` for an
experiment file, ``debates.single.plan_debate`` for one debate or a SAUCE file); ``execute``
then runs it in a run folder with ``run.json``, so every run resumes, reports and shows
progress the same way. All debates advance at once (a worker thread each, bounded), so
the engine always has a full batch; every turn and survey is committed as it finishes,
and the same command picks up where a killed run stopped without recomputing anything.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stancelab._version import __version__
from stancelab.conversation import (
    PromptFormat,
    PromptSet,
    SurveyAnswer,
    SurveyMode,
    load_prompts,
    parse_modes,
    survey_modes_for,
)
from stancelab.conversation._personas import (
    BUILTIN_PERSONAS,
    KNOWN_KINDS,
    Persona,
    PersonaSet,
    StoryDraft,
    generate_personas,
)
from stancelab.debates._debate import (
    Debate,
    DebateEvents,
    DebateSpec,
    DecideStep,
    Turn,
    run_debates,
)
from stancelab.debates._experiment import (
    ExperimentConfig,
    ExperimentModel,
    PlannedDebate,
    plan_debates,
)
from stancelab.debates._fidelity import (
    TopicFidelity,
    screen_personas,
    summarise,
    survey_personas,
)
from stancelab.debates._formats import probe_format, resolve_format
from stancelab.debates._store import SCHEMA_VERSION, Store
from stancelab.engine import ConfigError, LanguageModel
from stancelab.engine._factory import ModelConfig, check_model, open_model

RUN_META = "run.json"
# Results are compatible across versions with the same major.minor and schema.
COMPATIBLE = ".".join(__version__.split(".")[:2])


@dataclass
class RunFolder:
    """Files of one run: the config snapshot, personas, database, report."""

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

    def open_store(self) -> Store:
        """The run's results store: the folder's database, or the one run.json names."""
        target = self.read_meta().get("db") or self.db
        if isinstance(target, Path) and not target.is_file():
            raise ConfigError(f"{self.path} has no results database yet")
        return Store(target)


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


def ensure_writable_dir(folder: Path) -> Path:
    """Create a folder and prove it is writable before any expensive work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".stancelab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder {folder} is not writable: {exc.strerror}") from exc
    return folder


def run_versions(
    models: list[dict[str, Any]],
    prompts: PromptSet,
    seed: int,
    modes: tuple[SurveyMode, ...],
    notes: list[str],
) -> dict[str, Any]:
    """Everything needed to say which code, model and wording produced a run."""
    return {
        "stancelab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "models": models,
        "prompts": prompts.describe(),
        "seed": seed,
        "survey_modes_used": [str(m) for m in modes],
        "notes": notes,
    }


Formats = dict[tuple[str, str], PromptFormat]
"""(condition, agent kind) -> the prompt format that agent's model gets."""

ModelLike = ModelConfig | LanguageModel
"""A model to open (its config), or one the caller has already loaded."""

WRITER = "personas"
"""The key of the persona writer's format in a Formats map."""


@dataclass(frozen=True)
class Plan:
    """A run resolved before anything is opened or written; ``execute`` runs it.

    Models, prompt formats and prompts are decided here, once; the survey modes may
    still fall back to generated answers once the engines are open (a server without
    log-probabilities), which the run records.
    """

    name: str
    """The run folder's name under the output folder."""
    kind: str
    """experiment or debate (runs.kind)."""
    config: dict[str, Any]
    """The configuration stored with the run (runs.config)."""
    source: tuple[str, str]
    """(file name, text): the run's input, kept in the run folder."""
    fingerprint: str
    """Hash of everything that changes results: a different one refuses to resume."""
    prompts: PromptSet
    modes: tuple[SurveyMode, ...]
    seed: int
    models: dict[tuple[str, str], ModelLike]
    """(condition, agent kind) -> the model that agent runs on."""
    formats: Formats
    conditions: tuple[str, ...] = ("",)
    """Model conditions, run one after another; one unnamed condition when none."""
    debates: tuple[tuple[PlannedDebate, DebateSpec], ...] = ()
    """Every debate; for an experiment they follow from its personas (``experiment``)."""
    workers: int | None = None
    """Debates driven at once (default: twice the largest engine's parallel slots)."""
    db: str | None = None
    """A database URL instead of the run folder's stancelab.db."""
    experiment: ExperimentConfig | None = None
    """An experiment file's config: its personas are read or written, screened and
    checked for fidelity in the run, and its debates planned from them."""

    def engines(self, pool: ModelPool, condition: str) -> dict[str, LanguageModel]:
        """The engine of every agent kind in a condition (opened once by the pool)."""
        return {k: pool.get(m) for (c, k), m in self.models.items() if c == condition}


def open_run_folder(plan: Plan, out: Path) -> tuple[RunFolder, bool]:
    """Create the run folder, or check that an existing one holds this same run."""
    folder = RunFolder(out / plan.name)
    if folder.meta.is_file():
        meta = folder.read_meta()
        if meta.get("fingerprint") != plan.fingerprint:
            raise ConfigError(
                f"{folder.path} holds a different version of {plan.kind} {plan.name!r}; "
                "rename it or choose another --out folder"
            )
        if meta.get("db") != plan.db:
            raise ConfigError(
                f"{folder.path} stores its results in {meta.get('db') or folder.db}; "
                "resume it with the same database"
            )
        return folder, True
    ensure_writable_dir(folder.path)
    name, text = plan.source
    (folder.path / name).write_text(text, encoding="utf-8")
    return folder, False


class ModelPool:
    """One engine per distinct model config, shared by the agent kinds that use it.

    A model the caller has already loaded is used as it is and never closed here.
    """

    STAT_KEYS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")

    def __init__(self, opener: Callable[[ModelConfig], LanguageModel] = open_model) -> None:
        self._engines: dict[str, LanguageModel] = {}
        self._given: dict[int, LanguageModel] = {}
        self._opener = opener
        self._released = dict.fromkeys(self.STAT_KEYS, 0)  # counts of closed engines

    def _unique(self) -> list[LanguageModel]:
        # A caller's opener may hand out one engine for several configs.
        return list({id(e): e for e in [*self._engines.values(), *self._given.values()]}.values())

    @staticmethod
    def _key(config: ModelConfig) -> str:
        # The same model in two prompt formats is one engine.
        return (
            config.engine_key() if isinstance(config, ExperimentModel) else config.model_dump_json()
        )

    def get(self, config: ModelLike) -> LanguageModel:
        """Open (once) and return the engine for a config, or a loaded model as it is."""
        if isinstance(config, LanguageModel):
            self._given[id(config)] = config
            return config
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

    def release(self, keep: Sequence[ModelLike]) -> None:
        """Close and forget every engine not opened for one of ``keep``."""
        wanted = {self._key(c) for c in keep if not isinstance(c, LanguageModel)}
        for key in [k for k in self._engines if k not in wanted]:
            engine = self._engines.pop(key)
            # Closed only once no remaining config (kept or not yet released) shares it.
            if all(e is not engine for e in [*self._engines.values(), *self._given.values()]):
                for k in self.STAT_KEYS:
                    self._released[k] += getattr(engine.stats, k)
                engine.close()

    def close(self) -> None:
        """Close every engine this pool opened."""
        given = {id(e) for e in self._given.values()}
        for engine in self._unique():
            if id(engine) not in given:
                engine.close()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    store: Store


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


def plan_experiment(config: ExperimentConfig, config_text: str) -> Plan:
    """Resolve an experiment file into a plan: prompts, formats, models, survey modes.

    Its debates follow from its personas, which may still have to be written by the
    model: ``execute`` plans them once the persona set exists.
    """
    formats = resolve_formats(config)
    chat = PromptFormat.CHAT in formats.values()
    prompts = load_prompts(
        config.prompts.folder,
        config.prompts.version,
        format=PromptFormat.CHAT if chat else PromptFormat.TRANSCRIPT,
    ).with_question(config.survey.question)
    conditions = tuple(config.condition_names())
    entries = {(c, k): config.model_for(k, c) for c in conditions for k in KNOWN_KINDS}
    if config.conditions:  # a bad adapter in the last condition must fail now, not hours later
        for model in {m.model_dump_json(): m for m in entries.values()}.values():
            check_model(model)
    return Plan(
        name=config.name,
        kind="experiment",
        config=config.model_dump(mode="json"),
        source=("experiment.yaml", config_text),
        fingerprint=config.fingerprint(),
        prompts=prompts,
        modes=parse_modes(config.survey.modes),
        seed=config.seed,
        models=dict(entries),
        formats=formats,
        conditions=conditions,
        workers=config.workers,
        experiment=config,
    )


def run_experiment(
    config: ExperimentConfig,
    config_text: str,
    out: Path,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    models: ModelPool | None = None,
) -> RunResult:
    """Run (or resume) every debate of an experiment; returns when all are finished."""
    return execute(plan_experiment(config, config_text), out, progress, log, models)


def execute(
    plan: Plan,
    out: Path,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    models: ModelPool | None = None,
    events: DebateEvents | None = None,
) -> RunResult:
    """Run (or resume) a plan in ``OUT/NAME``; returns when every debate is finished.

    The run stays 'running' until then; a crash or Ctrl-C marks it 'failed' or
    'interrupted' with every finished turn and survey answer kept, and the same plan
    executed again carries on from there.

    Args:
        plan: what to run (``plan_experiment``, ``debates.single.plan_debate``).
        out: the folder that holds run folders.
        progress: counts for a progress display.
        log: where warnings and stage messages go.
        models: a caller's pool of engines, left open; default: a pool of its own.
        events: the caller's callbacks (a streaming transcript), after each is stored.
    """
    owned = models is None  # a caller's pool stays open for the caller
    pool = ModelPool() if models is None else models
    try:
        # The first condition's engines are opened and asked whether they take their
        # format (a chat-only server refuses a transcript) before any file is written.
        first = plan.conditions[0]
        for kind, engine in plan.engines(pool, first).items():
            probe_format(engine, plan.formats[(first, kind)])
        folder, resumed = open_run_folder(plan, out)
        store = Store(plan.db or folder.db)
        return _Execution(plan, folder, store, pool, progress, log, events).run(resumed)
    finally:
        if owned:
            pool.close()


@dataclass
class _Execution:
    """One execution of a plan: its folder, store and engines, stage by stage."""

    plan: Plan
    folder: RunFolder
    store: Store
    pool: ModelPool
    progress: Progress | None
    log: Callable[[str], None]
    events: DebateEvents | None

    def run(self, resumed: bool) -> RunResult:
        plan, store = self.plan, self.store
        engines = plan.engines(self.pool, plan.conditions[0])
        modes, notes = self._survey_modes(engines)
        personas = None
        if plan.experiment is not None:
            personas = self._personas(plan.experiment, engines, modes)
        planned = self._plan_debates(personas, modes)
        if resumed:
            run_id = str(self.folder.read_meta()["run_id"])
            store.set_run_status(run_id, "running")
        else:
            run_id = self._start(modes, notes, personas)
        fidelity: tuple[list[TopicFidelity], bool | None] = ([], None)
        if plan.experiment is not None and personas is not None:
            # Personas are checked on the first condition's model (the base model).
            fidelity = _fidelity(
                plan.experiment,
                personas,
                plan.prompts,
                {k: plan.formats[(plan.conditions[0], k)] for k in KNOWN_KINDS},
                modes,
                engines,
                store,
                run_id,
                self.log,
            )
        debates = _debates(planned, plan.prompts, plan.formats, store, run_id, self.log)
        if self.progress is not None:
            for item, debate, _ in debates:
                self.progress.add(_cell(item), _steps(debate), _steps_done(debate))
            self.progress.announce()
        start = time.perf_counter()
        try:
            failed = self._drive_conditions(debates, engines, modes, run_id)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            store.finish_run(run_id, status=status, error=str(exc) or type(exc).__name__)
            raise
        store.finish_run(
            run_id,
            status="complete" if not failed else "complete-with-failures",
            error=f"{failed} debate(s) failed" if failed else None,
        )
        return RunResult(
            self.folder,
            run_id,
            resumed,
            len(debates),
            failed,
            time.perf_counter() - start,
            *fidelity,
            self.pool.stats(),
            store,
        )

    def _survey_modes(
        self, engines: dict[str, LanguageModel]
    ) -> tuple[tuple[SurveyMode, ...], list[str]]:
        # A server without token log-probabilities cannot score answers: fall back to
        # generated answers for every agent (one instrument per run) and record it.
        modes = self.plan.modes
        notes: list[str] = []
        for engine in {id(e): e for e in engines.values()}.values():
            fallback, note = survey_modes_for(engine, modes)
            if note:
                modes, notes = fallback, [*notes, note]
                self.log(f"WARNING: {note}")
        return modes, notes

    def _personas(
        self,
        config: ExperimentConfig,
        engines: dict[str, LanguageModel],
        modes: tuple[SurveyMode, ...],
    ) -> PersonaSet:
        """An experiment's persona set: the run's own copy, or read, written and screened."""
        plan, folder = self.plan, self.folder
        fresh = not folder.personas.is_file()
        writer_format = plan.formats[("", WRITER)]
        personas = load_or_make_personas(config, folder, self.pool, self.log, writer_format)
        if fresh and config.personas.screen and config.personas.generate is not None:
            self.log(
                "screening the stories: re-drawing those whose own survey sits on the wrong side…"
            )
            personas, screened = screen_personas(
                personas,
                self.pool.get(config.personas.model or config.model),
                engines,
                {k: plan.formats[(plan.conditions[0], k)] for k in KNOWN_KINDS},
                config.topic_objects(),
                plan.prompts,
                modes,
                max_redraws=config.personas.screen_max_redraws,
                seed=config.seed,
                prompt_format=writer_format,
                prompt_folder=config.prompts.folder,
            )
            personas.meta["screen"] = screened
            self.log(
                f"screen: {screened['redrawn']} re-draw(s); "
                f"{screened['still_wrong']} stor(y/ies) still on the wrong side"
            )
        if fresh:
            _save_personas(config, folder, personas)
        return personas

    def _plan_debates(
        self, personas: PersonaSet | None, modes: tuple[SurveyMode, ...]
    ) -> list[tuple[PlannedDebate, DebateSpec]]:
        return planned_debates(self.plan, personas, modes)

    def _start(
        self, modes: tuple[SurveyMode, ...], notes: list[str], personas: PersonaSet | None
    ) -> str:
        plan = self.plan
        versions = {
            **run_versions(self.pool.describe(), plan.prompts, plan.seed, modes, notes),
            "prompt_formats": {
                (f"{c}/{k}" if c else k): str(f) for (c, k), f in plan.formats.items()
            },
        }
        if personas is not None:
            versions["persona_screen"] = personas.meta.get("screen", {"on": False})
        run_id = self.store.start_run(plan.config, versions, kind=plan.kind)
        meta = {
            "run_id": run_id,
            "fingerprint": plan.fingerprint,
            "stancelab": __version__,
            "compatible": COMPATIBLE,
            "schema_version": SCHEMA_VERSION,
            "kind": plan.kind,
            "experiment": plan.name,
            **({"db": plan.db} if plan.db else {}),
        }
        tmp = self.folder.meta.with_name(RUN_META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.folder.meta)
        return run_id

    def _drive_conditions(
        self,
        debates: list[tuple[PlannedDebate, Debate, int]],
        engines: dict[str, LanguageModel],
        modes: tuple[SurveyMode, ...],
        run_id: str,
    ) -> int:
        """Drive every debate, one model condition at a time; returns failures."""
        plan, store, failed = self.plan, self.store, 0
        # One condition at a time: its engines get the whole CPU/GPU (two llama.cpp engines
        # competing for the same cores slow both down many times), then are closed.
        for index, condition in enumerate(plan.conditions):
            part = [d for d in debates if d[0].condition == condition]
            if index > 0:
                later = [m for (c, _), m in plan.models.items() if c in plan.conditions[index:]]
                self.pool.release(keep=later)
                if any(not d.done for _, d, _ in part):
                    engines = plan.engines(self.pool, condition)
                    _check_modes(engines, modes, condition)
                    for kind, engine in engines.items():
                        probe_format(engine, plan.formats[(condition, kind)])
                    store.update_run_versions(
                        run_id,
                        {
                            f"models[{condition}]": [
                                e.describe() for e in {id(e): e for e in engines.values()}.values()
                            ]
                        },
                    )
            workers = plan.workers or 2 * max(
                getattr(m, "parallel", 1) for (c, _), m in plan.models.items() if c == condition
            )
            failed += _drive(part, engines, store, workers, self.progress, self.events)
        return failed


def planned_debates(
    plan: Plan, personas: PersonaSet | None, modes: tuple[SurveyMode, ...]
) -> list[tuple[PlannedDebate, DebateSpec]]:
    """Every debate of a plan: its own, or for an experiment those its personas give,
    each surveyed with ``modes`` (the instrument the engines can give is the run's)."""
    config = plan.experiment
    if config is None or personas is None:
        planned = list(plan.debates)
    else:
        pools = {kind: personas.of_kind(kind) for kind in ("republican", "democrat")}
        planned = [
            (p, experiment_spec(config, p))
            for p in plan_debates(config, pools, BUILTIN_PERSONAS["default"][0])
        ]
    return [(p, dataclasses.replace(spec, survey_modes=modes)) for p, spec in planned]


def new_debate(
    item: PlannedDebate, spec: DebateSpec, prompts: PromptSet, formats: Formats
) -> Debate:
    """A planned debate's state machine, each agent in its model's prompt format."""
    return Debate(spec, prompts, [formats[(item.condition, p.kind)] for p in spec.personas])


def experiment_spec(config: ExperimentConfig, planned: PlannedDebate) -> DebateSpec:
    """The debate an experiment file asks for at one place of its design."""
    return DebateSpec(
        topic=planned.topic,
        personas=planned.personas,
        iterations=config.iterations,
        seed=planned.seed,
        word_limit=config.reply.word_limit,
        survey_modes=parse_modes(config.survey.modes),
        max_retries=config.reply.max_retries,
        max_tokens=config.reply.max_tokens,
        temperature=config.reply.temperature,
    )


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


def fidelity_mode(modes: tuple[SurveyMode, ...]) -> SurveyMode:
    """The fidelity check's instrument: the run's own, distribution where it has it."""
    return SurveyMode.DISTRIBUTION if SurveyMode.DISTRIBUTION in modes else modes[0]


def fidelity_groups(personas: PersonaSet) -> dict[str, list[Persona]]:
    """Who the fidelity check surveys, per agent kind: every partisan, one Default agent."""
    groups = {
        kind: personas.of_kind(kind) if kind != "default" else [BUILTIN_PERSONAS["default"][0]]
        for kind in KNOWN_KINDS
    }
    return {kind: group for kind, group in groups.items() if group}


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
        mode = fidelity_mode(modes)
        for kind, group in fidelity_groups(personas).items():
            checked += survey_personas(engines[kind], group, topics, prompts, mode, formats[kind])
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
    planned: list[tuple[PlannedDebate, DebateSpec]],
    prompts: PromptSet,
    formats: Formats,
    store: Store,
    run_id: str,
    log: Callable[[str], None],
) -> list[tuple[PlannedDebate, Debate, int]]:
    """Every planned debate as a Debate: stored anew, or restored from the store."""
    stored = {row.key: row for row in store.debates(run_id)}
    out = []
    inferred = unstored = 0
    for item, spec in planned:
        debate = new_debate(item, spec, prompts, formats)
        row = stored.get(item.key)
        if row is None:
            debate_id = store.add_debate(
                run_id,
                debate,
                key=item.key,
                setup=item.setup,
                repetition=item.repetition,
                condition=item.condition,
            )
        else:
            debate_id = row.id
            n = store.restore(debate_id, debate)
            inferred, unstored = inferred + n, unstored + bool(n)
        out.append((item, debate, debate_id))
    if inferred:
        log(
            f"WARNING: {unstored} debate(s) resume with {inferred} earlier decision(s) whether "
            "to speak not stored (made before stancelab stored them): taken from who spoke "
            "next, their answers are not in the run record"
        )
    return out


def _drive(
    debates: list[tuple[PlannedDebate, Debate, int]],
    engines: dict[str, LanguageModel],
    store: Store,
    workers: int,
    progress: Progress | None,
    caller: DebateEvents | None = None,
) -> int:
    """Run every unfinished debate, a worker each (``run_debates``); returns failures.

    Each turn, decision, survey and finished debate is stored before the caller hears of it.
    """
    write_lock = threading.Lock()
    cells = {id(d): _cell(p) for p, d, _ in debates}
    ids = {id(d): debate_id for _, d, debate_id in debates}
    caller = caller or DebateEvents()

    def on_turn(d: Debate, turn: Turn) -> None:
        with write_lock:
            store.add_turn(ids[id(d)], d, turn)
        if progress:
            progress.advance(cells[id(d)])
        if caller.on_turn:
            caller.on_turn(d, turn)

    def on_survey(d: Debate, answers: list[SurveyAnswer]) -> None:
        with write_lock:
            store.add_surveys(ids[id(d)], answers)
        if progress:
            progress.advance(cells[id(d)])
        if caller.on_survey:
            caller.on_survey(d, answers)

    def on_decision(d: Debate, step: DecideStep, speaks: bool, raw: str) -> None:
        with write_lock:
            store.add_decision(ids[id(d)], d, d.decisions[step.chance])
        if caller.on_decision:
            caller.on_decision(d, step, speaks, raw)

    def on_end(d: Debate) -> None:
        with write_lock:
            store.finish_debate(ids[id(d)], error=d.failed)
        if caller.on_end:
            caller.on_end(d)

    def choose(d: Debate, agent: int) -> LanguageModel:
        return engines[d.spec.personas[agent].kind]

    for _, d, debate_id in debates:  # finished before a crash but not marked
        if d.done and d.failed is None:
            store.finish_debate(debate_id)
    events = dataclasses.replace(
        caller, on_turn=on_turn, on_survey=on_survey, on_decision=on_decision, on_end=on_end
    )
    run_debates(choose, [d for _, d, _ in debates], events, workers)
    return sum(1 for _, d, _ in debates if d.failed)


def experiment_status(folder: RunFolder) -> dict[str, Any]:
    """Progress of a run folder: debates, turns and surveys done per topic and setup."""
    meta = folder.read_meta()
    store = folder.open_store()
    run = store.get_run(str(meta["run_id"]))
    config = run.config

    cells, surveys = store.progress(run.id)
    # A single debate is one repetition of its one cell.
    expected_turns = int(config.get("iterations", 0)) * int(config.get("repetitions", 1))
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
