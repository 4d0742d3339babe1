"""Backup runs: the module side (``nsbackup module backup``), node orchestration
(``nsbackup backup run``), checks, listings, timers and the scheduler (SPEC §4, ref §4-§7).

A run crosses the three identities of NS8: the **module** backs itself up through the gateway
with its own credentials (it may only append to its own repository); the **node** takes the
module locks, reads stats, applies retention, writes the status and the metadata with its
credentials; **cluster**-level data (schedules, destinations) is only read.
"""
