#!/bin/sh
# Runs in the tape-client guest (see guest/init.sh) as /test.sh: logs in to tidegate's VTL
# target with open-iscsi, then drives the changer with mtx, a drive with mt-st and tar, and both
# with Bacula's btape. The host substitutes @PORTAL@ and @TARGET@ and reads the markers:
# `== BEGIN x` / `== END x` around command output, `== RC x N` for each step's exit status.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
portal=@PORTAL@
target=@TARGET@

. /steps.sh

for m in crc32c_generic scsi_transport_iscsi iscsi_tcp sg st ch; do modprobe "$m" || echo "modprobe $m failed"; done
mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi /var/lock
echo "InitiatorName=iqn.2026-11.org.tidegate:guest" >/etc/iscsi/initiatorname.iscsi
iscsid || echo "iscsid failed"
sleep 1
step discovery iscsiadm -m discovery -t sendtargets -p "$portal"
step login iscsiadm -m node -T "$target" -p "$portal" --login || exit 1

# The kernel names the devices as the LUNs appear: wait for the drive and the changer.
changer=
i=0
while [ $i -lt 60 ]; do
    for d in /sys/class/scsi_generic/sg*; do
        [ "$(cat "$d/device/type" 2>/dev/null)" = 8 ] && changer=/dev/${d##*/}
    done
    [ -n "$changer" ] && [ -e /dev/nst0 ] && break
    sleep 1; i=$((i + 1))
done
echo "== DEVICES changer=$changer drive=$(ls /dev/nst0 2>/dev/null)"
[ -n "$changer" ] && [ -e /dev/nst0 ] || exit 1
for d in /sys/bus/scsi/devices/*/; do
    [ -e "$d/vendor" ] && echo "scsi ${d%/}: $(cat "$d/type") $(cat "$d/vendor") $(cat "$d/model")"
done

step status1 mtx -f "$changer" status
step load mtx -f "$changer" load 1 0
step status2 mtx -f "$changer" status

# Two tar archives on the tape, each closed by the filemark nst writes on close; read back the
# second after skipping one filemark, then the first from the start.
mkdir -p /tmp/a /tmp/b /tmp/out1 /tmp/out2
head -c 3000000 /dev/urandom >/tmp/a/one.bin
seq 1 50000 >/tmp/a/numbers.txt
head -c 777777 /dev/urandom >/tmp/b/two.bin
step mtstatus mt -f /dev/nst0 status
step rewind1 mt -f /dev/nst0 rewind
step tar1 tar -cf /dev/nst0 -C /tmp/a .
step tar2 tar -cf /dev/nst0 -C /tmp/b .
step rewind2 mt -f /dev/nst0 rewind
step fsf mt -f /dev/nst0 fsf 1
step untar2 tar -xf /dev/nst0 -C /tmp/out2
step rewind3 mt -f /dev/nst0 rewind
step untar1 tar -xf /dev/nst0 -C /tmp/out1
echo "== BEGIN sums"
(cd /tmp/a && sha256sum one.bin numbers.txt | sed 's/^/written /')
(cd /tmp/b && sha256sum two.bin | sed 's/^/written /')
(cd /tmp/out1 && sha256sum one.bin numbers.txt | sed 's/^/read /')
(cd /tmp/out2 && sha256sum two.bin | sed 's/^/read /')
echo "== END sums"
step unload mtx -f "$changer" unload 1 0
step status3 mtx -f "$changer" status

# Bacula: one drive in an autochanger, driven by Debian's mtx-changer.
mkdir -p /var/lib/bacula /run/bacula /etc/bacula
cat >/etc/bacula/bacula-sd.conf <<CONF
Storage {
  Name = guest-sd
  WorkingDirectory = /var/lib/bacula
  Pid Directory = /run/bacula
}
Director {
  Name = guest-dir
  Password = "guest"
}
Autochanger {
  Name = tidegate
  Device = Drive-0
  Changer Device = $changer
  Changer Command = "/etc/bacula/scripts/mtx-changer %c %o %S %a %d"
}
Device {
  Name = Drive-0
  Media Type = LTO-5
  Archive Device = /dev/nst0
  Drive Index = 0
  Autochanger = yes
  AutomaticMount = yes
  AlwaysOpen = yes
  RemovableMedia = yes
  RandomAccess = no
  # btape's test writes and reads 2 x 10,000 blocks; at the default 64,512 bytes that is over
  # ten minutes of TCG, so smaller blocks keep the same checks inside the test's budget.
  Maximum Block Size = 8192
  Changer Device = $changer
  Changer Command = "/etc/bacula/scripts/mtx-changer %c %o %S %a %d"
}
Messages {
  Name = Standard
  console = all
}
CONF
step load2 mtx -f "$changer" load 2 0
printf 'test\nyes\nquit\n' >/tmp/btape-test.in
step btapetest sh -c 'btape -c /etc/bacula/bacula-sd.conf Drive-0 </tmp/btape-test.in'
printf 'autochanger\ny\nquit\n' >/tmp/btape-changer.in
step btapechanger sh -c 'btape -c /etc/bacula/bacula-sd.conf Drive-0 </tmp/btape-changer.in'
step status4 mtx -f "$changer" status
step logout iscsiadm -m node -T "$target" -p "$portal" --logout
