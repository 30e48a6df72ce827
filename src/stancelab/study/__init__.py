"""Human-LLM bidirectional opinion study (PROTOCOL.md part C): web app, per-turn LLM stance,
storage, simulated participants, persuasion strategies, analysis and an over-alignment audit.
"""

from stancelab.study.config import Condition, StudyConfig, load_study

__all__ = ["Condition", "StudyConfig", "load_study"]
