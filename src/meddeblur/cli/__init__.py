"""The ``meddeblur`` command line: :mod:`~meddeblur.cli.parser` (flags), :mod:`~meddeblur.cli.commands` (what each
command does) and :mod:`~meddeblur.cli.main` (the entry point)."""

from meddeblur.cli.main import main

__all__ = ["main"]
