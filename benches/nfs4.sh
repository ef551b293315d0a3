#!/usr/bin/env bash
# NFS benchmark through the Linux kernel's NFS client: tidegate's NFSv4.1, tidegate's NFSv3 and
# nfs-ganesha's NFSv4.1 (Debian's nfs-ganesha 4.3 with FSAL VFS, on local disk), all mounted
# side by side in ONE boot of the NFS-client guest (QEMU, TCG; tests/it/guest/), which runs
# the workloads with fio (benches/nfs4-guest.sh):
#   - 1 MiB sequential write of a SIZE_MIB file (buffered, fsync at the end; MiB/s including it)
#   - 1 MiB sequential read of it (buffered, guest page cache dropped first; MiB/s)
#   - 4 KiB random read of it (O_DIRECT, libaio, 16 in flight, RAND_SECS seconds; IOPS)
#   - untar of FILES small files of 2-16 KiB (tar -x, then sync; files/s)
# Each workload runs on the three targets in turn (the order rotates between workloads), after
# a SETTLE-second pause and a drop of the guest's page cache; the host's page cache is left
# alone, so both servers read back recently written data from memory.
#
# tidegate runs on the embedded default (no config: a local-directory bucket on the same disk
# as ganesha's export), with NFS on 127.0.0.1:2049 and rpcbind on port 111, so the v3 mount
# needs no port options. Both ports must be free. ganesha listens on a free port of its own.
#
# The guest is emulated (TCG): absolute figures are the emulator's; compare the ratios. Target
# (issue 17): tidegate v4.1 >= 0.8x ganesha v4.1 on every line. Nothing here asserts on speed.
#
# Usage: benches/nfs4.sh  (as root; SIZE_MIB=256 RAND_SECS=20 FILES=5000 ROUNDS=1 SETTLE=5;
#        TIDEGATE_BIN=path runs that binary instead of building this tree)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
# The defaults (see Usage); LIMIT bounds the guest's run in seconds.
: "${SIZE_MIB:=256}" "${RAND_SECS:=20}" "${FILES:=5000}" "${ROUNDS:=1}" "${SETTLE:=5}" "${LIMIT:=3600}"
need qemu-system-x86_64 ganesha.nfsd debootstrap dpkg-deb cpio apt-get python3 ss sha256sum timeout
[ "$(id -u)" = 0 ] || { echo "run as root: port 111, and the guest build chroots" >&2; exit 1; }
for p in 111 2049; do
    if ss -Hltn "sport = :$p" | grep -q .; then
        echo "port $p is in use (another gateway or test?): tidegate needs it here" >&2
        exit 1
    fi
done
release_bin
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

# --- the guest: the NFS-client test guest plus fio, built once, cached by its recipe --------
# The test image stays without fio (its dependencies, Ceph and Gluster libraries and python3,
# would add to every test boot); the package and module lists are the test guest's own files.
GUEST=tests/it/guest
PACKAGES="$(tr -d '\n' <$GUEST/nfs.packages),fio"
MODULES=$(tr -d '\n' <$GUEST/nfs.modules)
key=$(cat <(echo "$PACKAGES") <(echo "$MODULES") $GUEST/build.sh $GUEST/init.sh | sha256sum | cut -c1-16)
IMAGE=$TARGET_DIR/guest/nfs-bench/$key
if [ ! -f "$IMAGE/root.cpio" ] || [ ! -f "$IMAGE/vmlinuz" ]; then
    echo "building the guest (debootstrap, a few minutes) into $IMAGE" >&2
    rm -rf "$TARGET_DIR/guest/nfs-bench"
    mkdir -p "$TARGET_DIR/guest/nfs-bench"
    PACKAGES=$PACKAGES MODULES=$MODULES INIT=$PWD/$GUEST/init.sh bash $GUEST/build.sh "$IMAGE" >&2
fi

