"""The subcommands of `vpatch` (one module each, registered by gateway/cli.py)."""


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler that unwinds like Ctrl-C: finally blocks run, `vpatch` exits 130."""
    raise KeyboardInterrupt
