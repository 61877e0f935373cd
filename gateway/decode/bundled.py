"""The app-layer decoders vpatch ships: importing this module registers every one of them with
gateway.decode.registry (which imports none of its plug-ins, like aioquic's congestion/base.py).

Code that reads the registry (rule validation, the matcher, the engine, Suricata import) imports
this module first, so `registry.get("smb")` and friends see every bundled protocol whichever
module was imported first. A further decoder registers itself the same way and is added here.
"""

from __future__ import annotations

from typing import Final

from gateway.decode import app, dcerpc, ftp, mssql, rdp, smb, starttls

__all__ = ["MODULES"]

# every bundled decoder module; each registers its protocols when imported
MODULES: Final = (app, dcerpc, ftp, mssql, rdp, smb, starttls)
