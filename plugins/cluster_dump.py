"""The leader's cluster dump upload before each run (ref §5.2 step 3), as a built-in plugin.

On the leader only, the encrypted dump (NS8's DUMP_VERSION 4, :mod:`nsbackup.dr.dump`) goes to
``/<destination>/cluster-backup-<cluster uuid>.json.gz.gpg`` through the gateway with the
node's credentials, encrypted with the passphrase in ``Settings.dump_passphrase_file`` (NS8's
``/var/lib/nethserver/cluster/state/backup/passphrase``). It is not uploaded again while its
plaintext is the one uploaded last time. The outcome is the run report's ``cluster_dump``
note; nothing here ever fails the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nsbackup import hookimpl

if TYPE_CHECKING:
    from nsbackup.runs.context import RunContext


@hookimpl
def nsbackup_before_run(context: RunContext) -> None:
    from nsbackup.dr.dump import upload_before_run  # loaded only when a run starts

    upload_before_run(context)
