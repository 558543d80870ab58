"""The one error type raised for user mistakes (its message names the input and the fix), and the tests of the plain
values those checks share: True is an int to Python, never a size or a rate to a user."""

from pathlib import Path


class InputError(ValueError):
    """A bad argument, file or image size given by the user; the message says how to fix it."""


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def missing_file(what: str, path: object) -> InputError:
    """The error for a `what` file (checkpoint, image, ...) at `path` that does not exist, naming the files beside it
    whose names start with its name (`last.pth.tar` for `last.pth`)."""
    p = Path(str(path))
    try:
        near = sorted(str(f) for f in p.parent.iterdir() if p.name and f.name.startswith(p.name) and f.is_file())
    except OSError:  # no such folder, or one that cannot be listed
        near = []
    hint = f"did you mean {' or '.join(map(repr, near[:3]))}?" if near else "check the path"
    return InputError(f"{what} {str(path)!r} does not exist or is not a file: {hint}")
