"""The one error type raised for user mistakes (its message names the input and the fix), and the tests of the plain
values those checks share: True is an int to Python, never a size or a rate to a user."""


class InputError(ValueError):
    """A bad argument, file or image size given by the user; the message says how to fix it."""


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
