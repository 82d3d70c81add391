"""The one exception type for mistakes a user can fix, and how commands report it."""
import sys


class UserError(Exception):
    """A problem with the user's input; commands print it as one line, with no traceback."""


def report_errors(command, *args, **kwargs):
    """Run a command function; a UserError becomes `error: ...` on stderr and exit status 2,
    Ctrl-C becomes `interrupted` and 130. Otherwise the command's own status is returned."""
    try:
        return command(*args, **kwargs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
