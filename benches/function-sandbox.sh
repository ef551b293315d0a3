#!/usr/bin/env bash
# Start-up cost of one function run (docs/decisions/0015-functions-on-put-in-bubblewrap.md):
# the sandbox tidegate builds for a function on PUT (prlimit + bwrap, the flags of
# src/gateway/import/functions/sandbox.rs) against a bare exec and against bare namespaces
# (unshare), each around /bin/true and around `python3 -c pass`. Prints the mean per run in ms.
#
# Usage: benches/function-sandbox.sh [runs, default 200]
set -euo pipefail
N=${1:-200}
for t in bwrap prlimit unshare python3; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install bubblewrap util-linux python3)" >&2; exit 1; }
done
links=()
for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ]; then links+=(--symlink "$(readlink "/$d")" "/$d");
    elif [ -d "/$d" ]; then links+=(--ro-bind "/$d" "/$d"); fi
done
etc=()
for f in /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d /etc/alternatives /etc/localtime \
    /etc/passwd /etc/group /etc/nsswitch.conf; do etc+=(--ro-bind-try "$f" "$f"); done
SANDBOX=(prlimit --cpu=30 --as=268435456 --core=0 -- bwrap --unshare-all --unshare-user
    --die-with-parent --new-session --cap-drop ALL --uid 65534 --gid 65534
    --hostname tidegate-function --ro-bind /usr /usr "${links[@]}" "${etc[@]}"
    --proc /proc --dev /dev --size 268435456 --tmpfs /tmp --remount-ro /dev --remount-ro /
    --chdir /tmp --)
NS=(unshare --user --map-root-user --net --mount --pid --ipc --uts --fork --)
PY=(/usr/bin/python3 -c pass)
mean_ms() {
    local start end
    start=$(date +%s%N)
    for _ in $(seq "$N"); do "$@" </dev/null >/dev/null; done
    end=$(date +%s%N)
    echo "scale=2; ($end - $start) / $N / 1000000" | bc
}
printf '%-34s %8s\n' "runs of $N, load $(cut -d' ' -f1 /proc/loadavg)" "ms/run"
printf '%-34s %8s\n' "exec /bin/true" "$(mean_ms /bin/true)"
printf '%-34s %8s\n' "unshare (namespaces only) true" "$(mean_ms "${NS[@]}" /bin/true)"
printf '%-34s %8s\n' "tidegate sandbox /bin/true" "$(mean_ms "${SANDBOX[@]}" /bin/true)"
printf '%-34s %8s\n' "exec python3 -c pass" "$(mean_ms "${PY[@]}")"
printf '%-34s %8s\n' "tidegate sandbox python3 -c pass" "$(mean_ms "${SANDBOX[@]}" "${PY[@]}")"
