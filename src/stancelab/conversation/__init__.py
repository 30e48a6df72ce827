"""Shared instruments: prompt templates, the hidden survey, personas and the results store."""
