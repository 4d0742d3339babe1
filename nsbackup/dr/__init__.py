"""Disaster recovery and migration: restore grants and module restores, the encrypted cluster
dump (export, import, restore), and the migration of NS8's legacy layout (SPEC §5, ref §8-§9).
"""
