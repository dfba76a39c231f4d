"""What every command-line front end shares: one-line errors and exit codes, never a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from .errors import VlaError

EXIT_USER_ERROR = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; user errors print ``prog: error: ...`` and exit 2, bugs one line and exit 3.

    ``VLA_DEBUG=1`` prints the full traceback for bug reports.
    """
    try:
        return body()
    except VlaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("VLA_DEBUG"):
            traceback.print_exc()
        detail = " ".join(str(exc).split())[:300]
        print(f"{prog}: internal error: {type(exc).__name__}: {detail} "
              "(a bug in vla; rerun with VLA_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EXIT_BUG
