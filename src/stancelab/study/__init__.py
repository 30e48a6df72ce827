"""Human-LLM bidirectional opinion study (PROTOCOL.md part C): web app, per-turn LLM stance,
storage, simulated participants, persuasion strategies, analysis and an over-alignment audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import lazy_package

if TYPE_CHECKING:
    from stancelab.study._analysis import (
        condition_summary,
        load_frames,
        participant_frame,
        per_turn,
        strategy_frame,
        turn_frame,
    )
    from stancelab.study._app import create_app
    from stancelab.study._audit import audit
    from stancelab.study._chat import Chatbot
    from stancelab.study._coding import (
        Codebook,
        agreement_table,
        cohens_kappa,
        export_sample,
        import_codes,
        krippendorff_alpha,
        load_codebook,
    )
    from stancelab.study._config import (
        Condition,
        StudyConfig,
        load_study,
    )
    from stancelab.study._estimate import (
        PilotEstimate,
        PilotProgress,
        estimate_pilot,
        measure_pilot,
    )
    from stancelab.study._exports import export_study
    from stancelab.study._reply_stance import (
        rate_replies,
        reply_stance_frame,
    )
    from stancelab.study._report import write_report
    from stancelab.study._server import running_server
    from stancelab.study._simulate import (
        SimulationResult,
        simulate,
        summary,
    )
    from stancelab.study._store import StudyStore
    from stancelab.study._strategies import (
        code_study,
        label_study,
    )

_SOURCES = {
    "Condition": ("stancelab.study._config", "Condition"),
    "StudyConfig": ("stancelab.study._config", "StudyConfig"),
    "load_study": ("stancelab.study._config", "load_study"),
    "create_app": ("stancelab.study._app", "create_app"),
    "running_server": ("stancelab.study._server", "running_server"),
    "StudyStore": ("stancelab.study._store", "StudyStore"),
    "SimulationResult": ("stancelab.study._simulate", "SimulationResult"),
    "simulate": ("stancelab.study._simulate", "simulate"),
    "summary": ("stancelab.study._simulate", "summary"),
    "export_study": ("stancelab.study._exports", "export_study"),
    "PilotEstimate": ("stancelab.study._estimate", "PilotEstimate"),
    "PilotProgress": ("stancelab.study._estimate", "PilotProgress"),
    "estimate_pilot": ("stancelab.study._estimate", "estimate_pilot"),
    "measure_pilot": ("stancelab.study._estimate", "measure_pilot"),
    "write_report": ("stancelab.study._report", "write_report"),
    "condition_summary": ("stancelab.study._analysis", "condition_summary"),
    "load_frames": ("stancelab.study._analysis", "load_frames"),
    "participant_frame": ("stancelab.study._analysis", "participant_frame"),
    "per_turn": ("stancelab.study._analysis", "per_turn"),
    "strategy_frame": ("stancelab.study._analysis", "strategy_frame"),
    "turn_frame": ("stancelab.study._analysis", "turn_frame"),
    "rate_replies": ("stancelab.study._reply_stance", "rate_replies"),
    "reply_stance_frame": ("stancelab.study._reply_stance", "reply_stance_frame"),
    "code_study": ("stancelab.study._strategies", "code_study"),
    "label_study": ("stancelab.study._strategies", "label_study"),
    "Codebook": ("stancelab.study._coding", "Codebook"),
    "agreement_table": ("stancelab.study._coding", "agreement_table"),
    "cohens_kappa": ("stancelab.study._coding", "cohens_kappa"),
    "export_sample": ("stancelab.study._coding", "export_sample"),
    "import_codes": ("stancelab.study._coding", "import_codes"),
    "krippendorff_alpha": ("stancelab.study._coding", "krippendorff_alpha"),
    "load_codebook": ("stancelab.study._coding", "load_codebook"),
    "audit": ("stancelab.study._audit", "audit"),
    "Chatbot": ("stancelab.study._chat", "Chatbot"),
}
"""Public name -> (private module, attribute), imported on first use."""

__all__ = [
    "Chatbot",
    "Codebook",
    "Condition",
    "PilotEstimate",
    "PilotProgress",
    "SimulationResult",
    "StudyConfig",
    "StudyStore",
    "agreement_table",
    "audit",
    "code_study",
    "cohens_kappa",
    "condition_summary",
    "create_app",
    "estimate_pilot",
    "export_sample",
    "export_study",
    "import_codes",
    "krippendorff_alpha",
    "label_study",
    "load_codebook",
    "load_frames",
    "load_study",
    "measure_pilot",
    "participant_frame",
    "per_turn",
    "rate_replies",
    "reply_stance_frame",
    "running_server",
    "simulate",
    "strategy_frame",
    "summary",
    "turn_frame",
    "write_report",
]

lazy_package(__name__)
