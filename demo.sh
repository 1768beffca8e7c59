#!/bin/sh
# make demo: the VM lock manager's story on one machine, two "hosts".
#
# A lockspace is formatted with mklockspace in a lease dir that both hosts share
# (as on NFS), two diskpaxos daemons start (host_id 1 and 2), a VM starts on
# host 1 with a disk, a second start of the same disk is refused on host 1 and
# on host 2 (saying who holds it), the VM stops, and host 2 runs it.  Real QEMU
# (KVM, else TCG) when installed; otherwise a stand-in process, labelled as such.
# Everything started here is stopped by pid on exit.  DEMO_STAND_IN=1 forces the stand-in.
set -eu
DISKPAXOS=${DISKPAXOS:-diskpaxos}
MKLOCKSPACE=${MKLOCKSPACE:-mklockspace}
rm -rf demo
mkdir -p demo/sanlock
top=$(cd demo && pwd)
pids=""
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for pid in $pids; do
        n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

if [ -z "${DEMO_STAND_IN:-}" ] && command -v qemu-system-x86_64 >/dev/null 2>&1; then
    accel=tcg; [ -w /dev/kvm ] && accel=kvm
    QEMU="qemu-system-x86_64 -accel $accel -machine q35 -m 64 -nodefaults -display none"
    echo "== using real QEMU ($accel)"
else
    cat > demo/stand-in-qemu <<'STANDIN'
#!/bin/sh
# STAND-IN for qemu-system-x86_64 (QEMU is not installed): holds nothing open, just lives.
exec sleep 3600
STANDIN
    chmod +x demo/stand-in-qemu
    QEMU="$top/stand-in-qemu"
    echo "== QEMU is not installed (or DEMO_STAND_IN is set): the VMs below are a STAND-IN process ($QEMU), not QEMU"
fi

disk="$top/vm-disk.img"
truncate -s 16M "$disk"

echo
echo "== mklockspace: the lockspace __LIBVIRT__DISKS__ in the shared lease dir (io_timeout 1 for the demo)"
"$MKLOCKSPACE" "$top/sanlock/__LIBVIRT__DISKS__" --name __LIBVIRT__DISKS__ --size 1M --io-timeout 1

for h in 1 2; do
    printf 'io_timeout = 1\n' > "demo/daemon$h.toml"
    cat > "demo/qemu$h.conf" <<CONF
# qemu-sanlock.conf keys, as libvirt's
host_id = $h
auto_disk_leases = 1
disk_lease_dir = "$top/sanlock"
io_timeout = 1
CONF
    "$DISKPAXOS" daemon --run-dir "$top/run$h" --config "demo/daemon$h.toml" 2>"demo/daemon$h.log" &
    pids="$pids $!"
done
for h in 1 2; do
    n=0; until "$DISKPAXOS" client status --run-dir "$top/run$h" >/dev/null 2>&1; do
        n=$((n + 1)); [ $n -lt 200 ] || { echo "daemon $h did not start" >&2; cat "demo/daemon$h.log" >&2; exit 1; }
        sleep 0.05
    done
done
echo
echo "== two hosts' daemons run: host 1 ($top/run1) and host 2 ($top/run2)"

vm_run() {  # host, name, then QEMU's arguments
    h=$1; name=$2; shift 2
    # shellcheck disable=SC2086
    "$DISKPAXOS" vm run --config "demo/qemu$h.conf" --run-dir "$top/run$h" --name "$name" -- $QEMU "$@"
}
vm_start() {  # as vm_run, in the background; sets $vm to the pid (vm run becomes QEMU in that pid)
    h=$1; name=$2; shift 2
    # shellcheck disable=SC2086
    "$DISKPAXOS" vm run --config "demo/qemu$h.conf" --run-dir "$top/run$h" --name "$name" -- $QEMU "$@" \
        >"demo/$name-host$h.log" 2>&1 &
    vm=$!
    pids="$pids $vm"
}
wait_held() {  # host, pid
    n=0; until "$DISKPAXOS" vm status --json --run-dir "$top/run$1" | grep -q "\"pid\": $2"; do
        n=$((n + 1)); [ $n -lt 600 ] || { echo "the VM did not get its lease" >&2; exit 1; }
        kill -0 "$2" 2>/dev/null || { echo "the VM exited" >&2; exit 1; }
        sleep 0.05
    done
}

echo
echo "== host 1: diskpaxos vm run --name web -- QEMU -drive file=$disk ..."
vm_start 1 web -drive "file=$disk,if=virtio,format=raw"
web=$vm
wait_held 1 "$web"
"$DISKPAXOS" vm status --run-dir "$top/run1"

echo
echo "== host 1 again, another VM with the same disk: refused before QEMU starts"
if vm_run 1 web-copy -drive "file=$disk,if=virtio,format=raw"; then
    echo "unexpected: the second start was allowed" >&2; exit 1
fi

echo
echo "== host 2, the same disk: refused, naming the host that holds it"
if vm_run 2 web -drive "file=$disk,if=virtio,format=raw"; then
    echo "unexpected: the start on host 2 was allowed" >&2; exit 1
fi

lease=$(ls "$top/sanlock" | grep -v __LIBVIRT__DISKS__)
echo
echo "== the disk's lease on storage (named by the MD5 of the disk path, as libvirt names it)"
"$DISKPAXOS" direct dump "$top/sanlock/$lease"

echo
echo "== stop the VM on host 1"
kill "$web"
n=0; while kill -0 "$web" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done

echo
echo "== host 2: the same VM now starts"
vm_start 2 web -drive "file=$disk,if=virtio,format=raw"
wait_held 2 "$vm"
"$DISKPAXOS" vm status --run-dir "$top/run2"
echo
echo "demo done: leases, daemons and VMs are stopped on exit; files stay in demo/"
