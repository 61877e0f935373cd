"""Recommendation scan: probe a protected host's services (probes.py), identify products,
versions and features, and match them against the rules' `affected` metadata (recommend.py)."""
