"""nsbackup's built-in plugins, loaded through entry points exactly like third-party ones."""
