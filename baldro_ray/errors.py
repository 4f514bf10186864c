"""The one base class of errors a user causes and can fix, which the command line reports as one line.

Invariant: a :class:`UserError` is raised before any compute starts (before Ray, before any worker, before the run's
output folder exists), and its message names the file or configuration key at fault, what was found there and what
was expected. Anything else that escapes is a bug and keeps its traceback. This module imports nothing from the
package, so every layer may raise it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix; its message is one line naming the file or key, what was found and
    what was expected."""
