"""Fails at import, like a plugin whose own dependency is missing."""

raise ImportError("nsbackup_broken needs the module 'no_such_dependency'")
