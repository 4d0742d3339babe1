"""``python -m nsbackup``: the ``nsbackup`` command."""

from nsbackup.cli import entry

entry()
