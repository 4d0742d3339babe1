"""nsbackup: backup plumbing for NS8-style container clusters."""

from nsbackup.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
