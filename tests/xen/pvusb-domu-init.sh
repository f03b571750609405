#!/bin/sh
# /init of the frontend domU that tests/xen/pvusb-domu.sh builds: load xen-hcd and the storage
# drivers, wait for the disk usbdom exports to it, print its sha256, then read it in a loop with
# O_DIRECT until the domain is destroyed. Progress lines start with "DOMU:".
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in xen-hcd usb-storage sd_mod usbhid hid-generic; do
  modprobe $m 2>&1 | sed 's/^/DOMU: modprobe: /'
done
echo "DOMU: frontend ready"
i=0
while [ ! -b /dev/sda ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
if [ -b /dev/sda ]; then
  echo "DOMU: disk sda $(cat /sys/block/sda/size) sectors"
  echo "DOMU: sha256 $(dd if=/dev/sda bs=64k iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
  n=0
  while :; do
    n=$((n + 1))
    echo "DOMU: dd pass $n start"
    dd if=/dev/sda of=/dev/null bs=64k iflag=direct 2>&1 | tail -1 | sed "s/^/DOMU: dd pass $n: /"
  done
fi
echo "DOMU: no disk"
dmesg | tail -20 | sed 's/^/DOMU: dmesg: /'
while :; do sleep 3600; done
