#!/bin/sh
# NFSv4.1 across a gateway crash (guest side of nfs_v41_kernel_client_reclaims_its_lock_...):
# write and sync a file, take a lock on it and hold it while the host kills the gateway with
# -9 and restarts it; the kernel client reclaims its open and lock in the grace period; then the
# same open file still reads the committed bytes, and the lock is let go at close.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. /steps.sh
for m in sunrpc nfs nfsv4; do modprobe "$m" || echo "modprobe $m failed"; done
mkdir -p /mnt
step mount mount -t nfs 10.0.2.2:/share /mnt || exit 1
head -c 3000000 /dev/urandom >/tmp/data
cp /tmp/data /mnt/journal
sync
# The host waits for `held`, crashes and restarts the gateway, and creates `restarted` once its
# own client found the lock reclaimed.
step hold flock -x /mnt/journal sh -c '
    touch /mnt/held
    while [ ! -e /mnt/restarted ]; do sleep 1; done
    cmp /tmp/data /mnt/journal && echo same'
step final-umount umount /mnt
