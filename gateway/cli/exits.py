"""Exit codes of the ``agentaudit`` command, and the error that carries one out of a command.

0 success; 1 tamper evidence (verify), anomalies (trace) or a runtime failure; 2 usage or configuration error.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class OperatorCallError(Exception):
    """An operator (or collector) RPC failed; carries the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
