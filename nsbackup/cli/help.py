"""What ``nsbackup GROUP COMMAND --help`` prints after the options: the payload fields of the
``--data`` commands and one example each, keyed by the command's words.

Kept in one table so that every command has its text (tests/test_cli_output.py checks it for
every command the parser has) whichever module registers the command.
"""

from __future__ import annotations

_DESTINATION_FIELDS = """\
payload fields (NS8's add-backup-repository):
  provider    string, required: a name from `nsbackup providers`
  name        string, at most 256 characters; "" gives the provider's default name
  url         string, at most 2048 characters, in the provider's URL form
  password    string: the Restic password; "" or absent makes a random one (add only)
  parameters  object of strings: the provider's parameters (`nsbackup providers`)"""

_SCHEDULE_FIELDS = """\
payload fields (NS8's add-backup; every one required):
  name           string, at most 256 characters ("" gives "Backup <id>")
  repository     string: the destination UUID (`nsbackup destination list`)
  schedule       string: a systemd OnCalendar expression, at most 64 characters
  retention      integer from 1 to 1000000: snapshots kept
  instances      list of module ids, each once
  enabled        true or false
  schedule_hint  object, optional: the UI's form of the schedule"""

_REPOSITORY = """\
  repository  string: the destination UUID
  path        string: <app>/<module uuid>, as `nsbackup destination repositories` shows"""

EPILOGS: dict[str, str] = {
    "plugins": """\
example:
  nsbackup --json plugins""",
    "providers": """\
example:
  nsbackup providers""",
    "rclone obscure": """\
example (the secret read from standard input, so it stays out of `ps`):
  printf %s "$SECRET" | nsbackup rclone obscure -""",
    "rclone reveal": """\
example:
  nsbackup rclone reveal YCNNJ_5NenMsPtfHmfxt9yb08zGnuA""",
    "destination render": f"""\
{_DESTINATION_FIELDS}

example:
  nsbackup destination render --data '{{"provider":"backblaze","name":"","url":"b2:bucket",
      "parameters":{{"b2_account_id":"id","b2_account_key":"key"}}}}'""",
    "destination add": f"""\
{_DESTINATION_FIELDS}

example:
  nsbackup --json destination add --data @destination.json""",
    "destination alter": f"""\
{_DESTINATION_FIELDS}
  id          string, required: the destination UUID; the location cannot change, an
              empty secret keeps the stored one

example:
  nsbackup destination alter --data '{{"id":"<uuid>","provider":"backblaze","name":"Offsite",
      "parameters":{{"b2_account_id":"id","b2_account_key":""}}}}'""",
    "destination validate": f"""\
{_DESTINATION_FIELDS}

example:
  nsbackup destination validate --data @destination.json""",
    "destination remove": """\
The schedules that use the destination are removed with it (the data on the destination
stays). In text mode without --yes it only shows what would be removed (exit 2).

example:
  nsbackup destination remove 48ce000a-79b7-5fe6-8558-177fd70c27b4 --yes""",
    "destination list": """\
example:
  nsbackup destination list
  REDIS_USER=node/1 REDIS_PASSWORD=... nsbackup --json destination list --show-secrets""",
    "destination repositories": """\
example:
  nsbackup destination repositories --timeout 30""",
    "backup add": f"""\
{_SCHEDULE_FIELDS}

example:
  nsbackup backup add --data '{{"name":"Nightly","repository":"<uuid>","schedule":"daily",
      "retention":7,"instances":["mail1"],"enabled":true}}'""",
    "backup alter": f"""\
{_SCHEDULE_FIELDS}
  id             integer: the backup id (the repository cannot change)

example:
  nsbackup backup alter --data '{{"id":1,"name":"Nightly","repository":"<uuid>",
      "schedule":"*-*-* 02:00:00","retention":14,"instances":["mail1"],"enabled":true}}'""",
    "backup remove": """\
example:
  nsbackup backup remove 1""",
    "backup list": """\
example:
  nsbackup backup list""",
    "backup run": """\
Run as the node (REDIS_USER=node/<id>). Exit 0 when every module succeeded, 3 when some
failed, 1 when all failed, 4 when this backup is already running.

example:
  REDIS_USER=node/1 REDIS_PASSWORD=... nsbackup backup run 1 --jobs 2""",
    "backup snapshots": f"""\
payload fields:
{_REPOSITORY}

example:
  nsbackup backup snapshots --data '{{"repository":"<uuid>",
      "path":"dokuwiki/f5d24fcd-819c-4b1d-98ad-a1b2ebcee8cf"}}'""",
    "backup check": """\
example:
  REDIS_USER=node/1 REDIS_PASSWORD=... nsbackup backup check 1 --read-data-subset 5%""",
    "gateway render": """\
example:
  nsbackup --node 1 gateway render --out /tmp/gw""",
    "gateway serve": """\
Defaults: listens on 0.0.0.0:4694; serves node-hosted (cluster) destinations from
--repo-dir (default $NSBACKUP_REPO_DIR, else /var/lib/nsbackup/repo).

example:
  nsbackup --node 1 gateway serve --state-dir /var/lib/nsbackup/gateway --repo-dir /srv/repo""",
    "gateway status": """\
example:
  nsbackup gateway status --state-dir /var/lib/nsbackup/gateway""",
    "module backup": """\
Run with the module's own credentials (REDIS_USER=module/<id>), in its directory.

example:
  nsbackup module backup 1 --module mail1 --module-dir /srv/modules/mail1""",
    "module restore": f"""\
payload fields:
{_REPOSITORY}
  snapshot    string: a snapshot id, "latest" or "" (the latest)

example:
  nsbackup module restore --target /tmp/restored --data '{{"repository":"<uuid>",
      "path":"mail/<module uuid>","snapshot":"latest"}}'""",
    "schedule start-timers": """\
example:
  nsbackup schedule start-timers --jobs 2""",
    "schedule stop-timers": """\
example:
  nsbackup schedule stop-timers""",
    "schedule list-timers": """\
example:
  nsbackup schedule list-timers""",
    "restore grants": """\
example:
  nsbackup restore grants""",
    "restore grant": """\
payload fields:
  module_uuid  string: the UUID of the module that may read
  source_uuid  string: the UUID of the module whose repository it may read

example:
  nsbackup restore grant --data '{"module_uuid":"<uuid>","source_uuid":"<uuid>"}'""",
    "restore revoke": """\
example:
  nsbackup restore revoke 0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9""",
    "restore run": f"""\
payload fields:
{_REPOSITORY}
  snapshot    string: a snapshot id, "latest" or "" (the latest)
  module      string: the module of this node to restore into

example:
  nsbackup restore run --data '{{"repository":"<uuid>","path":"mail/<module uuid>",
      "snapshot":"","module":"mail2"}}'""",
    "dump export": """\
example:
  nsbackup dump export --out /root/dump.json.gz.gpg \\
      --passphrase-file /var/lib/nethserver/cluster/state/backup/passphrase""",
    "dump import": """\
example:
  nsbackup dump import dump.json.gz.gpg --passphrase-fd 3 3<passphrase""",
    "dump restore": """\
example:
  nsbackup dump restore dump.json.gz.gpg --passphrase-file passphrase""",
    "scheduler": """\
example:
  REDIS_USER=node/1 REDIS_PASSWORD=... NODE_ID=1 nsbackup scheduler --jobs 2""",
    "quickstart": """\
example:
  nsbackup quickstart --keep /tmp/nsbackup-demo""",
    "migrate": """\
example:
  nsbackup migrate --dry-run""",
}
