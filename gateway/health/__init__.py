"""System-health checks and alerts, run outside the gateway process (`vpatch health check`,
from vpatch-health.timer), so that a dead gateway is noticed too.

- checks.py: the conditions and what raises them, pure (an Observation in, failing
  conditions and the counters to compare next time out);
- probe.py: the I/O that builds an Observation (the control socket's `status`, the
  filesystems' free space, the event store's writability, the last rule-pack update);
- state.py: the check's own small state file (last counters, each condition's state,
  messages not yet delivered), so it alerts on changes and sends `resolved`;
- notify.py: the messages for those changes, sent through the alert channels of the policy
  store (gateway/alerts/channels.py);
- check.py: one whole check (probe, evaluate, compare, send, save) for the command.
"""
