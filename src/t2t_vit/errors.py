"""The one error type raised for user mistakes: its message names the input and the fix."""


class InputError(ValueError):
    """A bad argument, file or image size given by the user; the message says how to fix it."""
