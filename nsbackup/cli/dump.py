"""``nsbackup dump ...``: the encrypted cluster dump (``cluster.dump``).

The passphrase comes from a file (its first line, as ``gpg --passphrase-file`` reads it) or an
inherited file descriptor, never from the command line or the environment.
"""

from __future__ import annotations

import argparse
from typing import Any

from nsbackup.cli.base import Context
from nsbackup.secret import Secret


def _passphrase(ctx: Context) -> Secret:
    from nsbackup.dr.dump import read_passphrase, read_passphrase_fd

    if ctx.args.passphrase_file is not None:
        return read_passphrase(ctx.args.passphrase_file)
    return read_passphrase_fd(ctx.args.passphrase_fd)


def export(ctx: Context) -> int:
    result = ctx.cluster.dump.export(ctx.args.out, passphrase=_passphrase(ctx))
    for skipped in result["skipped_destinations"]:
        ctx.warn(f"destination {skipped['id']} left out of the dump: {skipped['reason']}")
    for backup in result["skipped_backups"]:
        ctx.warn(f"backup {backup['id']} left out of the dump: {backup['reason']}")
    ctx.emit(
        result,
        f"{result['path']}: {len(result['destinations'])} destination(s), "
        f"{len(result['backups'])} backup(s); plaintext sha256 {result['digest']}",
    )
    return 3 if result["skipped_destinations"] else 0


def import_(ctx: Context) -> int:
    result = ctx.cluster.dump.import_(ctx.args.file, passphrase=_passphrase(ctx))
    for skipped in result["skipped"]:
        ctx.warn(f"destination {skipped['id']} not imported: {skipped['reason']}")
    ctx.emit(
        result,
        f"imported {result['imported_destinations']} destination(s), "
        f"skipped {result['skipped_destinations']}",
    )
    return 0


def restore(ctx: Context) -> int:
    result = ctx.cluster.dump.restore(ctx.args.file, passphrase=_passphrase(ctx))
    ctx.emit(
        result,
        f"restored {len(result['restored_destinations'])} destination(s) and "
        f"{len(result['restored_backups'])} backup(s); backup_sequence {result['backup_sequence']}",
    )
    return 0


def _passphrase_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="file whose first line is the passphrase (NS8: "
        "/var/lib/nethserver/cluster/state/backup/passphrase)",
    )
    source.add_argument(
        "--passphrase-fd",
        metavar="N",
        type=int,
        help="read the passphrase from open file descriptor N (e.g. 3<file)",
    )


def register(group: Any, command: Any) -> None:
    p = command(group, "export", export, "write the encrypted cluster dump (NS8 format 4)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (mode 0600)")
    _passphrase_options(p)
    p = command(
        group, "import", import_, "add the destinations of a dump (import-backup-destinations)"
    )
    p.add_argument("file", metavar="FILE", help="a dump.json.gz.gpg of format 3 or 4")
    _passphrase_options(p)
    p = command(
        group, "restore", restore, "restore the destinations and backups of a dump (new cluster)"
    )
    p.add_argument("file", metavar="FILE", help="a dump.json.gz.gpg of format 3 or 4")
    _passphrase_options(p)