WORK=$(mktemp -d)
cleanup() {
    for p in ${QEMU_PID:-} ${TG_PID:-} ${GANESHA_PID:-}; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- tidegate, embedded default ------------------------------------------------------------
"$BIN" serve --data-dir "$WORK/tidegate" --nfs-listen 127.0.0.1:2049 --rpcbind on \
    --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 >"$WORK/tidegate.log" 2>&1 &
TG_PID=$!
for _ in $(seq 300); do [ -f "$WORK/tidegate/run/ready.toml" ] && break; sleep 0.1; done
[ -f "$WORK/tidegate/run/ready.toml" ] || { cat "$WORK/tidegate.log" >&2; exit 1; }

# --- nfs-ganesha, NFSv4 only, FSAL VFS on a directory on the same disk ----------------------
GANESHA_PORT=$(free_port)
mkdir -p "$WORK/ganesha/export" "$WORK/ganesha/recovery"
ganesha_config "$WORK/ganesha/ganesha.conf" "$WORK/ganesha/export" "$WORK/ganesha/recovery" 4 \
    "    NFS_Port = $GANESHA_PORT;
    Bind_addr = 127.0.0.1;"
ganesha.nfsd -F -f "$WORK/ganesha/ganesha.conf" -L "$WORK/ganesha/ganesha.log" \
    -p "$WORK/ganesha/ganesha.pid" -N NIV_WARN &
GANESHA_PID=$!
for _ in $(seq 300); do ss -Hltn "sport = :$GANESHA_PORT" | grep -q . && break; sleep 0.1; done
ss -Hltn "sport = :$GANESHA_PORT" | grep -q . || { cat "$WORK/ganesha/ganesha.log" >&2; exit 1; }

# --- one guest boot runs every workload ----------------------------------------------------
sed -e "s/@SIZE_MIB@/$SIZE_MIB/; s/@RAND_SECS@/$RAND_SECS/; s/@FILES@/$FILES/" \
    -e "s/@ROUNDS@/$ROUNDS/; s/@SETTLE@/$SETTLE/; s/@GANESHA_PORT@/$GANESHA_PORT/" \
    benches/nfs4-guest.sh >"$WORK/test.sh"
cp $GUEST/steps.sh "$WORK/steps.sh"
chmod 755 "$WORK/test.sh"
cp "$IMAGE/root.cpio" "$WORK/initrd.cpio"
# A second archive after the root: the kernel unpacks concatenated cpio archives in order.
(cd "$WORK" && printf 'test.sh\nsteps.sh\n' | cpio -o -H newc -R 0:0 --quiet) >>"$WORK/initrd.cpio"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TG_CPU0=$(cpu_of $TG_PID) GA_CPU0=$(cpu_of $GANESHA_PID)
STARTED=$EPOCHSECONDS
echo "booting the guest (TCG: 6-7 minutes a round at the default sizes), load average $LOAD_BEFORE" >&2
timeout "$LIMIT" qemu-system-x86_64 -machine q35,accel=tcg -display none -no-reboot \
    -serial "file:$WORK/serial.log" -m 3072 -smp 2 -kernel "$IMAGE/vmlinuz" \
    -initrd "$WORK/initrd.cpio" -append "console=ttyS0 rdinit=/init panic=-1 loglevel=4" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 &
QEMU_PID=$!
# Both servers' CPU times as each of the guest's MARK lines reaches the serial log (within
# the 10 ms ticks of /proc), and what tidegate has read from its bucket (its status figures,
# up to a second old): what each run cost the server, read on the host's clock.
bucket_reads() { "$BIN" --data-dir "$WORK/tidegate" status | sed -n 's/.*, \([0-9.]* [KMGT]*i*B\) read from the bucket.*/\1/p'; }
tail -n +1 -F --pid=$QEMU_PID "$WORK/serial.log" 2>/dev/null | while IFS= read -r line; do
    case $line in
    "== MARK "*) echo "${line%$'\r'} $(cpu_of $TG_PID) $(cpu_of $GANESHA_PID) $(bucket_reads)" ;;
    esac
