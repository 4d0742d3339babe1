"""The committed decision, per Redis command and subcommand, for module and node users.

tests/test_acl_commands.py checks every command and subcommand the running ``redis-server``
knows against this table with ``ACL DRYRUN`` as ``module/mail1`` and ``node/1`` (rules from
:mod:`nsbackup.acl`). The policy (docs/security.md, "Redis"):

- A command the server knows and this table does not fails the test, with a message asking
  the developer to decide: a new Redis release cannot add an allowed command unnoticed.
- An entry the server does not know fails the test too, unless its ``since`` column names a
  Redis version newer than the server (the command exists there and is decided already).

Columns: name (``container|subcommand`` for subcommands), module, node (``allow`` or
``refuse``), optionally the Redis version that added the command, then an optional comment.
Only commands the reasoning in docs/security.md singles out carry a comment; the rest follow
the rule "key-scoped data commands and the caller's own connection are allowed, everything
else is refused".
"""

from __future__ import annotations

from typing import NamedTuple


class Decision(NamedTuple):
    module: bool
    node: bool
    since: tuple[int, int, int] | None  # the Redis version that added the command


TABLE = """
acl|cat                       refuse refuse
acl|deluser                   refuse refuse
acl|dryrun                    refuse refuse
acl|genpass                   refuse refuse
acl|getuser                   refuse refuse
acl|help                      refuse refuse
acl|list                      refuse refuse
acl|load                      refuse refuse
acl|log                       refuse refuse
acl|save                      refuse refuse
acl|setuser                   refuse refuse
acl|users                     refuse refuse
acl|whoami                    refuse refuse
append                        allow  allow
asking                        refuse refuse
auth                          allow  allow
bgrewriteaof                  refuse refuse
bgsave                        refuse refuse
bitcount                      allow  allow
bitfield                      allow  allow
bitfield_ro                   allow  allow
bitop                         allow  allow
bitpos                        allow  allow
blmove                        allow  allow
blmpop                        allow  allow
blpop                         allow  allow
brpop                         allow  allow
brpoplpush                    allow  allow
bzmpop                        allow  allow
bzpopmax                      allow  allow
bzpopmin                      allow  allow
client|caching                refuse refuse        # tracking family
client|getname                allow  allow
client|getredir               refuse refuse        # tracking family
client|help                   allow  allow
client|id                     allow  allow
client|info                   allow  allow
client|kill                   refuse refuse        # other clients
client|list                   refuse refuse        # other clients, their last commands
client|no-evict               refuse refuse
client|no-touch               allow  allow  7.2.0  # own connection only
client|pause                  refuse refuse        # stops every client
client|reply                  allow  allow
client|setinfo                allow  allow  7.2.0  # redis-py, go-redis send it on connect
client|setname                allow  allow         # NS8 agents name their connection
client|tracking               refuse refuse        # issue 8.3: BCAST streams written key names
client|trackinginfo           refuse refuse        # tracking family
client|unblock                refuse refuse
client|unpause                refuse refuse
cluster|addslots              refuse refuse
cluster|addslotsrange         refuse refuse
cluster|bumpepoch             refuse refuse
cluster|count-failure-reports refuse refuse
cluster|countkeysinslot       refuse refuse
cluster|delslots              refuse refuse
cluster|delslotsrange         refuse refuse
cluster|failover              refuse refuse
cluster|flushslots            refuse refuse
cluster|forget                refuse refuse
cluster|getkeysinslot         refuse refuse
cluster|help                  refuse refuse
cluster|info                  refuse refuse
cluster|keyslot               refuse refuse
cluster|links                 refuse refuse
cluster|meet                  refuse refuse
cluster|myid                  refuse refuse
cluster|nodes                 refuse refuse
cluster|replicas              refuse refuse
cluster|replicate             refuse refuse
cluster|reset                 refuse refuse
cluster|saveconfig            refuse refuse
cluster|set-config-epoch      refuse refuse
cluster|setslot               refuse refuse
cluster|shards                refuse refuse
cluster|slaves                refuse refuse
cluster|slots                 refuse refuse
command|count                 refuse refuse
command|docs                  refuse refuse
command|getkeys               refuse refuse
command|getkeysandflags       refuse refuse
command|help                  refuse refuse
command|info                  refuse refuse
command|list                  refuse refuse
config|get                    refuse refuse
config|help                   refuse refuse
config|resetstat              refuse refuse
config|rewrite                refuse refuse
config|set                    refuse refuse        # server configuration
copy                          refuse refuse        # issue 8.2: COPY ... DB n
dbsize                        refuse refuse        # not needed (a count, no names)
debug                         refuse refuse        # also off by enable-debug-command
decr                          allow  allow
decrby                        allow  allow
del                           allow  allow
discard                       allow  allow
dump                          allow  allow         # key-scoped read; NS8 backs up ui_name as DUMP
echo                          allow  allow
eval                          refuse refuse        # scripting: not needed, blocks the server
eval_ro                       refuse refuse
evalsha                       refuse refuse
evalsha_ro                    refuse refuse
exec                          allow  allow
exists                        allow  allow
expire                        allow  allow
expireat                      allow  allow
expiretime                    allow  allow
failover                      refuse refuse
fcall                         refuse refuse
fcall_ro                      refuse refuse
flushall                      refuse refuse        # issue 8.2: wipes every database
flushdb                       refuse refuse        # issue 8.2: wipes the database
function|delete               refuse refuse        # issue 8.2: global function library
function|dump                 refuse refuse
function|flush                refuse refuse        # issue 8.2: global function library
function|help                 refuse refuse
function|kill                 refuse refuse
function|list                 refuse refuse
function|load                 refuse refuse        # issue 8.2: global function library
function|restore              refuse refuse        # issue 8.2: global function library
function|stats                refuse refuse
geoadd                        allow  allow
geodist                       allow  allow
geohash                       allow  allow
geopos                        allow  allow
georadius                     allow  allow
georadius_ro                  allow  allow
georadiusbymember             allow  allow
georadiusbymember_ro          allow  allow
geosearch                     allow  allow
geosearchstore                allow  allow
get                           allow  allow
getbit                        allow  allow
getdel                        allow  allow
getex                         allow  allow
getrange                      allow  allow
getset                        allow  allow
hdel                          allow  allow
hello                         allow  allow         # RESP3 and AUTH on connect
hexists                       allow  allow
hget                          allow  allow
hgetall                       allow  allow
hincrby                       allow  allow
hincrbyfloat                  allow  allow
hkeys                         allow  allow
hlen                          allow  allow
hmget                         allow  allow
hmset                         allow  allow
hrandfield                    allow  allow
hscan                         allow  allow
hset                          allow  allow
hsetnx                        allow  allow
hstrlen                       allow  allow
hvals                         allow  allow
incr                          allow  allow
incrby                        allow  allow
incrbyfloat                   allow  allow
info                          refuse refuse        # clients, replication, keyspace sizes
keys                          refuse refuse        # issue 8.3: key names; blocks the server
lastsave                      refuse refuse
latency|doctor                refuse refuse
latency|graph                 refuse refuse
latency|help                  refuse refuse
latency|histogram             refuse refuse
latency|history               refuse refuse
latency|latest                refuse refuse        # server internals
latency|reset                 refuse refuse
lcs                           allow  allow
lindex                        allow  allow
linsert                       allow  allow
llen                          allow  allow
lmove                         allow  allow
lmpop                         allow  allow
lolwut                        refuse refuse
lpop                          allow  allow
lpos                          allow  allow
lpush                         allow  allow
lpushx                        allow  allow
lrange                        allow  allow
lrem                          allow  allow
lset                          allow  allow
ltrim                         allow  allow
memory|doctor                 refuse refuse
memory|help                   refuse refuse
memory|malloc-stats           refuse refuse
memory|purge                  refuse refuse        # server-wide
memory|stats                  refuse refuse
memory|usage                  refuse refuse        # not needed
mget                          allow  allow
migrate                       refuse refuse        # moves keys to another server
module|help                   refuse refuse
module|list                   refuse refuse
module|load                   refuse refuse
module|loadex                 refuse refuse
module|unload                 refuse refuse
monitor                       refuse refuse        # every command of every client
move                          refuse refuse        # issue 8.2: to another database
mset                          allow  allow
msetnx                        allow  allow
multi                         allow  allow
object|encoding               refuse refuse        # not needed
object|freq                   refuse refuse
object|help                   refuse refuse
object|idletime               refuse refuse
object|refcount               refuse refuse
persist                       allow  allow
pexpire                       allow  allow
pexpireat                     allow  allow
pexpiretime                   allow  allow
pfadd                         allow  allow
pfcount                       allow  allow
pfdebug                       refuse refuse
pfmerge                       allow  allow
pfselftest                    refuse refuse
ping                          allow  allow
psetex                        allow  allow
psubscribe                    refuse allow         # node: cluster events
psync                         refuse allow         # node: NS8 replicas use node credentials
pttl                          allow  allow
publish                       allow  allow
pubsub|channels               refuse refuse        # other users' channel names
pubsub|help                   refuse refuse
pubsub|numpat                 refuse refuse
pubsub|numsub                 refuse refuse        # other users' channel names
pubsub|shardchannels          refuse refuse
pubsub|shardnumsub            refuse refuse
punsubscribe                  refuse allow
quit                          allow  allow
randomkey                     refuse refuse        # issue 8.3: key names, private/* too
readonly                      refuse refuse
readwrite                     refuse refuse
rename                        allow  allow
renamenx                      allow  allow
replconf                      refuse allow         # node: NS8 replicas use node credentials
replicaof                     refuse refuse
reset                         allow  allow
restore                       refuse refuse        # crafted payloads; not needed
restore-asking                refuse refuse
role                          refuse refuse
rpop                          allow  allow
rpoplpush                     allow  allow
rpush                         allow  allow
rpushx                        allow  allow
sadd                          allow  allow
save                          refuse refuse
scan                          refuse allow         # node: NS8 allows it; a replica has every key
scard                         allow  allow
script|debug                  refuse refuse
script|exists                 refuse refuse
script|flush                  refuse refuse
script|help                   refuse refuse
script|kill                   refuse refuse
script|load                   refuse refuse
sdiff                         allow  allow
sdiffstore                    allow  allow
select                        refuse refuse        # issue 8.2: SELECT 9 then writes
set                           allow  allow
setbit                        allow  allow
setex                         allow  allow
setnx                         allow  allow
setrange                      allow  allow
shutdown                      refuse refuse
sinter                        allow  allow
sintercard                    allow  allow
sinterstore                   allow  allow
sismember                     allow  allow
slaveof                       refuse refuse
slowlog|get                   refuse refuse        # other clients' commands and key names
slowlog|help                  refuse refuse
slowlog|len                   refuse refuse
slowlog|reset                 refuse refuse
smembers                      allow  allow
smismember                    allow  allow
smove                         allow  allow
sort                          refuse refuse        # BY/GET read keys by pattern
sort_ro                       refuse refuse        # BY/GET read keys by pattern
spop                          allow  allow
spublish                      refuse refuse
srandmember                   allow  allow
srem                          allow  allow
sscan                         allow  allow
ssubscribe                    refuse refuse
strlen                        allow  allow
subscribe                     refuse allow         # node: the gateway follows cluster events
substr                        allow  allow
sunion                        allow  allow
sunionstore                   allow  allow
sunsubscribe                  refuse refuse
swapdb                        refuse refuse        # issue 8.2: SWAPDB 0 9 empties DB 0
sync                          refuse refuse
time                          refuse refuse
touch                         allow  allow
ttl                           allow  allow
type                          allow  allow
unlink                        allow  allow
unsubscribe                   refuse allow
unwatch                       allow  allow
wait                          refuse refuse        # not needed
watch                         allow  allow
xack                          allow  allow
xadd                          allow  allow
xautoclaim                    allow  allow
xclaim                        allow  allow
xdel                          allow  allow
xgroup|create                 allow  allow
xgroup|createconsumer         allow  allow
xgroup|delconsumer            allow  allow
xgroup|destroy                allow  allow
xgroup|help                   refuse refuse
xgroup|setid                  allow  allow
xinfo|consumers               allow  allow
xinfo|groups                  allow  allow
xinfo|help                    refuse refuse
xinfo|stream                  allow  allow
xlen                          allow  allow
xpending                      allow  allow
xrange                        allow  allow
xread                         allow  allow
xreadgroup                    allow  allow
xrevrange                     allow  allow
xsetid                        allow  allow
xtrim                         allow  allow
zadd                          allow  allow
zcard                         allow  allow
zcount                        allow  allow
zdiff                         allow  allow
zdiffstore                    allow  allow
zincrby                       allow  allow
zinter                        allow  allow
zintercard                    allow  allow
zinterstore                   allow  allow
zlexcount                     allow  allow
zmpop                         allow  allow
zmscore                       allow  allow
zpopmax                       allow  allow
zpopmin                       allow  allow
zrandmember                   allow  allow
zrange                        allow  allow
zrangebylex                   allow  allow
zrangebyscore                 allow  allow
zrangestore                   allow  allow
zrank                         allow  allow
zrem                          allow  allow
zremrangebylex                allow  allow
zremrangebyrank               allow  allow
zremrangebyscore              allow  allow
zrevrange                     allow  allow
zrevrangebylex                allow  allow
zrevrangebyscore              allow  allow
zrevrank                      allow  allow
zscan                         allow  allow
zscore                        allow  allow
zunion                        allow  allow
zunionstore                   allow  allow
"""


def parse(text: str) -> dict[str, Decision]:
    """The table as ``{name: Decision}``; malformed or duplicate lines raise ``ValueError``."""
    verdicts = {"allow": True, "refuse": False}
    table: dict[str, Decision] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) not in (3, 4) or line[1] not in verdicts or line[2] not in verdicts:
            raise ValueError(f"line {number}: expected 'name allow|refuse allow|refuse [x.y.z]'")
        name = line[0]
        if name in table:
            raise ValueError(f"line {number}: {name} is listed twice")
        since = None
        if len(line) == 4:
            major, minor, patch = (int(part) for part in line[3].split("."))
            since = (major, minor, patch)
        table[name] = Decision(verdicts[line[1]], verdicts[line[2]], since)
    return table


COMMANDS = parse(TABLE)
