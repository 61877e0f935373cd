"""Test factories that live in the package (like mitmproxy's tflow): streams out of captures.

Used by tests and benchmarks, never by the packet path.
"""
