"""The one exception type for mistakes a user can fix (bad config, missing data, ...)."""


class UserError(Exception):
    """A problem with the user's input; `run.py` prints it as one line, with no traceback."""
