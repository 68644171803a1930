"""The exception tree of syncd: what failed decides what happens next.

    SyncdError
    ├── ConfigError                 operator's YAML is wrong: positioned message, exit 2; found at the load,
    │                               nothing runs, found by a run (a SQL update column), that run fails
    ├── AuthorizationError          the dataset's authorization forbids this run (expired, not yet valid)
    ├── UpstreamError               something upstream went wrong
    │   ├── TransientUpstreamError  retried with backoff (timeouts, 5xx, 429, truncated body, "系统繁忙")
    │   ├── AuthExpiredError        token / request secret expired: refresh once, then retry the call
    │   └── PermanentUpstreamError  fails the run at once (bad credentials, not authorized, 4xx)
    ├── RecordError                 one record cannot be mapped or validated: quarantined, run continues
    ├── TargetError                 the target database refused or is unreachable: run fails, nothing lost
    ├── GuardError                  a safety guard stopped the run (error limit, delete ratio)
    ├── RunLockLost                 the run's dataset lock was lost mid-run: the run fails between batches
    └── StopRequested               the service is stopping: the run ends between batches

Messages never contain secret values; they name the dataset, the field and what to do.
"""

from __future__ import annotations

__all__ = [
    "AuthExpiredError",
    "AuthorizationError",
    "ConfigError",
    "ConfigIssue",
    "GuardError",
    "PermanentUpstreamError",
    "RecordError",
    "RunLockLost",
    "StopRequested",
    "SyncdError",
    "TargetError",
    "TransientUpstreamError",
    "UpstreamError",
]

from dataclasses import dataclass


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One positioned configuration problem: ``file:line:column: path: message``."""

    file: str
    line: int  # 1-based; 0 when unknown (e.g. a missing file)
    column: int  # 1-based; 0 when unknown
    path: str  # dotted path inside the document, e.g. ``columns.name.type``
    message: str

    def __str__(self) -> str:
        where = self.file if self.line == 0 else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(SyncdError):
    """The configuration is invalid. Carries every issue found, not only the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigIssue]]]:
        """Pickled as its issues (the read worker raises it in the run's process as itself)."""
        return (ConfigError, (self.issues,))


class AuthorizationError(SyncdError):
    """The dataset may not run under its declared authorization (expired or not yet valid)."""


class UpstreamError(SyncdError):
    """An upstream (gateway, front-end database, file) problem."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class TransientUpstreamError(UpstreamError):
    """Worth retrying: the same request may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, code=code, status=status)


class AuthExpiredError(UpstreamError):
    """The credential (token, request secret) expired: refresh it once and retry."""


class PermanentUpstreamError(UpstreamError):
    """Retrying cannot help: the run fails with this message."""


class RecordError(SyncdError):
    """A single record could not be mapped or validated; it goes to quarantine with this reason."""

    def __init__(self, reason: str, *, column: str | None = None) -> None:
        self.reason = reason
        self.column = column
        super().__init__(f"{column}: {reason}" if column else reason)


class TargetError(SyncdError):
    """The target database failed; the batch was rolled back."""


class GuardError(SyncdError):
    """A safety guard refused to go on (too many bad records, too many deletes)."""


class RunLockLost(SyncdError):
    """The run's dataset lock is gone (its database session ended): another process may run the
    dataset now, so the run stopped between batches, before writing more (syncd.daemon.locks)."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class StopRequested(SyncdError):
    """The process is shutting down: the run stopped between two batches (nothing half-written)."""
