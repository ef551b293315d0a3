#!/bin/sh
# Runs in the NFS-client guest as /test.sh for benches/nfs4.sh (which fills in the @NAMES@):
# mounts the three targets side by side with the kernel's NFS client, then runs each workload
# on the three in turn (the order rotates from one workload to the next), so load from elsewhere
# on the host hits them alike. Prints `== RESULT WORKLOAD TARGET VALUE [EXTRA]` lines, the
# mount's per-operation counters from /proc/self/mountstats before and after each run, and
# `== MARK BEGIN|END` around each run (the host reads the servers' CPU times as they appear),
# for the host to read (markers from tests/it/guest/steps.sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

. /steps.sh

SIZE_MIB=@SIZE_MIB@
RAND_SECS=@RAND_SECS@
FILES=@FILES@
ROUNDS=@ROUNDS@
SETTLE=@SETTLE@

for m in sunrpc lockd nfs nfsv3 nfsv4; do modprobe "$m" || echo "modprobe $m failed"; done
# The v3 mount's default `lock` wants the client's own rpcbind and rpc.statd, as on any Linux
# client (tidegate answers no NLM; nothing here takes a lock).
rpcbind -w 2>/dev/null || rpcbind
rpc.statd --no-notify
mkdir -p /mnt/tg41 /mnt/tg3 /mnt/ganesha
step mount-tg41 mount -t nfs -o vers=4.1 10.0.2.2:/share /mnt/tg41 || exit 1
# No port options: mount.nfs asks tidegate's rpcbind on port 111 for MOUNT and NFS.
step mount-tg3 mount -t nfs -o vers=3 10.0.2.2:/share /mnt/tg3 || exit 1
step mount-ganesha mount -t nfs -o vers=4.1,port=@GANESHA_PORT@ 10.0.2.2:/share /mnt/ganesha || exit 1
step proc-mounts grep ' /mnt/' /proc/mounts
# tidegate's two mounts are one share: each target works in a directory of its own.
for t in tg41 tg3 ganesha; do mkdir -p /mnt/$t/bench-$t; done

# The small files for the untar, made and packed in guest memory once: 100 files per
# directory, 2-16 KiB by directory (split writes them in one process: a fork per file costs
# milliseconds under TCG).
mkdir -p /src/small
d=0
while [ $d -lt $((FILES / 100)) ]; do
    b=$(((d % 8 + 1) * 2048))
    mkdir /src/small/d$d
    head -c $((b * 100)) /dev/urandom | split -b $b -a 2 -d - /src/small/d$d/f
    d=$((d + 1))
done
tar -C /src -cf /src/small.tar small
nfiles=$(tar -tf /src/small.tar | grep -vc '/$')
echo "== FILES $nfiles $(du -sk --apparent-size /src/small | cut -f1)"

now() { date +%s.%N; }
per_sec() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.2f", n / (b - a) }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The mount's per-operation counters: NAME: ops trans timeouts sent recv queue_ms rtt_ms exec_ms.
opstats() {
    awk -v m="$1" '$1 == "device" { on = ($5 == m) } on && /^[ \t]*[A-Z_0-9]+: / && $2 > 0' \
        /proc/self/mountstats
}

seq_write() { # TARGET DIR
    fio --name=seq-write --filename="$2/seq.bin" --rw=write --bs=1M --size=${SIZE_MIB}M \
        --ioengine=psync --direct=0 --end_fsync=1 --output-format=terse >/dev/null || return 1
}
seq_read() {
    fio --name=seq-read --filename="$2/seq.bin" --rw=read --bs=1M --size=${SIZE_MIB}M \
        --ioengine=psync --direct=0 --output-format=terse >/dev/null || return 1
}
# O_DIRECT: every read goes to the server (no page cache, no read-ahead), 16 in flight.
rand_read() {
    fio --name=rand-read --filename="$2/seq.bin" --rw=randread --bs=4k --size=${SIZE_MIB}M \
        --ioengine=libaio --iodepth=16 --direct=1 --runtime=$RAND_SECS --time_based \
        --output-format=terse >/tmp/fio.out || return 1
    # Terse v3: field 8 is read IOPS, field 40 the mean total latency in microseconds.
    awk -F';' '{ print $8, $40 }' /tmp/fio.out
}
untar() {
    mkdir "$2/untar-$round" && tar -xf /src/small.tar -C "$2/untar-$round" && sync
}

run() { # WORKLOAD TARGET: settle, drop caches, run once, print its result and counters
    w=$1 t=$2 dir=/mnt/$2/bench-$2
    sleep "$SETTLE"
    drop_caches
    opstats /mnt/$t | sed "s/^/== OPS0 $w $t /"
    echo "== MARK BEGIN $w $t"
    t0=$(now)
    out=$($w "$t" "$dir")
    rc=$?
    t1=$(now)
    echo "== MARK END $w $t"
    opstats /mnt/$t | sed "s/^/== OPS1 $w $t /"
    [ $rc = 0 ] || { echo "== FAILED $w $t rc=$rc"; return 1; }
    case $w in
    seq_write | seq_read) echo "== RESULT $w $t $(per_sec "$SIZE_MIB" "$t0" "$t1")" ;;
    rand_read) echo "== RESULT $w $t $out" ;;
    untar) echo "== RESULT $w $t $(per_sec "$nfiles" "$t0" "$t1")" ;;
    esac
}

round=1
while [ $round -le "$ROUNDS" ]; do
    i=0
    for w in seq_write seq_read rand_read untar; do
        case $(((i + round) % 3)) in
        0) order="tg41 tg3 ganesha" ;;
        1) order="tg3 ganesha tg41" ;;
        *) order="ganesha tg41 tg3" ;;
        esac
        for t in $order; do run $w $t || exit 1; done
        i=$((i + 1))
    done
    round=$((round + 1))
done
for t in tg41 tg3 ganesha; do step umount-$t umount /mnt/$t; done
echo "== DONE"
