"""Public names imported on first use, deprecated names and module paths that still work.

Every package ``__init__`` lists its public API as ``_SOURCES``, ``public name ->
(private module, attribute)``, and calls `lazy_package`, which gives the package a module
class that imports a name on first use (PEP 562, as a class). So importing a package
costs nothing until a name is used: reading a finished run loads neither the study's web
app (fastapi) nor an engine (xllamacpp), and the tuning package loads torch only inside
the functions that train.

Since 0.4 the implementation modules are private (``stancelab.study._exports``); the old
paths users were sent to (``stancelab.study.exports``) keep working for one release:
`install_moved_modules` answers them with the private module itself, after a
`DeprecationWarning` that names what to import instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

Sources = Mapping[str, tuple[str, str]]
"""Public name -> (module, attribute) that holds it."""

PRIVATE_SINCE = "0.4"
"""The release that made the implementation modules private."""

Deprecated = Mapping[str, tuple[str, str, str]]
"""Old name -> (module, attribute, what to use instead)."""


class _LazyPackage(ModuleType):
    """A package whose public names (its ``_SOURCES``) are imported on first use."""

    def __getattr__(self, name: str) -> Any:
        package = self.__name__
        sources: Sources = self.__dict__["_SOURCES"]
        deprecated: Deprecated = self.__dict__.get("_DEPRECATED", {})
        if name in sources:
            module, attribute = sources[name]
        elif name in deprecated:
            module, attribute, instead = deprecated[name]
            warnings.warn(
                f"{package}.{name} is deprecated since {PRIVATE_SINCE} and goes in the next "
                f"release; use {instead}",
                DeprecationWarning,
                stacklevel=2,
            )
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        if name in self.__dict__:  # a subpackage of that name (the callable stancelab.replicate)
            return self.__dict__[name]
        value = getattr(imported, attribute)
        self.__dict__[name] = value  # later lookups skip __getattr__; a deprecation warns once
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing an old module path (stancelab.study.simulate) binds the private module
        # on its package, which would hide the public name it shares (the function).
        moved = isinstance(value, ModuleType) and value.__name__ != f"{self.__name__}.{name}"
        if moved and name in self.__dict__["_SOURCES"]:
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__["_SOURCES"]})


def lazy_package(package: str) -> None:
    """Make ``package`` import its public names on first use (PEP 562, as a module class).

    The package's ``_SOURCES`` maps each public name to the (module, attribute) that holds
    it, and its ``__all__`` lists the same names; an optional ``_DEPRECATED`` maps old
    names to (module, attribute, what to use instead): they warn on first use and are not
    listed. Call it last in the package's ``__init__``.
    """
    sys.modules[package].__class__ = _LazyPackage


def public_names(package: str, module: str) -> list[str]:
    """The names ``package`` exports from its private ``module``."""
    sources: Sources = getattr(importlib.import_module(package), "_SOURCES", {})
    return sorted(name for name, (source, _) in sources.items() if source == module)


def moved_message(old: str, private: str) -> str:
    """The deprecation warning of an old module path, naming what to import instead."""
    package = old.rpartition(".")[0]
    names = public_names(package, private)
    instead = f"import {', '.join(names)} from {package}" if names else f"use {package}"
    return f"{old} is private since {PRIVATE_SINCE}; {instead}"


class _MovedModule(importlib.abc.Loader):
    """Loads an old module path as the private module itself (same objects, same
    monkeypatch targets), warning once: Python keeps it in ``sys.modules`` after."""

    def __init__(self, old: str, private: str) -> None:
        self.old = old
        self.private = private

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.private)
        self.spec = module.__spec__  # the import machinery sets the alias's spec on it
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec
        message = moved_message(self.old, self.private)
        # stacklevel 2 is the import statement: warnings skips the import machinery's frames.
        warnings.warn(message, DeprecationWarning, stacklevel=2)


class _MovedModules(importlib.abc.MetaPathFinder):
    """Finds ``PACKAGE.NAME`` as ``PACKAGE._NAME`` when no ``PACKAGE.NAME`` exists, for the
    packages whose modules became private."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = frozenset(packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package not in self.packages or name.startswith("_"):
            return None
        private = f"{package}._{name}"
        if importlib.util.find_spec(private) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModule(fullname, private))


def install_moved_modules(packages: Sequence[str]) -> None:
    """Let the old public module paths of ``packages`` import, with a warning.

    The finder comes last on ``sys.meta_path``: a module that does exist under the old
    name is always found first, so only the paths that moved reach it.
    """
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules(packages))


def is_moved(module: str) -> bool:
    """Whether ``module`` resolves only through the old-path finder (tests/test_layers)."""
    if module in sys.modules:  # imported already: an old path holds the private module
        return sys.modules[module].__name__ != module
    spec = importlib.util.find_spec(module)
    return spec is not None and isinstance(spec.loader, _MovedModule)
