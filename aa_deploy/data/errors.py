"""The one exception type for problems the user can fix in their data or arguments."""

from __future__ import annotations


class DataError(ValueError):
    """A data file, folder or data argument cannot be used as given.

    Subclassing ValueError keeps ``except ValueError`` callers working, while the CLI can
    catch exactly this type and print the message alone (no traceback): the message is
    written for the person running the tool, naming the file, the line where there is one,
    and what to do about it.
    """
