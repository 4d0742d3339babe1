"""Deliberately broken nsbackup plugins, one per failure mode the loader must survive."""
