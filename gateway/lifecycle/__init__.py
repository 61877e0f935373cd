"""Host protection lifecycle: per-host modes (normal, setup, learning, lockdown), the state they
keep (state.py), learning of (peer, port, protocol) tuples and lockdown events from NFLOG
(nflog.py, monitor.py). Kernel rules for the modes: gateway/firewall/hostmodes.py."""
