#!/bin/sh
# dom0 as the frontend with xen-hcd-sg (tests/xen-hcd/xen-hcd-sg.patch, v2: split SG URBs of up
# to 1 MiB over several usbif requests, refill the ring from the response path). Run as
#   cargo xtask e2e --file /tmp/sgb/xen-hcd-sg.ko:guest/xen-hcd-sg.ko \
#       --script tests/xen/sg-frontend.sh --timeout 600
# (the module built out of tree as in xtask's build_xen_hcd, from the pristine xen-hcd.c + the
# patch). Checks, one line each ("SG-CHECK PASS|FAIL <name>"):
#   sha256 of the whole stick with dd bs=1M iflag=direct (max_sectors 2048, i.e. 1 MiB SCSI
#   commands) and bs=64k; a 4 MiB O_DIRECT write in the middle reads back, the original bytes
#   are restored and the whole stick matches the image again; no xen-hcd errors in dmesg.
# Measures ("SG-MEASURE <name> <value>"): dd bs=1M iflag=direct MiB/s, three passes, with
# max_sectors 2048 and with the default; reads per pass from /sys/block/sdX/stat. The 11 s
# pauses let usbdom's 10 s statistics lines ("backend: loop:") cover one phase each.
. /tests/lib.sh
FE=0
fails=0
pass() { echo "SG-CHECK PASS $1"; }
fail() { echo "SG-CHECK FAIL $1: $2"; fails=$((fails + 1)); }
M() { echo "SG-MEASURE $1 $2"; }
sd_disks() { ls /sys/block 2>/dev/null | grep '^sd' | sort; }
DISK=""
new_disk() {
  DISK=$(sd_disks | head -1)
  [ -n "$DISK" ] && [ -b /dev/$DISK ] && [ "$(cat /sys/block/$DISK/size)" != 0 ]
}
secs_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN{printf "%.3f", b-a}'; }
# reads completed and sectors read of the disk (/sys/block/sdX/stat fields 1 and 3)
rstat() { awk '{ print $1, $3 }' /sys/block/$DISK/stat; }
queue() {
  xt "queue ($1): max_sectors_kb=$(cat /sys/block/$DISK/queue/max_sectors_kb)" \
    "max_hw_sectors_kb=$(cat /sys/block/$DISK/queue/max_hw_sectors_kb)" \
    "max_segments=$(cat /sys/block/$DISK/queue/max_segments)" \
    "device/max_sectors=$(cat /sys/block/$DISK/device/max_sectors)"
}
# whole-device sha256 with dd bs=$1 O_DIRECT
devsum() { timeout 300 dd if=/dev/$DISK bs=$1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }
check_sum() {
  local s
  s=$(devsum $2)
  [ "$s" = "$XT_STICK_SHA256" ] && pass "$1" || fail "$1" "sha256 $s, the image is $XT_STICK_SHA256"
}
# timing TAG: three whole-device passes of dd bs=1M iflag=direct
timing() {
  local i t0 secs r0 r1 out tot=0
  bytes=$(($(cat /sys/block/$DISK/size) * 512))
  for i in 1 2 3; do
    r0=$(rstat)
    t0=$(uptime_s)
    out=$(timeout 300 dd if=/dev/$DISK of=/dev/null bs=1M iflag=direct 2>&1) || fail "$1-dd$i" "$out"
    secs=$(secs_since $t0)
    r1=$(rstat)
    M "$1-pass$i-mib-s" "$(awk -v b=$bytes -v s=$secs 'BEGIN { if (s > 0) printf "%.2f", b / 1048576 / s; else print "inf" }')"
    xt "$1 pass $i: ${secs}s; dd: $(echo "$out" | tail -1); reads/sectors before $r0 after $r1" \
      "($(echo "$r0 $r1" | awk '{ n = $3 - $1; if (n) printf "%d reads, %.0f KiB each", n, ($4 - $2) / 2 / n }'))"
    tot=$(awk -v a=$tot -v b=$secs 'BEGIN { print a + b }')
  done
  # /proc/uptime counts in 10 ms: the three passes together are the steadier figure
  M "$1-all3-mib-s" "$(awk -v b=$bytes -v s=$tot 'BEGIN { if (s > 0) printf "%.2f", 3 * b / 1048576 / s; else print "inf" }')"
}

for m in usbcore usb-storage sd_mod; do timeout 30 modprobe $m || xt "modprobe $m failed"; done
if timeout 30 insmod /guest/xen-hcd-sg.ko; then
  pass insmod
  xt "module: $(modinfo -F description /guest/xen-hcd-sg.ko 2>/dev/null)"
else
  fail insmod "insmod /guest/xen-hcd-sg.ko failed"; dmesg | tail -5; exit 1
fi
wait_for 30 xt_find_devs || { fail list "usbdom list shows no stick"; exit 1; }
out=$(timeout 30 usbdom create-controller $FE --ports 1 --version 2 --wait 2>&1) ||
  { fail create-controller "$out"; exit 1; }
