#!/bin/sh
# make demo: format a lockspace and a resource lease in a file under demo/,
# then show them as sanlock's own tools would.
set -eu
DISKPAXOS=${DISKPAXOS:-diskpaxos}
MKLOCKSPACE=${MKLOCKSPACE:-mklockspace}
mkdir -p demo
img=demo/leases.img
rm -f "$img"

echo "== mklockspace: a 16 MiB lease file with lockspace DEMO at offset 0"
"$MKLOCKSPACE" "$img" --name DEMO --size 16M --io-timeout 1

echo
echo "== diskpaxos direct init -r: resource lease DEMO:vm-disk-1 at offset 1M"
"$DISKPAXOS" direct init -r "DEMO:vm-disk-1:$img:1M"

echo
echo "== formatting over the lockspace with another name is refused"
if "$DISKPAXOS" direct init -s "OTHER:0:$img:0"; then
    echo "unexpected: overwrite was allowed" >&2; exit 1
fi

echo
echo "== diskpaxos direct read-leader -s DEMO:1:$img:0"
"$DISKPAXOS" direct read-leader -s "DEMO:1:$img:0"

echo
echo "== diskpaxos direct dump $img:0:2M"
"$DISKPAXOS" direct dump "$img:0:2M"
if command -v sanlock >/dev/null 2>&1; then
    echo
    echo "== the same bytes through the real sanlock: sanlock direct dump $img:0:2M"
    sanlock direct dump "$img:0:2M"
fi
