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


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``exc``'s message (its type name when the message is empty), prefixed with the type
    name when ``with_type``: how an error from elsewhere (an import, a backend) goes into a one-line message
    or skip reason.

    >>> one_line(ImportError("libhccl.so: cannot open shared object file\\n  more detail"))
    'libhccl.so: cannot open shared object file'
    >>> one_line(RuntimeError("no backend"), with_type=True), one_line(RuntimeError(), with_type=True)
    ('RuntimeError: no backend', 'RuntimeError')
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def require_whole(name: str, value, low: int) -> int:
    """``value`` when it is an int >= ``low`` (bool is not a number here), else a ConfigError naming it.

    >>> require_whole("tokens", 0, 0)
    0
    >>> require_whole("top_k", True, 1)
    Traceback (most recent call last):
    ...
    ascend_conformance.errors.ConfigError: top_k must be a whole number >= 1, got True
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    return value


class Divergence(AssertionError):
    """A system under test computed something other than the oracle: the verdict of a conformance check.

    The only failure an expectation (a known divergence of a release, ``suites/expectations/``) may turn
    into an expected failure: a crash, a timeout or a rank failure is never one, so an expectation can
    never hide them.
    """


class SutRefused(ConfigError):
    """A system under test refused a configuration it was asked to build: one line naming the release and
    the release's own message, e.g. ``vllm_ascend 0.23.0.post1 refuses world 4 = ... x TP2, flashcomm2_otp 2:
    AssertionError: flashcomm2_oproj_tensor_parallel_size (2) cannot exceed global tensor parallel size (2)``.

    Neither a divergence (the release said no, it computed nothing wrong) nor hidden by an expectation; the
    CLI prints it as ``error: ...`` and exits 2, like every ConfigError.
    """