done >"$WORK/marks.txt" &
MARKS_PID=$!
wait $QEMU_PID || true
wait $MARKS_PID || true
QEMU_PID=
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
TG_CPU=$(awk -v a="$TG_CPU0" -v b="$(cpu_of $TG_PID)" 'BEGIN { printf "%.1f", b - a }')
GA_CPU=$(awk -v a="$GA_CPU0" -v b="$(cpu_of $GANESHA_PID)" 'BEGIN { printf "%.1f", b - a }')
mkdir -p "$TARGET_DIR/tmp"
cp "$WORK/serial.log" "$TARGET_DIR/tmp/nfs4-bench-serial.log"
tr -d '\r' <"$WORK/serial.log" >"$WORK/serial.txt"
if ! grep -q '^== DONE' "$WORK/serial.txt"; then
    echo "the guest did not finish; serial log in $TARGET_DIR/tmp/nfs4-bench-serial.log:" >&2
    tail -40 "$WORK/serial.txt" >&2
    echo "--- tidegate ---" >&2; tail -20 "$WORK/tidegate.log" >&2
    echo "--- ganesha ---" >&2; tail -20 "$WORK/ganesha/ganesha.log" >&2
    exit 1
fi

# --- report ----------------------------------------------------------------------------------
echo
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); guest run $((EPOCHSECONDS - STARTED)) s (TCG, 2 vCPUs)"
echo "load average before: $LOAD_BEFORE; after: $LOAD_AFTER ($(nproc) cores)"
echo "tidegate: $("$BIN" --version 2>/dev/null || echo "$BIN"), embedded default (local-directory bucket), NFS on 127.0.0.1:2049, rpcbind on 111"
echo "ganesha: $(dpkg-query -W -f '${Version}' nfs-ganesha) FSAL VFS, NFSv4 only, on $WORK (same disk)"
echo "server CPU during the guest run: tidegate ${TG_CPU} s, ganesha ${GA_CPU} s"
python3 - "$WORK/serial.txt" "$SIZE_MIB" "$RAND_SECS" "$WORK/marks.txt" <<'EOF'
import collections, statistics, sys

log, size, secs, marks = sys.argv[1:5]
results = collections.defaultdict(list)  # (workload, target) -> [value]
latency = collections.defaultdict(list)
ops = {}  # (workload, target, 0|1) -> {op: [ops, rtt_ms, exec_ms]}
files = None
for line in open(log, errors="replace"):
    f = line.split()
    if line.startswith("== RESULT "):
        results[f[2], f[3]].append(float(f[4]))
        if len(f) > 5:
            latency[f[2], f[3]].append(float(f[5]))
    elif line.startswith("== OPS0 ") or line.startswith("== OPS1 "):
        # NAME: ops trans timeouts sent recv queue_ms rtt_ms exec_ms [errors]; with ROUNDS > 1
        # the last round's counters are the ones shown.
        key = (f[2], f[3], int(f[1][-1]))
        table = ops.setdefault(key, {})
        table[f[4].rstrip(":")] = [int(f[5]), int(f[10]), int(f[11]), int(f[12])]
    elif line.startswith("== FILES "):
        nfiles = int(f[2])
        files = f"{nfiles} files, {int(f[3]) >> 10} MiB"
# == MARK BEGIN|END WORKLOAD TARGET TIDEGATE_CPU GANESHA_CPU READ_BYTES UNIT: each run's
# server CPU seconds and tidegate's reads from its bucket (the last round's, as the counters).
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
cpu, fetched, begin = {}, {}, {}
for line in open(marks, errors="replace"):
    f = line.split()
    if len(f) == 9 and f[8] in UNITS:
        now = (float(f[6] if f[4] == "ganesha" else f[5]), float(f[7]) * UNITS[f[8]])
        if f[2] == "BEGIN":
            begin[f[3], f[4]] = now
        elif (f[3], f[4]) in begin:
            b = begin[f[3], f[4]]
            cpu[f[3], f[4]] = now[0] - b[0]
            fetched[f[3], f[4]] = now[1] - b[1]

