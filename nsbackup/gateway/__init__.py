"""The per-node gateway: HAProxy in front of ``rclone serve restic``/``webdav`` (SPEC §3)."""
