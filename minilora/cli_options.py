"""What the subcommands' parsers share: the user's-mistake errors, checked number types, --backend.

``minilora.cli`` builds the command from these; ``demo`` and ``paper`` use them for
their own options, without importing the command itself.
"""
import argparse
import contextlib
import importlib
import math

BACKENDS = ("numpy", "cupy")


# ---- errors the user can fix --------------------------------------------------------------------
class CommandError(Exception):
    """A mistake the user can fix: main() prints "minilora COMMAND: error: <message>" and exits with ``status``."""

    status = 2  # a usage error, as argparse's


class MissingExtraError(CommandError, ImportError):
    """An optional package that a command needs is not installed (an ImportError for Python callers too)."""

    status = 1


def require_extras(command_name, modules, extra="train"):
    """Import each of ``modules`` now, so that a missing one stops ``command_name`` before any work, naming the extra."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"{command_name} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. "
            f'Fix: pip install "minilora[{extra}]"'
        )


@contextlib.contextmanager
def user_input(option, value=None):
    """Turn the ValueError / OSError that library code raises while checking ``option``'s value into a CommandError.

    Wrap only code that reads or checks the user's input (a file, a shape, a prompt), whose
    messages are written for people: the same error from a computation is a bug and keeps its traceback.
    """
    try:
        yield
    except (ValueError, OSError) as error:
        message = str(error)
        if value is not None:
            option = f"{option} {value}"
            message = message.removeprefix(f"{value}: ")  # the library's message may start with the path too
        raise CommandError(f"{option}: {message}") from error


# ---- options ------------------------------------------------------------------------------------
def int_at_least(low):
    """An argparse type: an integer >= ``low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def positive_float(text):
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def add_backend_argument(parser, default=argparse.SUPPRESS):
    """--backend; SUPPRESS in a subcommand keeps `minilora --backend cupy COMMAND`'s choice from being overwritten."""
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help="numpy (CPU) or cupy (NVIDIA GPU); default: $MINILORA_BACKEND, else numpy")
