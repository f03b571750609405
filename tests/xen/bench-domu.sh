#!/bin/sh
# /init of the frontend domUs that tests/xen/bench.sh builds (domu_initramfs): usbdom serves it
# the stick (via_usbdom_domu: the production shape, a Linux PV domU, not dom0, is the xen-hcd
# frontend), or Xen's qusb backend does (qusb_peer: QEMU in dom0). It loads
# the frontend named by xt.frontend (xen-hcd, or a module shipped at /guest/<name>.ko such as
# xen-hcd-sg) and the storage drivers, waits for the disk and runs bench.sh's `measure <xt.mode>`
# on it. Its console is copied to dom0's unprefixed, so its BENCH-MEASURE/BENCH-FAIL, usbmon and
# "XT: phase" lines reach the host as dom0's do. Ends with "XT-DOMU-DONE <fails>" and powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for a in $(cat /proc/cmdline); do
  case $a in
    xt.stick_sha256=*) export XT_STICK_SHA256=${a#*=};;
    xt.mode=*) MODE=${a#*=};;
    xt.frontend=*) FRONTEND=${a#*=};;
    xt.pause=*) PAUSE=${a#*=};;
  esac
done
BENCH_LIB_ONLY=1 . /tests/bench.sh
timeout 30 modprobe usbcore || xt "$MODE: modprobe usbcore failed"
if [ "$FRONTEND" = xen-hcd ]; then
  timeout 30 modprobe xen-hcd || bfail $MODE-frontend "modprobe xen-hcd failed in the domU"
else
  timeout 30 insmod /guest/$FRONTEND.ko || bfail $MODE-frontend "insmod /guest/$FRONTEND.ko failed in the domU"
fi
for m in usb-storage sd_mod; do timeout 30 modprobe $m || xt "$MODE: modprobe $m failed"; done
echo "XT: $MODE: domU frontend ready"
xt "phase $MODE: domU waits for the disk"
if wait_for 120 new_disk; then
  xt "$MODE: /dev/$DISK ($(cat /sys/block/$DISK/size) sectors) in the domU"
  # The SG frontend's 1 MiB commands (usb-storage keeps 120 KiB unless told).
  [ "$FRONTEND" = xen-hcd ] || echo 2048 > /sys/block/$DISK/device/max_sectors
  xt "$MODE: queue max_sectors_kb=$(cat /sys/block/$DISK/queue/max_sectors_kb) max_hw_sectors_kb=$(cat /sys/block/$DISK/queue/max_hw_sectors_kb) max_segments=$(cat /sys/block/$DISK/queue/max_segments) frontend $FRONTEND"
  # xt.pause: pauses longer than usbdom's 10 s statistics window, so each of its lines covers
  # one phase. dom0 measures its own CPU time across the read; ours is the frontend's.
  CPU_NAME=frontend-seq-cpu-s measure $MODE
else
  bfail $MODE-disk "no /dev/sdX in the domU within 120 s of loading $FRONTEND"
  dmesg | tail -20 | sed 's/^/XT:   domU dmesg: /'
fi
dmesg | grep -E 'traps:|segfault|general protection' | sed "s/^/XT:   $MODE domU PROGRAM CRASHED: /"
echo "XT-DOMU-DONE $fails"
sync
poweroff -f
