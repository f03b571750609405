#!/bin/sh
# /init of the frontend domU that tests/xen/bench.sh's qusb_peer builds: Xen's qusb backend (QEMU
# in dom0) serves it the stick; it loads xen-hcd and the storage drivers, waits for the disk and
# runs bench.sh's `measure qusb` on it. Its console is copied to dom0's unprefixed, so its
# BENCH-MEASURE/BENCH-FAIL and "XT: phase" lines reach the host as dom0's do. Ends with
# "XT-QUSB-DONE <fails>" and powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for a in $(cat /proc/cmdline); do
  case $a in xt.stick_sha256=*) export XT_STICK_SHA256=${a#*=};; esac
done
BENCH_LIB_ONLY=1 . /tests/bench.sh
for m in xen-hcd usb-storage sd_mod; do timeout 30 modprobe $m || xt "qusb: modprobe $m failed"; done
xt "phase qusb: domU waits for the disk"
if wait_for 120 new_disk; then
  xt "qusb: /dev/$DISK ($(cat /sys/block/$DISK/size) sectors) in the domU"
  # dom0 measures its own CPU time across this read as qusb-seq-cpu-s; ours is the frontend's.
  CPU_NAME=frontend-seq-cpu-s measure qusb
else
  bfail qusb-disk "no /dev/sdX in the domU within 120 s of loading xen-hcd"
  dmesg | tail -20 | sed 's/^/XT:   domU dmesg: /'
fi
# Programs of ours that crashed here (seen: busybox segfaults and aborts during the reads).
dmesg | grep -E 'traps:|segfault|general protection' | sed 's/^/XT:   qusb domU PROGRAM CRASHED: /'
echo "XT-QUSB-DONE $fails"
sync
poweroff -f