targets = ["tg41", "tg3", "ganesha"]
lines = [
    ("seq_write", f"1 MiB seq write, {size} MiB (MiB/s)"),
    ("seq_read", f"1 MiB seq read, {size} MiB (MiB/s)"),
    ("rand_read", f"4 KiB rand read, QD16 {secs}s (IOPS)"),
    ("untar", f"untar {files} (files/s)"),
]
print(f"\n{'higher is better':40} {'tg v4.1':>9} {'tg v3':>9} {'ganesha':>9} {'v4.1/gan':>9} {'v4.1/v3':>8}")
missed = []
per_round = []
for w, label in lines:
    v = {t: statistics.mean(results[w, t]) for t in targets if results[w, t]}
    if len(v) < 3:
        print(f"{label:40} missing results: {sorted(v)}")
        continue
    # Ratios are taken within a round (the three runs of a workload follow each other, so
    # they share the host's load of that moment), and the line's ratio is their median: one
    # round disturbed by the host does not decide it.
    rounds = [(a / g, a / b) for a, b, g in zip(*(results[w, t] for t in targets))]
    r_gan = statistics.median(r for r, _ in rounds)
    r_v3 = statistics.median(r for _, r in rounds)
    mark = "" if r_gan >= 0.8 else "  < 0.8"
    if mark:
        missed.append(w)
    print(f"{label:40} {v['tg41']:9.1f} {v['tg3']:9.1f} {v['ganesha']:9.1f} {r_gan:9.2f} {r_v3:8.2f}{mark}")
    if len(rounds) > 1:
        per_round.append(f"  {w:9} " + "  ".join(f"{r:.2f}" for r, _ in rounds))
print("target: tidegate v4.1 / ganesha v4.1 >= 0.8 on every line (issue 17)")
if per_round:
    print("figures are means over rounds; ratios the median of each round's ratio; v4.1/gan by round:")
    print("\n".join(per_round))
if latency:
    lat = "  ".join(f"{t} {statistics.mean(latency['rand_read', t]) / 1000:.2f} ms" for t in targets
                    if latency["rand_read", t])
    print(f"4 KiB random read, mean latency at QD16: {lat}")

# Where the time went: each workload's NFS operations on each mount (the guest's mountstats,
# after minus before), the busiest first: count, mean round trip and mean wait in the client
# before sending (slots, congestion), and the server's CPU time over the run.
print("\nper-operation counts, mean round trips and client queueing, busiest first; server CPU:")
for w, _ in lines:
    for t in targets:
        a, b = ops.get((w, t, 0), {}), ops.get((w, t, 1), {})
        rows = []
        for op, (n1, q1, rtt1, ex1) in b.items():
            n0, q0, rtt0, ex0 = a.get(op, [0, 0, 0, 0])
            if n1 > n0:
                n = n1 - n0
                rows.append((ex1 - ex0, op, n, (rtt1 - rtt0) / n, (q1 - q0) / n))
        rows.sort(reverse=True)
        text = ", ".join(f"{op} {n} x {rtt:.2f} ms (queued {q:.2f})" for _, op, n, rtt, q in rows[:4])
        print(f"  {w:9} {t:7} {text}")
        if (w, t) in cpu:
            per, unit = {"untar": (nfiles, "file"), "rand_read": (rows[0][2] if rows else 0, "READ")}.get(
                w, (int(size), "MiB"))
            server = "ganesha" if t == "ganesha" else "tidegate"
            each = f", {cpu[w, t] * 1000 / per:.2f} ms per {unit}" if per else ""
            got = ""
            if t != "ganesha" and fetched.get((w, t), 0) >= 1 << 20:
                got = f"; {fetched[w, t] / (1 << 20):.0f} MiB read from its bucket"
            print(f"  {'':17} {server} CPU {cpu[w, t]:.1f} s{each}{got}")
if missed:
    print(f"\nbelow the 0.8 target: {', '.join(missed)}")
EOF
