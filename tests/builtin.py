"""What nsbackup ships (built-in plugins and providers), and how tests build packages."""

import importlib.metadata
import importlib.util

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
    "runners",
    "prometheus",
    "cluster_dump",
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


def build_isolation_args() -> list[str]:
    """``--no-build-isolation`` when this Python can build wheels itself (offline and fast):
    setuptools >= 70.1 has ``bdist_wheel`` built in, older ones need the ``wheel`` package.
    Otherwise pip fetches the build backend from the index into an isolated environment."""
    if importlib.util.find_spec("wheel") is not None:
        return ["--no-build-isolation"]
    try:
        major, minor = importlib.metadata.version("setuptools").split(".")[:2]
    except importlib.metadata.PackageNotFoundError:
        return []
    return ["--no-build-isolation"] if (int(major), int(minor)) >= (70, 1) else []
