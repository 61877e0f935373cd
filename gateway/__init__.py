"""vpatch: a virtual-patching gateway.

Packages follow the packet's journey: intake (the only packet I/O) -> decode -> flow ->
match -> verdict -> events; firewall renders kernel rules; control talks to a running gateway.
"""

__version__ = "0.1.0"
