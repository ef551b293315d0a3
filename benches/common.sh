# Sourced by the benchmark scripts (from the repository root): what they all need.

# Fails loudly naming the first missing tool.
need() {
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "missing $t: run ./scripts/test first" >&2; exit 1; }
    done
}

# Builds the release binary and sets BIN to it (into $CARGO_TARGET_DIR when set), or uses
# $TIDEGATE_BIN when set: another build, e.g. to measure before and after a change.
release_bin() {
    if [ -n "${TIDEGATE_BIN:-}" ]; then
        BIN=$TIDEGATE_BIN
        return
    fi
    cargo build --release -q
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/tidegate
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Stops the tgtd started as TGT_PID on control port CTL, if any: tgtd -f does not stop on
# SIGTERM while its target exists, so ask it, then make sure.
stop_tgt() {
    if [ -n "${TGT_PID:-}" ]; then
        tgtadm -C "$CTL" --op delete --mode system >/dev/null 2>&1 || true
        sleep 0.5
        kill -9 "$TGT_PID" 2>/dev/null || true
    fi
}
