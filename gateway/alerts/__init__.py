"""Alert channels: email (SMTP), webhook (HTTP POST JSON) and syslog (RFC 5424), configured in
the policy store, rate limited per channel, fed by the events the gateway writes.

- channels.py: channel records, validation, the senders and message formats;
- ratelimit.py: the token bucket (clock passed in);
- dispatcher.py: tails the events SQLite store in its own thread and sends (never on the
  packet path).
"""