if ! { timeout 30 usbdom attach $FE 1 "$STICK" --wait >/tmp/attach.out 2>&1 && wait_for 60 new_disk; }; then
  fail attach "$(cat /tmp/attach.out)"; dmesg | tail -20; exit 1
fi
xt "/dev/$DISK: $(cat /sys/block/$DISK/size) sectors"
dmesg > /tmp/dmesg.attach
queue default

# Default max_sectors (240: 120 KiB commands, two requests each).
sleep 11
timing default
check_sum sha256-default-1M 1M

# 1 MiB SCSI commands: one URB of 1 MiB, 18 usbif requests.
echo 2048 > /sys/block/$DISK/device/max_sectors || xt "setting max_sectors failed"
queue "max_sectors 2048"
check_sum sha256-1M 1M
check_sum sha256-64k 64k

# A 4 MiB O_DIRECT write of known data at 6 MiB, read back, then the original bytes restored.
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/dev/$DISK of=/tmp/orig bs=1M skip=6 count=4 iflag=direct 2>/dev/null
pat=$(sha256sum < /tmp/pat | cut -d' ' -f1)
if out=$(timeout 120 dd if=/tmp/pat of=/dev/$DISK bs=1M seek=6 count=4 oflag=direct conv=notrunc 2>&1); then
  back=$(timeout 120 dd if=/dev/$DISK bs=1M skip=6 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
  [ "$back" = "$pat" ] && pass write-1M || fail write-1M "read back $back, wrote $pat"
  back=$(timeout 120 dd if=/dev/$DISK bs=64k skip=96 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
  [ "$back" = "$pat" ] && pass write-readback-64k || fail write-readback-64k "read back $back, wrote $pat"
else
  fail write-1M "$out"
fi
timeout 120 dd if=/tmp/orig of=/dev/$DISK bs=1M seek=6 count=4 oflag=direct conv=notrunc 2>/dev/null ||
  fail restore "dd failed"
check_sum sha256-restored 1M

sleep 11
timing max2048
sleep 11

# No errors from the frontend, usb-storage or the block layer since the disk appeared.
dmesg > /tmp/dmesg.end
new=$(awk 'NR == FNR { seen[$0] = 1; next } !($0 in seen)' /tmp/dmesg.attach /tmp/dmesg.end)
bad=$(echo "$new" | grep -iE 'xen-hcd|xenhcd|xen_hcd|error|reset|fail|timeout|abort' )
bad_all=$(grep -iE 'xenhcd|xen-hcd: protocol|grants' /tmp/dmesg.end)
if [ -z "$bad$bad_all" ]; then pass dmesg; else fail dmesg "$(echo "$bad $bad_all" | head -20)"; fi
grep -iE 'xen|usb|sd[a-z]' /tmp/dmesg.end | tail -15 | sed 's/^/XT:   dmesg: /'

# Unplug under load: detach while 1 MiB reads run (split URBs answered with errors and dequeued
# with parts in flight), no oops or protocol error; then re-attach and read the stick again.
dmesg > /tmp/dmesg.before-unplug
( while timeout 60 dd if=/dev/$DISK of=/dev/null bs=1M iflag=direct 2>/dev/null; do :; done ) &
loop=$!
sleep 1
timeout 30 usbdom detach $FE 1 >/dev/null 2>&1 || xt "detach failed"
no_disk() { [ -z "$(sd_disks)" ]; }
wait_for 30 no_disk && pass unplug-disk-gone || fail unplug-disk-gone "/dev/$DISK still there"
wait_for 30 sh -c "! kill -0 $loop 2>/dev/null" || { xt "read loop still running"; kill $loop; }
dmesg > /tmp/dmesg.unplug
new=$(awk 'NR == FNR { seen[$0] = 1; next } !($0 in seen)' /tmp/dmesg.before-unplug /tmp/dmesg.unplug)
echo "$new" | tail -12 | sed 's/^/XT:   unplug dmesg: /'
bad=$(echo "$new" | grep -E 'BUG|Oops|WARNING|protocol error|release grant|Call Trace')
[ -z "$bad" ] && pass unplug-dmesg || fail unplug-dmesg "$(echo "$bad" | head -10)"
if timeout 30 usbdom attach $FE 1 "$STICK" --wait >/tmp/attach.out 2>&1 && wait_for 60 new_disk; then
  echo 2048 > /sys/block/$DISK/device/max_sectors
  check_sum sha256-after-replug 1M
else
  fail replug "$(cat /tmp/attach.out)"
fi

timeout 30 usbdom detach $FE 1 >/dev/null 2>&1 || xt "detach failed"
timeout 30 usbdom remove-controller $FE >/dev/null 2>&1 || xt "remove-controller failed"
# Every URB was given back: the HC goes away and the module unloads.
sleep 2
timeout 30 rmmod xen_hcd_sg && pass rmmod || fail rmmod "rmmod xen_hcd_sg failed"
xt "sg-frontend done: $fails failed"
exit $fails
