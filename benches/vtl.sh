#!/usr/bin/env bash
# Tape benchmark: tidegate's VTL vs tgt's (Debian's reference target, `--bstype ssc` drive on a
# tgtimg tape file) in the same run, same initiator: our libiscsi client (tests/it/vtl_client.c)
# writes VTL_MIB MiB in 256 KiB variable records, a filemark, rewinds and reads them back.
# Prints MB/s and ratios (tidegate / tgt; higher is better for tidegate).
#
# Usage: benches/vtl.sh [MiB per run, default 1024]   (TIDEGATE_BIN=path runs another build, e.g.
# to measure before and after a change)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
export VTL_MIB=${1:-1024}
need tgtd tgtadm tgtimg cc iscsi-inq
release_bin
WORK=$(mktemp -d)
cleanup() {
    stop_tgt
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/vtl_client" tests/it/vtl_client.c -liscsi


# tgt: one tape drive (LUN 1) with a tape loaded, on a file in the same filesystem.
tgtimg --op new --device-type tape --barcode TGT00001 --size $((VTL_MIB * 2)) --type data \
    --file "$WORK/tape.img" --thin-provisioning >/dev/null
start_tgt bench-vtl "$WORK/tgtd.log" --device-type tape --bstype ssc -b "$WORK/tape.img"
TGT_URL="$TGT_BASE"

# tidegate: embedded default (local-directory bucket), one tape.
DATA=$WORK/tidegate
"$BIN" --data-dir "$DATA" tape create --barcode-prefix BNC --size 100GiB >/dev/null
"$BIN" --data-dir "$DATA" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --nfs-listen 127.0.0.1:0 >"$WORK/tidegate.log" 2>&1 &
TG_PID=$!
for _ in $(seq 300); do [ -f "$DATA/run/ready.toml" ] && break; sleep 0.1; done
PORTAL=$(sed -n 's/^iscsi = "\(.*\)"/\1/p' "$DATA/run/ready.toml")
TG_URL="iscsi://$PORTAL/iqn.2026-11.org.tidegate:tidegate:vtl"
for _ in $(seq 100); do iscsi-inq "$TG_URL/0" >/dev/null 2>&1 && break; sleep 0.1; done

TGT_OUT=$(VTL_LUN=1 "$WORK/vtl_client" "$TGT_URL" bench)
TG_OUT=$("$WORK/vtl_client" "$TG_URL" bench)
val() { echo "$1" | sed -n "s/^$2 //p"; }
printf '%-34s %10s %10s %8s\n' "workload (${VTL_MIB} MiB, 256 KiB records)" "tgt MB/s" "tidegate" "ratio"
for w in write read; do
    t=$(val "$TGT_OUT" ${w}_mbps); g=$(val "$TG_OUT" ${w}_mbps)
    printf '%-34s %10s %10s %8.2f\n' "tape $w" "$t" "$g" "$(awk -v a="$g" -v b="$t" 'BEGIN{print (b>0)?a/b:0}')"
done
