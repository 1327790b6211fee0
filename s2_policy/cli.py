"""Command-line conventions shared by every command: a user error is one line and exit status 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TimeoutError)


def user_errors(fn: F) -> F:
    """Report ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` / ``TimeoutError`` as one line, exit 2.

    These are how the project signals bad input (config values, files, keys, a busy store); the message names
    the problem and the fix. ``HYDRA_FULL_ERROR=1`` (any command) re-raises them with the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}  (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
