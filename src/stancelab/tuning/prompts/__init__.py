"""Versioned prompt templates of the fine-tuning loop (text files beside this module)."""
