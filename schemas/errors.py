"""Errors a user can act on (input, configuration, setup, a refused operation): the CLI prints them as one line.

Each also derives from the builtin a caller would expect, so `except ValueError` and `except LookupError` still work.
"""


class UserError(Exception):
    """Something the user can fix; anything else is a bug and keeps its traceback."""


class ConfigError(UserError, ValueError):
    """A configuration or input file is invalid."""


class NotFound(UserError, LookupError):
    """A lake, snapshot or tag that does not exist."""


class Refused(UserError, ValueError):
    """An operation that would break an invariant (mixing configurations, reusing a tag, an unusable snapshot)."""
