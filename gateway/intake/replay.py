"""Offline intake loop: one capture file through the inspection engine (`vpatch replay`).

`replay_file(path, matcher, config, out, eve)` gives every frame of the capture
(gateway/intake/pcap.py) to a fresh Engine (the compiled Matcher is shared, so many files cost
one compilation), with the capture's own timestamps as the clock, and writes every event as one
EVE JSON object per line to `out` (and to `eve` when given). Guarantees: a truncated or corrupt
capture is not raised: the events of the records before the damage are written, and the
CaptureError (naming file and byte offset) is returned with the engine, whose counters say what
was processed. The engine is closed and `out` flushed whatever happened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.errors import CaptureError
from gateway.events.eve import to_eve
from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher


def replay_file(
    path: Path, matcher: Matcher, config: EngineConfig, out: IO[str], eve: IO[str] | None
) -> tuple[Engine, CaptureError | None]:
    """Replay one capture; write its events; return the engine and the capture error, if any."""
    engine = Engine(matcher.ruleset, config, matcher=matcher)
    error: CaptureError | None = None
    try:
        for record in read_capture(path):
            decision = engine.process_frame(record.data, record.linktype, record.timestamp)
            for event in decision.events:
                line = json.dumps(to_eve(event), separators=(",", ":"))
                out.write(line + "\n")
                if eve is not None:
                    eve.write(line + "\n")
    except CaptureError as err:
        error = err
    finally:
        engine.close()
    out.flush()
    return engine, error
