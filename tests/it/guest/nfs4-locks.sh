# Lock steps for the NFSv4.1 mount (spliced into guest/nfs.sh in place of its last step).
# Linux sends flock(1) on NFSv4 as a whole-file LOCK, so these are locks the host's own
# NFSv4.1 client (a second client id) meets.
# The host holds a write lock on host.lock: a non-blocking attempt fails...
step busy sh -c 'flock -n -x /mnt/host.lock true; echo $?'
touch /mnt/busy-checked
# ...and a waiting one gets it once the host stops renewing and its lease runs out.
step wait-for-expiry flock -w 300 -x /mnt/host.lock true
# The guest holds a lock the host's LOCKT must see, then lets it go at close.
: >/mnt/guest.lock
step hold flock -x /mnt/guest.lock sh -c 'touch /mnt/guest-held; sleep 20'
touch /mnt/guest-released
sleep 5
step final-umount umount /mnt
