"""The exception ``probes`` raises for problems a user can fix (bad file, unknown hook, ...)."""


class ProbeError(Exception):
    """A user-facing error: its message is one readable sentence, shown without a traceback."""
