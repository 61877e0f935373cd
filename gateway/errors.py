"""The one error hierarchy of vpatch.

Every error a caller may see derives from VpatchError; messages name the offending value and
where it came from (file and line for rules and config, file and offset for captures).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class VpatchError(Exception):
    """Base of every error vpatch raises on purpose."""


class ConfigError(VpatchError):
    """The gateway configuration is invalid (names file and key)."""


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One problem found in a rule: where (`path`, 1-based `line`; 0 when it concerns a whole
    file or no line is known) and why. str() is the `file:line: reason` form printed to users."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class RuleError(VpatchError):
    """A rule file is invalid (names file, line and reason).

    `problems` holds every problem found, as structured data, in the order the message lists
    them (empty when the error does not concern one place, e.g. a rule set built from rules
    with the same id); `path`, `line` and `reason` are those of the first problem.
    """

    def __init__(self, message: str, problems: Iterable[RuleProblem] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[RuleProblem, ...] = tuple(problems)

    def __reduce__(self) -> tuple[type[RuleError], tuple[str, tuple[RuleProblem, ...]]]:
        return type(self), (str(self), self.problems)

    @property
    def path(self) -> Path | None:
        return self.problems[0].path if self.problems else None

    @property
    def line(self) -> int:
        return self.problems[0].line if self.problems else 0

    @property
    def reason(self) -> str:
        return self.problems[0].reason if self.problems else str(self)


class DecodeError(VpatchError):
    """Bytes from the network do not parse: the remote peer's fault, never ours."""


class CaptureError(VpatchError):
    """A capture file is truncated or corrupt (names file and byte offset)."""


class FirewallError(VpatchError):
    """Kernel rules could not be rendered or applied (names the command and its output)."""


class LabError(VpatchError):
    """The namespace lab could not be built or torn down."""
