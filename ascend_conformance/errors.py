"""Errors the user sees as one line.

`ConfigError` is raised for any bad input a user can fix: an invalid parallel configuration, a tensor of
the wrong shape or dtype, a device that is not there. Its message is a single line that names the
offending values; the CLI prints it as ``error: <message>`` and exits 2 without a traceback.
"""


class ConfigError(ValueError):
    """A user-fixable bad input; the message is one line naming the values."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError(f"ConfigError messages must be one line, got {message!r}")
        super().__init__(message)


class PlatformUnavailable(RuntimeError):
    """The requested platform (npu / cuda) cannot be used here; the message is the skip reason."""
