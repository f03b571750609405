#!/bin/sh
# PVUSB with the scatter-gather frontend: dom0 loads /guest/xen-hcd-sg.ko (xen-hcd.c +
# tests/xen-hcd/xen-hcd-sg.patch, built by xtask) instead of xen-hcd and is usbdom's frontend.
# Run as the user script of `cargo xtask e2e --script tests/xen/pvusb-sg.sh` (after e2e.sh's xt_up).
# Checks: the queue limits the SG module gives usb-storage (v2 of the patch: up to 256 segments,
# usb-storage's default 120 KiB commands; then max_sectors 2048 makes them 1 MiB, each URB split
# into consecutive usbif requests of at most 15 pages), the whole stick reads back as the image
# (1 MiB O_DIRECT reads with 120 KiB commands, then with 1 MiB commands: 64 KiB and 1 MiB O_DIRECT
# reads into buffers 512 and 3584 bytes past a page boundary (/usr/bin/odirect-cat: SG entries
# that are not page-aligned, the largest requests spanning 16 pages), and a buffered read through
# the page cache), 4 MiB of O_DIRECT writes in the middle read back and are
# restored, and no xen-hcd error in dmesg. One line per check, like pvusb.sh:
#   PVUSB-CHECK PASS <name> | PVUSB-CHECK FAIL <name>: <why>
# Exit status: number of failed checks.
. /tests/lib.sh
BE=${XT_NAME:-usbdom}
FE=0
fails=0
pass() { echo "PVUSB-CHECK PASS $1"; }
fail() {
  echo "PVUSB-CHECK FAIL $1: $2"
  fails=$((fails + 1))
  dmesg | tail -20 | sed 's/^/XT:   dmesg: /'
  tail -20 "$CONSOLE_DIR/guest-$BE.log" 2>/dev/null | sed 's/^/XT:   usbdom: /'
}
sd_disks() { ls /sys/block 2>/dev/null | grep '^sd' | sort; }

wait_for 30 xt_find_devs && pass list || fail list "usbdom list shows no stick"
[ -n "$STICK" ] || exit 1

timeout 20 modprobe -r xen-hcd 2>/dev/null
# insmod loads no dependencies: usbcore first.
timeout 30 modprobe usbcore || xt "modprobe usbcore failed"
if timeout 30 insmod /guest/xen-hcd-sg.ko; then
  pass insmod-xen-hcd-sg
else
  fail insmod-xen-hcd-sg "insmod /guest/xen-hcd-sg.ko failed"
  exit 1
fi
for m in usb-storage sd_mod; do timeout 30 modprobe $m || xt "modprobe $m failed"; done

out=$(timeout 30 usbdom create-controller $FE --ports 1 --version 2 --wait 2>&1)
rc=$?
[ $rc = 0 ] && pass create-controller || { fail create-controller "rc=$rc: $out"; exit 1; }
out=$(timeout 30 usbdom attach $FE 1 "$STICK" --wait 2>&1)
rc=$?
[ $rc = 0 ] && pass attach-stick || fail attach-stick "rc=$rc: $out"
DISK=""
new_disk() {
  DISK=$(sd_disks | head -1)
  [ -n "$DISK" ] && [ -b /dev/$DISK ] && [ "$(cat /sys/block/$DISK/size)" != 0 ]
}
wait_for 60 new_disk && pass frontend-disk || { fail frontend-disk "no /dev/sdX within 60 s"; exit 1; }
drv=$(readlink /sys/bus/xen/devices/vusb-0/driver/module 2>/dev/null)
if [ "${drv##*/}" = xen_hcd_sg ]; then
  pass frontend-is-xen-hcd-sg
else
  fail frontend-is-xen-hcd-sg "vusb-0 is driven by module '${drv##*/}'"
fi
dmesg | grep -i -e xen_hcd_sg -e 'xen-hcd' -e xenhcd | tail -5 | sed 's/^/XT:   dmesg: /'

# The queue limits usb-storage took from the SG frontend.
q=/sys/block/$DISK/queue
segs=$(cat $q/max_segments)
hwkb=$(cat $q/max_hw_sectors_kb)
kb=$(cat $q/max_sectors_kb)
xt "sg: /dev/$DISK max_sectors_kb=$kb max_hw_sectors_kb=$hwkb max_segments=$segs max_segment_size=$(cat $q/max_segment_size)"
bytes=$(($(cat /sys/block/$DISK/size) * 512))
[ "$bytes" = "$XT_STICK_BYTES" ] || fail size "device has $bytes bytes, the image $XT_STICK_BYTES"
# read_check NAME DD-ARGS...: the whole device through dd has the image's sha256.
read_check() {
  local name=$1 t0 sum secs
  shift
  t0=$(uptime_s)
  sum=$(timeout 180 dd if=/dev/$DISK "$@" 2>/tmp/sg-dd.err | sha256sum | cut -d' ' -f1)
  secs=$(elapsed $t0)
  xt "sg: $name: $bytes bytes in ${secs}s"
  if [ "$sum" = "$XT_STICK_SHA256" ]; then
    pass $name
  else
    fail $name "sha256 $sum != image $XT_STICK_SHA256 ($(tr '\n' ' ' </tmp/sg-dd.err))"
  fi
}
# usb-storage's own 120 KiB commands first (two requests per command), then 1 MiB commands.
read_check sha256-odirect-1m-120k-commands bs=1M iflag=direct
echo 2048 > /sys/block/$DISK/device/max_sectors
kb2=$(cat $q/max_sectors_kb)
xt "sg: after max_sectors 2048: max_sectors_kb=$kb2 max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb)"
if [ "$segs" -ge 16 ] && [ "$hwkb" = 120 ] && [ "$kb2" = 1024 ]; then
  pass sg-queue-limits
