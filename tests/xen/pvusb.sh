#!/bin/sh
# PVUSB end to end in dom0, with dom0 itself as the frontend (xen-hcd): run once usbdom is up
# (as the user script of `cargo xtask e2e --script tests/xen/pvusb.sh`, after e2e.sh's xt_up).
# Needs from the harness: $XT_STICK_SHA256 and $XT_STICK_BYTES (the image of the usb-storage
# stick), /usr/bin/usbdom (the dom0 tool). QEMU's usb-storage is 46f4:0001, its usb-kbd 0627:0001.
# Every step is bounded; one line per check:
#   PVUSB-CHECK PASS <name>
#   PVUSB-CHECK FAIL <name>: <why>        (followed by diagnostics)
# and measurements as "PVUSB-MEASURE <name> <value>". Exit status: number of failed checks.
. /tests/lib.sh
BE=${XT_NAME:-usbdom}
FE=0
fails=0

pass() { echo "PVUSB-CHECK PASS $1"; }
fail() {
  echo "PVUSB-CHECK FAIL $1: $2"
  fails=$((fails + 1))
  pvusb_diag
}
pvusb_diag() {
  xt "---- pvusb diagnostics ----"
  timeout 10 usbdom status 2>&1 | sed 's/^/XT:   status: /'
  timeout 10 xenstore-ls -f /local/domain/$FE/device/vusb 2>&1 | tail -20 | sed 's/^/XT:   fe: /'
  dmesg | tail -20 | sed 's/^/XT:   dmesg: /'
  tail -20 "$CONSOLE_DIR/guest-$BE.log" 2>/dev/null | sed 's/^/XT:   usbdom: /'
}
sd_disks() { ls /sys/block 2>/dev/null | grep '^sd' | sort; }

# 1. The driver domain publishes the stick and the keyboard.
if wait_for 30 xt_find_both; then
  pass list
else
  fail list "usbdom list shows no stick (46f4:0001) and keyboard (0627:0001)"
fi
echo "$LIST" | sed 's/^/XT:   list: /'
[ -n "$STICK" ] || exit 1

# 2. The frontend driver and the class drivers (no hotplug helper runs in this dom0).
if timeout 30 modprobe xen-hcd; then
  pass modprobe-xen-hcd
else
  fail modprobe-xen-hcd "modprobe xen-hcd failed"
  exit 1
fi
for m in usb-storage sd_mod usbhid hid-generic; do
  timeout 30 modprobe $m || xt "modprobe $m failed"
done

