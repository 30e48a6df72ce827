"""The package version: results are comparable within one minor version (CHANGELOG.md)."""

__version__ = "0.4.1"