else
  fail sg-queue-limits "max_segments=$segs (want >= 16), max_hw_sectors_kb=$hwkb (want 120), after max_sectors 2048 max_sectors_kb=$kb2 (want 1024)"
fi

read_check sha256-odirect-64k bs=64k iflag=direct
read_check sha256-odirect-1m bs=1M iflag=direct
# odirect_check MISALIGN CHUNK: the whole device through O_DIRECT reads of CHUNK bytes into a
# buffer MISALIGN bytes past a page boundary.
odirect_check() {
  local name=sha256-odirect-at$1-$2 t0 sum secs
  t0=$(uptime_s)
  sum=$(timeout 180 odirect-cat /dev/$DISK $1 $2 2>/tmp/sg-odc.err | sha256sum | cut -d' ' -f1)
  secs=$(elapsed $t0)
  xt "sg: $name: ${secs}s"
  if [ "$sum" = "$XT_STICK_SHA256" ]; then
    pass $name
  else
    fail $name "sha256 $sum != image $XT_STICK_SHA256 ($(tr '\n' ' ' </tmp/sg-odc.err))"
  fi
}
odirect_check 512 61440
odirect_check 3584 61440
odirect_check 3584 65536
odirect_check 1536 1048576
echo 3 >/proc/sys/vm/drop_caches
read_check sha256-buffered bs=1M

# 4 MiB of random data written with O_DIRECT (1 MiB and 64 KiB writes) in the middle, read back,
# then the original put back and checked.
at=$((bytes / 1048576 / 2 - 2))
dd if=/dev/urandom of=/tmp/rnd bs=1M count=4 2>/dev/null
timeout 60 dd if=/dev/$DISK of=/tmp/orig bs=1M skip=$at count=4 iflag=direct 2>/dev/null
orc=$?
timeout 60 dd if=/tmp/rnd of=/dev/$DISK bs=1M seek=$at count=4 oflag=direct conv=fsync 2>/dev/null
wrc=$?
timeout 60 dd if=/dev/$DISK of=/tmp/back bs=1M skip=$at count=4 iflag=direct 2>/dev/null
rrc=$?
timeout 60 dd if=/tmp/orig of=/dev/$DISK bs=64k seek=$((at * 16)) count=64 oflag=direct conv=fsync 2>/dev/null
prc=$?
timeout 60 dd if=/dev/$DISK of=/tmp/back2 bs=64k skip=$((at * 16)) count=64 iflag=direct 2>/dev/null
if [ $orc = 0 ] && [ $wrc = 0 ] && [ $rrc = 0 ] && cmp -s /tmp/rnd /tmp/back &&
  [ $prc = 0 ] && cmp -s /tmp/orig /tmp/back2 && ! cmp -s /tmp/orig /tmp/rnd; then
  pass odirect-write-read-restore
else
  fail odirect-write-read-restore "save rc=$orc write rc=$wrc read rc=$rrc restore rc=$prc; data: $(cmp /tmp/rnd /tmp/back 2>&1 | head -1); restored: $(cmp /tmp/orig /tmp/back2 2>&1 | head -1)"
fi
read_check sha256-after-restore bs=1M iflag=direct

if dmesg | grep -q -e 'xenhcd: error' -e 'xen-hcd: protocol error' -e 'I/O error'; then
  fail dmesg-clean "$(dmesg | grep -e 'xenhcd: error' -e 'xen-hcd: protocol error' -e 'I/O error' | tail -3 | tr '\n' ' ')"
else
  pass dmesg-clean
fi

timeout 30 usbdom detach $FE 1 >/dev/null 2>&1 || xt "detach failed"
no_disk() { [ -z "$(sd_disks)" ]; }
wait_for 20 no_disk || xt "disk still present after detach"
timeout 30 usbdom remove-controller $FE >/dev/null 2>&1 || xt "remove-controller failed"
for m in usb-storage xen_hcd_sg; do timeout 20 rmmod $m || xt "rmmod $m failed"; done
xt "sg checks done: $fails failed"
exit $fails
