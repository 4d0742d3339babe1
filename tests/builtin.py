"""What nsbackup ships: the built-in plugins (entry points) and providers."""

BUILTIN_PLUGINS = {
    "s3",
    "s3_vendors",
    "backblaze",
    "azure",
    "smb",
    "webdav",
    "cluster",
    "rclone",
    "gateway",
}
BUILTIN_PROVIDERS = {
    "aws",
    "generic-s3",
    "backblaze",
    "azure",
    "smb",
    "webdav",
    "cluster",
    "rclone",
}
