"""Rule pack updates, suricata-update style: fetch, verify, install, switch, roll back.

A pack is a tarball (gzip, bzip2, xz or none) holding `manifest.yaml` (`version`, optional
`description`) and rule files (*.yaml, *.yml) in any folders. `RulePacks(root, keep)` keeps
the installed packs under `root/<version>/` and the one in force as the symlink
`root/current`; `root/history.json` lists the installs, newest first.

Guarantees:
- Nothing changes unless the whole new pack is good: the download is bounded
  (MAX_PACK_BYTES), its SHA-256 must equal the one given (or published beside it as
  `<source>.sha256`; a pack without a checksum is refused), every member must be a plain file
  or folder with a safe relative name and a rule or manifest suffix, the sizes are bounded,
  and the caller's `validate` (load and compile every rule, with the rest of the configured
  rules) must accept the extracted pack. Any failure raises RulePackError naming the source
  and the reason (RuleError's file:line when a rule is bad), and removes what was extracted.
- The switch is atomic: `current` is replaced by rename(2) of a new symlink, so a reader
  sees either the old pack or the new one, never a mix. The caller then has the gateway load
  it (`rules-reload`) and, if that fails, switches back (`switch`).
- The last `keep` versions stay installed (never the one in force); `rollback` switches to
  the previous one, or back to the bundled pack when there is none (`current` removed).
- `record_update` / `last_update`: the outcome of the last `vpatch rules update` (success, or
  the error that stopped it) in `root/last-update.json`, written atomically, for the health
  check (gateway/health/) that alerts when an update failed; an unreadable record reads None.
- `effective_rule_paths` is how every reader of the configuration's `rules` sees the pack in
  force: the bundled pack's entry is replaced by `root/current` while that exists.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

from gateway.config import BUNDLED_RULES
from gateway.errors import RuleError, VpatchError

__all__ = [
    "PackInfo",
    "RulePackError",
    "RulePacks",
    "UpdateRecord",
    "effective_rule_paths",
    "last_update",
    "record_update",
]

MAX_PACK_BYTES: Final = 32 << 20  # a download larger than this is refused
MAX_MEMBERS: Final = 4096
MAX_UNPACKED_BYTES: Final = 128 << 20
FETCH_TIMEOUT_S: Final = 30.0
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SUFFIXES: Final = (".yaml", ".yml")
CURRENT: Final = "current"
HISTORY: Final = "history.json"
LAST_UPDATE: Final = "last-update.json"


class RulePackError(VpatchError):
    """A pack could not be fetched, verified, installed or switched to (names which and why)."""


@dataclass(frozen=True, slots=True)
class PackInfo:
    version: str
    installed_at: float
    sha256: str
    source: str
    rules: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """The outcome of the last `vpatch rules update`: `error` is "" when it succeeded."""

    source: str
    at: float  # wall clock
    error: str = ""


def record_update(root: Path, source: str, error: str = "", now: float | None = None) -> None:
    """Write the outcome of an update to `root/last-update.json` (atomic replace); an OSError
    (root not writable) propagates: the caller decides."""
    root.mkdir(parents=True, exist_ok=True)
    record = UpdateRecord(source, time.time() if now is None else now, error)
    tmp = root / f".{LAST_UPDATE}-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(record)), encoding="utf-8")
    os.replace(tmp, root / LAST_UPDATE)


def last_update(root: Path) -> UpdateRecord | None:
    """The last recorded update, or None (never recorded, or the record is unreadable)."""
    try:
        data = json.loads((root / LAST_UPDATE).read_text(encoding="utf-8"))
        return UpdateRecord(str(data["source"]), float(data["at"]), str(data.get("error", "")))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def effective_rule_paths(paths: Sequence[Path], root: Path) -> list[Path]:
    """The configured rule paths with the bundled pack replaced by the installed pack in force
    (`root/current`), if any."""
    current = root / CURRENT
    if not current.exists():
        return list(paths)
    bundled = BUNDLED_RULES.resolve()
    return [current if Path(p).resolve() == bundled else Path(p) for p in paths]


def _fetch(source: str, limit: int = MAX_PACK_BYTES) -> bytes:
    """The bytes at an http(s) URL or a local path (RulePackError naming it and why not)."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=FETCH_TIMEOUT_S) as reply:
                data: bytes = reply.read(limit + 1)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise RulePackError(f"rule pack {source}: cannot download: {reason}") from err
    elif "://" in source:
        raise RulePackError(f"rule pack {source}: only http(s) URLs and local paths are fetched")
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(limit + 1)
        except OSError as err:
            raise RulePackError(f"rule pack {source}: cannot read: {err.strerror}") from err
    if len(data) > limit:
        raise RulePackError(f"rule pack {source}: larger than the {limit} bytes allowed")
    return data


def _expected_sha256(source: str, sha256: str | None) -> str:
    if sha256 is None:
        text = _fetch(source + ".sha256", 4096).decode("ascii", "replace").split()
        if not text:
            raise RulePackError(f"rule pack {source}.sha256: empty")
        sha256 = text[0]
    if not _SHA256.fullmatch(sha256):
        raise RulePackError(f"rule pack {source}: SHA-256 {sha256!r} is not 64 hex digits")
    return sha256.lower()


