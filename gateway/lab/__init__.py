"""The namespace lab: client, gateway and server namespaces joined by veth pairs, with real
services (nginx, smbd with SMB1, named) on the server and optionally `vpatch run` on the gateway.

Public interface (docs/architecture.md, "lab/"): LabSpec, lab_up, lab_down, lab_status,
netns_exec; configure_bridge/configure_router are shared with the Vagrant gateway VM.
"""

from gateway.lab.core import lab_down, lab_status, lab_up, summary
from gateway.lab.netns import netns_exec, netns_popen
from gateway.lab.topology import LabSpec, configure_bridge, configure_router

__all__ = [
    "LabSpec",
    "configure_bridge",
    "configure_router",
    "lab_down",
    "lab_status",
    "lab_up",
    "netns_exec",
    "netns_popen",
    "summary",
]