# 3. A virtual controller for dom0, taken up by usbdom.
before=$(sd_disks)
t0=$(uptime_s)
out=$(timeout 30 usbdom create-controller $FE --ports 2 --version 2 --wait 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   create-controller: /'
if [ $rc = 0 ]; then
  pass create-controller
  echo "PVUSB-MEASURE create-to-connected-s $(elapsed $t0)"
else
  fail create-controller "usbdom create-controller $FE rc=$rc"
  exit 1
fi

# 4. Attach the stick to port 1; the frontend gets a disk.
out=$(timeout 30 usbdom attach $FE 1 "$STICK" --wait 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   attach: /'
[ $rc = 0 ] && pass attach-stick || fail attach-stick "usbdom attach $FE 1 $STICK rc=$rc"
DISK=""
new_disk() {
  DISK=$(sd_disks | while read d; do echo "$before" | grep -qx "$d" || echo "$d"; done | head -1)
  [ -n "$DISK" ] && [ -b /dev/$DISK ] && [ "$(cat /sys/block/$DISK/size)" != 0 ]
}
if wait_for 60 new_disk; then
  pass frontend-disk
  xt "frontend disk /dev/$DISK ($(cat /sys/block/$DISK/size) sectors)"
else
  fail frontend-disk "no new /dev/sdX within 60 s (had: $(echo $before))"
  DISK=""
fi

if [ -n "$DISK" ]; then
  # 5. The whole device reads back as the image.
  bytes=$(($(cat /sys/block/$DISK/size) * 512))
  t0=$(uptime_s)
  sum=$(timeout 180 dd if=/dev/$DISK bs=1M iflag=direct 2>/tmp/dd-read.err | sha256sum | cut -d' ' -f1)
  secs=$(elapsed $t0)
  xt "read $bytes bytes in ${secs}s: $(tail -1 /tmp/dd-read.err)"
  echo "PVUSB-MEASURE read-mib-s $(awk -v b=$bytes -v s=$secs 'BEGIN { if (s > 0) printf "%.2f", b / 1048576 / s; else print "inf" }')"
  if [ -z "$XT_STICK_SHA256" ]; then
    fail sha256 "the harness passed no xt.stick_sha256"
  elif [ "$bytes" != "$XT_STICK_BYTES" ]; then
    fail sha256 "device has $bytes bytes, the image $XT_STICK_BYTES"
  elif [ "$sum" = "$XT_STICK_SHA256" ]; then
    pass sha256
  else
    fail sha256 "sha256 $sum != image $XT_STICK_SHA256 ($(cat /tmp/dd-read.err | tr '\n' ' '))"
  fi

  # 6. Random data written and read back with O_DIRECT (1 MiB in the middle of the device), then
  #    the original bytes put back (later checks compare the whole device with the image again).
  at=$((bytes / 65536 / 2))
  dd if=/dev/urandom of=/tmp/rnd bs=64k count=16 2>/dev/null
  timeout 60 dd if=/dev/$DISK of=/tmp/orig bs=64k skip=$at count=16 iflag=direct 2>/dev/null
  orc=$?
  timeout 60 dd if=/tmp/rnd of=/dev/$DISK bs=64k seek=$at count=16 oflag=direct conv=fsync 2>/tmp/dd-w.err
  wrc=$?
  timeout 60 dd if=/dev/$DISK of=/tmp/back bs=64k skip=$at count=16 iflag=direct 2>/tmp/dd-r.err
  rrc=$?
  timeout 60 dd if=/tmp/orig of=/dev/$DISK bs=64k seek=$at count=16 oflag=direct conv=fsync 2>/dev/null
  prc=$?
  timeout 60 dd if=/dev/$DISK of=/tmp/back2 bs=64k skip=$at count=16 iflag=direct 2>/dev/null
  if [ $orc = 0 ] && [ $wrc = 0 ] && [ $rrc = 0 ] && cmp -s /tmp/rnd /tmp/back &&
    [ $prc = 0 ] && cmp -s /tmp/orig /tmp/back2; then
    pass odirect-write-read
  else
    fail odirect-write-read "save rc=$orc write rc=$wrc read rc=$rrc restore rc=$prc; data: $(cmp /tmp/rnd /tmp/back 2>&1 | head -1); restored: $(cmp /tmp/orig /tmp/back2 2>&1 | head -1)"
  fi
fi

# 6b. The guest resets the stick itself (USBDEVFS_RESET -> usb_reset_device, what mass-storage
#     error recovery does). xen-hcd keeps root-port resets to itself; usbdom must see the
#     re-enumeration, reset the stick for real, and the guest keeps its disk (no disconnect).
usbdev_of() {
  local d
  d=$(readlink -f /sys/block/$1/device)
  while [ "$d" != / ] && [ ! -f "$d/busnum" ]; do d=$(dirname "$d"); done
  [ -f "$d/busnum" ] && printf '/dev/bus/usb/%03d/%03d' "$(cat $d/busnum)" "$(cat $d/devnum)"
}
guest_resets() { grep -c "device $STICK: reset, as its guest asked" "$CONSOLE_DIR/guest-$BE.log"; }
if [ -n "$DISK" ]; then
  node=$(usbdev_of $DISK)
  n0=$(guest_resets)
  timeout 60 dd if=/dev/$DISK of=/tmp/pre bs=64k count=16 iflag=direct 2>/dev/null
  out=$(timeout 60 usbreset "$node" 2>&1)
  rrc=$?
  more_resets() { [ "$(guest_resets)" -gt "$n0" ]; }
  if [ $rrc = 0 ] && wait_for 10 more_resets && [ -b /dev/$DISK ] &&
    timeout 60 dd if=/dev/$DISK of=/tmp/post bs=64k count=16 iflag=direct 2>/dev/null &&
    cmp -s /tmp/pre /tmp/post; then
    pass guest-reset
  else
    fail guest-reset "usbreset $node rc=$rrc ($out); usbdom resets for the guest: $n0 -> $(guest_resets); /dev/$DISK $([ -b /dev/$DISK ] && echo present || echo gone)"
  fi
  dmesg | grep -E 'reset high-speed|USB disconnect' | tail -3 | sed 's/^/XT:   dmesg: /'
fi

# 7. The keyboard on port 2 enumerates as a HID input device.
out=$(timeout 30 usbdom attach $FE 2 "$KBD" --wait 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   attach: /'
kbd_input() { grep -qi 'N: Name=.*usb keyboard' /proc/bus/input/devices 2>/dev/null; }
if [ $rc != 0 ]; then
  fail keyboard-hid "usbdom attach $FE 2 $KBD rc=$rc"
elif wait_for 30 kbd_input; then
  pass keyboard-hid
  grep -i -A4 'usb keyboard' /proc/bus/input/devices | sed 's/^/XT:   input: /'
else
  fail keyboard-hid "no USB keyboard in /proc/bus/input/devices within 30 s"
fi

# 8. Detaching the stick is a disconnect in the frontend.
out=$(timeout 30 usbdom detach $FE 1 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   detach: /'
disk_gone() { [ -z "$DISK" ] || [ ! -e /sys/block/$DISK ]; }
if [ $rc != 0 ]; then
  fail detach "usbdom detach $FE 1 rc=$rc"
elif wait_for 30 disk_gone && dmesg | grep -q 'USB disconnect'; then
  pass detach
else
  fail detach "after detach: /sys/block/$DISK still there or no 'USB disconnect' in dmesg"
fi

# 9. The controller goes away cleanly. Ports first, as libxl's usbctrl removal does: a transfer
#    still in flight on an attached port when the controller closes is never given back, and
#    xen-hcd's removal then waits for it forever (and so would dom0's poweroff).
out=$(timeout 30 usbdom detach $FE 2 2>&1) || xt "detach $FE 2: $out"
wait_for 10 sh -c '! grep -qi "usb keyboard" /proc/bus/input/devices' || xt "keyboard still present after detach"
out=$(timeout 30 usbdom remove-controller $FE 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   remove-controller: /'
[ $rc = 0 ] && pass remove-controller || fail remove-controller "usbdom remove-controller $FE rc=$rc"

# Leave dom0 as found (a frontend left behind can hold up dom0's poweroff): unload the drivers.
for m in usbhid usb-storage xen-hcd; do
  timeout 20 modprobe -r $m || xt "modprobe -r $m failed (rc=$?)"
done
timeout 20 sync || xt "sync did not finish within 20 s"
xt "pvusb checks done: $fails failed"
exit $fails