def _member_name(member: tarfile.TarInfo, source: str) -> PurePosixPath | None:
    """The member's safe relative path (None for folders), or RulePackError."""
    name = PurePosixPath(member.name)
    parts = [p for p in name.parts if p not in ("", ".")]
    if name.is_absolute() or ".." in parts or not parts:
        raise RulePackError(f"rule pack {source}: member {member.name!r}: unsafe path")
    if member.isdir():
        return None
    if not member.isfile():
        raise RulePackError(f"rule pack {source}: member {member.name!r}: not a plain file")
    if not parts[-1].endswith(_SUFFIXES):
        raise RulePackError(
            f"rule pack {source}: member {member.name!r}: only rule files "
            f"({', '.join(_SUFFIXES)}) and manifest.yaml may be in a pack"
        )
    return PurePosixPath(*parts)


def _extract(data: bytes, into: Path, source: str) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise RulePackError(f"rule pack {source}: more than {MAX_MEMBERS} members")
            total = 0
            for member in members:
                rel = _member_name(member, source)
                if rel is None:
                    continue
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise RulePackError(
                        f"rule pack {source}: more than {MAX_UNPACKED_BYTES} bytes unpacked"
                    )
                f = tar.extractfile(member)
                assert f is not None  # a plain file
                target = into.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise RulePackError(f"rule pack {source}: not a readable tarball: {err}") from err


def _manifest(into: Path, source: str) -> tuple[str, str]:
    path = into / "manifest.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RulePackError(f"rule pack {source}: no manifest.yaml at its top") from err
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RulePackError(f"rule pack {source}: manifest.yaml: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str | int | float):
        raise RulePackError(f"rule pack {source}: manifest.yaml: `version` is required")
    version = str(doc["version"])
    if not _VERSION.fullmatch(version) or version == CURRENT:
        raise RulePackError(
            f"rule pack {source}: manifest.yaml: version {version!r}: use 1 to 64 letters, "
            "digits, '.', '_', '+' or '-'"
        )
    path.unlink()  # the rule loader reads every *.yaml: the manifest is not a rule
    return version, str(doc.get("description", ""))[:500]


class RulePacks:
    """The packs installed under `root` (see the module comment)."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = root
        self.keep = max(keep, 2)  # the one in force and one to roll back to

    # ---- reading

    def history(self) -> list[PackInfo]:
        """Installed packs, newest first (those whose folder is still there)."""
        try:
            rows = json.loads((self.root / HISTORY).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise RulePackError(f"{self.root / HISTORY}: unreadable: {err}") from err
        out = []
        for row in rows if isinstance(rows, list) else []:
            try:
                info = PackInfo(**row)
            except TypeError:
                continue
            if (self.root / info.version).is_dir():
                out.append(info)
        return out

    def current(self) -> PackInfo | None:
        """The pack in force, or None for the bundled pack."""
        link = self.root / CURRENT
        if not link.is_symlink():
            return None
        version = os.readlink(link)
        return next((p for p in self.history() if p.version == version), None)

    # ---- changing

    def install(self, source: str, sha256: str | None, validate: Callable[[Path], int]) -> PackInfo:
        """Fetch, verify and extract the pack, `validate` it (returns the rule count, raises
        RuleError), then switch to it. Nothing changes on any error. The same pack (version
        and SHA-256) already in force is returned as it is (a scheduled update's usual case)."""
        data = _fetch(source)
        expected = _expected_sha256(source, sha256)
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            raise RulePackError(
                f"rule pack {source}: SHA-256 mismatch: expected {expected}, got {got}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{os.getpid()}-{time.monotonic_ns()}"
        staging.mkdir()
        try:
            _extract(data, staging, source)
            version, description = _manifest(staging, source)
            final = self.root / version
            if final.exists():
                current = self.current()
                if current is not None and (current.version, current.sha256) == (version, got):
                    shutil.rmtree(staging, ignore_errors=True)
                    return current  # the same pack is in force: nothing to do
                raise RulePackError(
                    f"rule pack {source}: version {version} is installed already "
                    f"(`vpatch rules rollback --to {version}`, or a pack with a new version)"
                )
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            count = validate(final)
        except RuleError as err:
            shutil.rmtree(final, ignore_errors=True)
            inside = str(err).replace(f"{final}{os.sep}", "")  # paths as inside the pack
            raise RulePackError(f"rule pack {source} (version {version}): {inside}") from err
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        info = PackInfo(version, time.time(), got, source, count, description)
        self._write_history([info, *self.history()])
        self.switch(version)
        self._prune()
        return info

    def switch(self, version: str | None) -> None:
        """Put `version` in force (None: the bundled pack), atomically."""
        link = self.root / CURRENT
        if version is None:
            if link.is_symlink():
                link.unlink()
            return
        if not (self.root / version).is_dir():
            raise RulePackError(f"rule pack version {version}: not installed in {self.root}")
        tmp = self.root / f".{CURRENT}-{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(version)
        os.replace(tmp, link)

    def previous(self) -> str | None:
        """The version a rollback goes to (None: the bundled pack)."""
        current = self.current()
        history = self.history()
        if current is None:
            return None
        older = [p.version for p in history if p.installed_at < current.installed_at]
        return older[0] if older else None

    def _write_history(self, packs: list[PackInfo]) -> None:
        tmp = self.root / f".{HISTORY}-{os.getpid()}"
        tmp.write_text(json.dumps([asdict(p) for p in packs], indent=1), encoding="utf-8")
        os.replace(tmp, self.root / HISTORY)

    def _prune(self) -> None:
        current = self.current()
        packs = self.history()
        kept = packs[: self.keep]
        for pack in packs[self.keep :]:
            if current is not None and pack.version == current.version:
                kept.append(pack)
                continue
            shutil.rmtree(self.root / pack.version, ignore_errors=True)
        self._write_history(kept)

    def describe(self) -> dict[str, Any]:
        current = self.current()
        return {
            "current": asdict(current) if current else None,
            "history": [asdict(p) for p in self.history()],
        }
