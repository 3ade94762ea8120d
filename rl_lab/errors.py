"""The one exception the lab raises for problems a user can fix."""


class LabError(Exception):
    """A user-facing error: its message is one readable sentence, shown without a traceback."""
