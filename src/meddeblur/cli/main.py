"""Entry point of the ``meddeblur`` console script: parse, dispatch, and turn every user error into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from meddeblur.errors import UserError

__all__ = ["main"]


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so temporary files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    import signal

    # Unwinding has begun: a second signal (a supervisor repeating itself) must not interrupt the clean-up this one
    # started, nor raise inside interpreter-exit finalizers. SIGKILL still ends a run that hangs.
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise _Terminated(signum)


#: Commands whose SIGTERM/SIGHUP become _Terminated (serve: uvicorn shuts down gracefully itself; train/evaluate: their own).
_CLEAN_STOP_COMMANDS = ("deblur", "synth", "assess", "export", "info")


def _install_stop_handlers() -> dict[int, Callable[[int, FrameType | None], Any] | int | None]:
    """Route SIGTERM and SIGHUP to :class:`_Terminated`; returns the handlers they had, for restoring."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread (e.g. main() called from a test thread)
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), _raise_terminated)
    return previous


def _one_line(error: UserError) -> str:
    """The error as one line. A file name holding control characters (a newline, a tab) is shown quoted, with
    them escaped, so the line still names the file exactly; other white space runs become one space."""
    import os
    import unicodedata

    text = str(error)
    if isinstance(error.value, (str, os.PathLike)):
        name = os.fspath(error.value)
        if isinstance(name, str) and any(unicodedata.category(c) == "Cc" for c in name):
            quoted = "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in name)
            # As given, or as a message that was already made one line shows it.
            for shown in (name, " ".join(name.split())):
                text = text.replace(shown, f"'{quoted}'")
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meddeblur`` console script; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # non-UTF-8 file names must not crash a print
            stream.reconfigure(errors="backslashreplace")
    from meddeblur.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _install_stop_handlers() if args.command in _CLEAN_STOP_COMMANDS else {}
    try:
        from meddeblur.cli.commands import COMMANDS

        return COMMANDS[args.command](args)
    except _Terminated as stop:
        import signal

        name = signal.Signals(stop.signum).name
        sys.stderr.write(
            f"meddeblur {args.command}: stopped by {name}; finished outputs are complete, nothing half-written was left\n"
        )
        return 128 + stop.signum
    except UserError as error:
        from meddeblur.cli.parser import command_flags, in_flags

        message = in_flags(_one_line(error), command_flags(parser, args.command))
        sys.stderr.write(f"meddeblur {args.command}: error: {message}\n")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: nothing left to say
        return 1
    except OSError as error:  # permissions, full disk, read-only folder: the user's environment, not a bug
        where = f"{error.filename}: " if error.filename else ""
        sys.stderr.write(
            f"meddeblur {args.command}: error: {where}{error.strerror or error}; check the path, its permissions and free space\n"
        )
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            f"meddeblur {args.command}: interrupted (Ctrl-C); finished outputs are complete, nothing half-written was left\n"
        )
        return 130
    finally:
        if previous:
            import signal

            for signum, handler in previous.items():
                signal.signal(signum, handler)
