#!/bin/sh
# `cargo xtask run`'s frontend part (run by tests/xen/run.sh once usbdom is ready): dom0 becomes a
# xen-hcd frontend of usbdom, the dom0 tool attaches the emulated stick and keyboard, and the
# stick shows up as /dev/sdX in dom0. A demonstration, not a test (the Xen tier checks the same
# steps in tests/xen/pvusb.sh); every step is bounded and says what happened.
. /tests/lib.sh
say() { xt "frontend: $*"; }
show() { sed 's/^/XT:   /'; }

say "the devices usbdom publishes (usbdom list):"
if ! wait_for 30 xt_find_devs; then
  echo "$LIST" | show
  say "usbdom lists no stick"
  exit 1
fi
echo "$LIST" | show

for m in xen-hcd usb-storage sd_mod usbhid hid-generic; do
  timeout 30 modprobe $m || say "modprobe $m failed"
done
before=$(ls /sys/block | grep '^sd')
say "usbdom create-controller 0 --ports 2 --wait"
timeout 30 usbdom create-controller 0 --ports 2 --wait 2>&1 | show
say "usbdom attach 0 1 $STICK --wait"
timeout 30 usbdom attach 0 1 "$STICK" --wait 2>&1 | show
if [ -n "$KBD" ]; then
  say "usbdom attach 0 2 $KBD --wait"
  timeout 30 usbdom attach 0 2 "$KBD" --wait 2>&1 | show
fi
new_disk() { ls /sys/block | grep '^sd' | grep -v "^${before:-none}\$" | head -1; }
have_disk() { [ -n "$(new_disk)" ]; }
rc=0
if wait_for 60 have_disk; then
  d=$(new_disk)
  say "the stick reached dom0 as /dev/$d ($(($(cat /sys/block/$d/size) / 2048)) MiB):"
  dmesg | grep -E 'vusb|usb 1-|sd [0-9]|\[sd' | tail -14 | show
  say "sha256 of its first MiB: $(timeout 60 dd if=/dev/$d bs=64k count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
else
  say "no /dev/sdX within 60 s"
  dmesg | tail -20 | show
  rc=1
fi
grep -i -A1 'N: Name=.*usb keyboard' /proc/bus/input/devices 2>/dev/null | show
say "usbdom status:"
timeout 10 usbdom status 2>&1 | show
timeout 30 usbdom detach 0 1 >/dev/null 2>&1
[ -n "$KBD" ] && timeout 30 usbdom detach 0 2 >/dev/null 2>&1
sleep 1
timeout 30 usbdom remove-controller 0 2>&1 | show
exit $rc
