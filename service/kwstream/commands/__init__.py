"""Subcommands of the ``kwstream`` command line, one module each.

Each module exposes ``add_parser(subparsers)``, which registers its subcommand and sets
``handler`` to a function that takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """Import every subcommand module of this package, in name order."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
