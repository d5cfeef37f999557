"""The errors we raise on purpose. Each is the user's to fix: `str(e)` is one line they can act on."""


class BafError(Exception):
    """Base of every error raised on purpose; the CLI prints it as one line and exits 2."""
