"""The one error hierarchy of vpatch.

Every error a caller may see derives from VpatchError; messages name the offending value and
where it came from (file and line for rules and config, file and offset for captures).
"""

from __future__ import annotations


class VpatchError(Exception):
    """Base of every error vpatch raises on purpose."""


class ConfigError(VpatchError):
    """The gateway configuration is invalid (names file and key)."""


class RuleError(VpatchError):
    """A rule file is invalid (names file, line and reason)."""


class DecodeError(VpatchError):
    """Bytes from the network do not parse: the remote peer's fault, never ours."""


class CaptureError(VpatchError):
    """A capture file is truncated or corrupt (names file and byte offset)."""


class FirewallError(VpatchError):
    """Kernel rules could not be rendered or applied (names the command and its output)."""


class LabError(VpatchError):
    """The namespace lab could not be built or torn down."""
