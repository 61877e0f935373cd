"""Certificate and key files uploaded on the HTTPS page (webui/https_services.py), kept in the
UI's state directory (the policy database's, shared with the gateway: `tls-uploads/`).

- `save_uploads(files)`: each uploaded PEM (form fields `cert_file`, `key_file`) is written to a
  new file of its own, `tls-uploads/<random>.pem|.key`, created 0600 with O_EXCL (the gateway,
  root, reads it; nobody else), at most MAX_PEM_BYTES; returns {field: path} to store as the
  service's `cert` / `key`. An uploaded file is never overwritten: a new upload is a new file.
- `discard(paths)`: removes files of a change that was refused (nothing half-applied).
- `prune(referenced)`: removes the uploaded files no stored service names any more (after a
  change or a removal went through).
Errors are ServiceFieldError naming the field (`cert` or `key`).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from flask import current_app

from gateway.statefiles import create_file, make_dir, shared_gid
from gateway.tls.service import MAX_PEM_BYTES, ServiceFieldError

__all__ = ["UPLOAD_DIR", "UPLOAD_FIELDS", "discard", "prune", "save_uploads", "upload_dir"]

UPLOAD_DIR: Final = "tls-uploads"
UPLOAD_FIELDS: Final = {"cert_file": ("cert", ".pem"), "key_file": ("key", ".key")}


def upload_dir() -> Path:
    cfg = current_app.config
    state = Path(cfg["STATE_DIR"] or Path(str(cfg["POLICY_DB"])).parent)
    return state / UPLOAD_DIR


def save_uploads(files: Mapping[str, Any]) -> dict[str, str]:
    """The uploaded certificate and key written to files of their own; {field: path}."""
    out: dict[str, str] = {}
    for form_field, (field, suffix) in UPLOAD_FIELDS.items():
        upload = files.get(form_field)
        if upload is None or not upload.filename:
            continue
        data = upload.read(MAX_PEM_BYTES + 1)
        if len(data) > MAX_PEM_BYTES or not data:
            discard(out.values())
            raise ServiceFieldError(field, f"uploaded file: empty or over {MAX_PEM_BYTES} bytes")
        directory = upload_dir()
        make_dir(directory, shared_gid())
        path = directory / f"{secrets.token_hex(12)}{suffix}"
        create_file(path, None, data, 0o600)  # O_EXCL: a new name, never an existing file
        out[field] = str(path)
    return out


def discard(paths: Iterable[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


def prune(referenced: Collection[str]) -> list[str]:
    """Remove the uploaded files not in `referenced` (the paths stored services name)."""
    directory = upload_dir()
    if not directory.is_dir():
        return []
    gone = [str(p) for p in directory.iterdir() if p.is_file() and str(p) not in referenced]
    discard(gone)
    return gone
