"""Children the tests interrupt start with the default signal handling.

A job started in the background by a non-interactive shell (``nohup make test &``, some CI
runners) runs with SIGINT ignored, and a child inherits SIG_IGN: Python then installs no
KeyboardInterrupt handler and a test's Ctrl-C (``send_signal(SIGINT)``) does nothing. A test
that sends a signal passes ``preexec_fn=default_signals`` so the child handles it as it would
in a terminal, whatever the suite inherited.
"""

from __future__ import annotations

import signal

#: The signals a test may send (SIGKILL cannot be ignored).
SENT_BY_TESTS = (signal.SIGINT, signal.SIGTERM)


def default_signals() -> None:
    """``preexec_fn`` for a child process: the signals tests send back to their default handling."""
    for sig in SENT_BY_TESTS:
        signal.signal(sig, signal.SIG_DFL)
