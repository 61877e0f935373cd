"""The HTTPS inspection plane: selected web services are terminated by mitmproxy in the
gateway, their HTTP judged by the packet plane's rules (docs/https.md).

service.py: the per-service configuration; inspect.py: HTTP exchanges judged by the engine;
addon.py: the mitmproxy addon; proxy.py: one proxy process; plane.py: the supervisor's side
(processes, restarts, fail policy); redirect.py: the kernel redirect rules.
"""
