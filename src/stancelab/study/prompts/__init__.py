"""Versioned prompt templates of the human-LLM study (text files beside this module)."""
