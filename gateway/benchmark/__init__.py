"""The side-by-side benchmark behind `vpatch bench`: kernel alone, Suricata inline, vpatch.

`parse` turns the traffic tools' outputs (wrk text, iperf3 JSON, /proc/PID/stat) into records;
`subjects` starts and stops each inspecting setup inside the lab's gateway namespace;
`runner` drives the traffic from the client namespace and assembles the report.
Guarantees: traffic only inside the lab namespaces (198.18.0.0/15), every process it starts is
stopped by PID, every kernel rule it adds is removed, also when a measurement fails.
"""

from __future__ import annotations

from gateway.errors import VpatchError


class BenchError(VpatchError):
    """A benchmark step failed: a tool's output did not parse or a subject did not start.

    Messages name the tool or subject and the offending value.
    """
