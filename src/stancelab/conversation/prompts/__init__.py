"""Versioned prompt templates (text files beside this module)."""
