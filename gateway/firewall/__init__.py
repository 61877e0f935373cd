"""The kernel side of the gateway: ipset and iptables rules.

Rendering is pure, configuration and stored policy in, `ipset restore`/`iptables-restore` text
out (a RenderedRules): render.py (queueing), hostmodes.py (setup protection, learning,
lockdown), policy.py (the firewall policy), compose.py (`vpatch run`'s whole set). Only apply.py
(install, remove) and refresh.py (rewrite in place on `reload`) run firewall commands.
"""
