#!/bin/sh
# PVUSB with a second Linux domain as the frontend, destroyed in the middle of a read: usbdom must
# notice, clean up (log it, remove the controller's directory, reset the stick) and serve a new
# frontend (dom0) afterwards: the whole device reads back as the image. Run by
# tests/xen/pvusb-tier.sh after tests/xen/pvusb.sh when $XT_PVUSB_DOMU=1, or as the user script of
# `cargo xtask e2e --script tests/xen/pvusb-domu.sh`; both put the dom0 kernel at /guest/vmlinuz,
# used here as the domU kernel. Output as tests/xen/pvusb.sh; the check names are
# xtask/src/pvusb_tier.rs's DOMU_CHECKS.
. /tests/lib.sh
BE=${XT_NAME:-usbdom}
DU=pvusb-fe
fails=0
pass() { echo "PVUSB-CHECK PASS $1"; }
fail() {
  echo "PVUSB-CHECK FAIL $1: $2"
  fails=$((fails + 1))
  xt "---- diagnostics ----"
  timeout 10 usbdom status 2>&1 | sed 's/^/XT:   status: /'
  timeout 10 xl list 2>&1 | sed 's/^/XT:   xl: /'
  tail -25 "$CONSOLE_DIR/guest-$DU.log" 2>/dev/null | sed 's/^/XT:   domU: /'
  dmesg | tail -40 | sed 's/^/XT:   dmesg: /'
  # A dom0 program that crashed (seen once: busybox applets with a general protection fault in
  # malloc) explains a failed step without usbdom being involved.
  dmesg | grep -E 'traps:|segfault' | sed 's/^/XT:   DOM0 PROGRAM CRASHED: /'
  tail -15 "$CONSOLE_DIR/guest-$BE.log" 2>/dev/null | sed 's/^/XT:   usbdom: /'
}
wait_for 30 xt_find_both || { fail domu-boot "usbdom list shows no stick and keyboard"; exit 1; }
[ -f /guest/vmlinuz ] || { fail domu-boot "no /guest/vmlinuz"; exit 1; }

# The domU's initramfs: static busybox, the modules of this (same) kernel, its /init.
rm -rf /tmp/du && mkdir -p /tmp/du/bin /tmp/du/proc /tmp/du/sys /tmp/du/dev /tmp/du/tmp /tmp/du/lib
cp /bin/busybox /tmp/du/bin/
for a in sh mount modprobe insmod sleep cat dd tail sed ls dmesg sha256sum cut; do ln -s busybox /tmp/du/bin/$a; done
cp -a /lib/modules /tmp/du/lib/
cp /tests/pvusb-domu-init.sh /tmp/du/init && chmod +x /tmp/du/init
(cd /tmp/du && find . | cpio -o -H newc > /tmp/domu.cpio 2>/dev/null)
xt "domU initramfs $(wc -c < /tmp/domu.cpio) bytes"

cat > /tmp/$DU.cfg <<CFG
name="$DU"
type="pv"
kernel="/guest/vmlinuz"
ramdisk="/tmp/domu.cpio"
extra="console=hvc0 rdinit=/init loglevel=4"
memory=192
vcpus=1
on_poweroff="destroy"
on_crash="destroy"
CFG
( timeout 120 xl create /tmp/$DU.cfg > /tmp/$DU.create.log 2>&1; echo $? > /tmp/$DU.rc ) &
wait_for 120 test -f /tmp/$DU.rc
if [ "$(cat /tmp/$DU.rc 2>/dev/null)" != 0 ]; then
  tail -20 /tmp/$DU.create.log | sed 's/^/XT:   /'
  fail domu-boot "xl create $DU failed"
  exit 1
fi
DOMID=$(xlt domid $DU)
xt "domU $DU is domain $DOMID"
if wait_for 120 grep -q 'DOMU: frontend ready' "$CONSOLE_DIR/guest-$DU.log"; then
  pass domu-boot
else
  fail domu-boot "the domU did not load xen-hcd within 120 s"
  exit 1
fi

t0=$(uptime_s)
out=$(timeout 30 usbdom create-controller $DOMID --ports 2 --wait 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   /'
# The keyboard too: its interrupt transfer waits in the controller until a key is pressed, so
# the domain dies with a transfer in flight.
if [ $rc = 0 ] && timeout 30 usbdom attach $DOMID 1 "$STICK" --wait &&
  timeout 30 usbdom attach $DOMID 2 "$KBD" --wait; then
  pass domu-attach
  echo "PVUSB-MEASURE domu-create-to-connected-s $(elapsed $t0)"
else
  fail domu-attach "create-controller/attach for domain $DOMID failed"
  exit 1
fi
# The domU reads the whole device once (sha256), then keeps reading it.
if wait_for 90 grep -q 'DOMU: dd pass 1 start' "$CONSOLE_DIR/guest-$DU.log"; then
  dsum=$(tr -d '\r' < "$CONSOLE_DIR/guest-$DU.log" | grep 'DOMU: sha256 ' | head -1 | awk '{ print $3 }')
  if [ -n "$XT_STICK_SHA256" ] && [ "$dsum" = "$XT_STICK_SHA256" ]; then
    pass domu-disk
  else
    fail domu-disk "the domU read sha256 ${dsum:-(none)}, the image is ${XT_STICK_SHA256:-(none given)}"
  fi
else
  fail domu-disk "the domU saw no disk within 90 s"
  exit 1
fi

# Destroy it in the middle of a read.
sleep 2
grep 'DOMU: dd' "$CONSOLE_DIR/guest-$DU.log" | tail -3 | sed 's/^/XT:   /'
timeout 60 xl destroy $DU
xt "xl destroy $DU rc=$?"
BEID=$(xlt domid $BE)
# usbdom logs it and removes its <domid>/<devid> directory (an empty <domid> may stay).
gone() {
  [ -z "$(xenstore-list /local/domain/$BEID/backend/vusb/$DOMID 2>/dev/null)" ] &&
    grep -q "vusb $DOMID/0: removed" "$CONSOLE_DIR/guest-$BE.log"
}
if wait_for 30 gone; then
  pass domu-destroy-cleanup
else
  fail domu-destroy-cleanup "usbdom still has the destroyed domain's controller after 30 s"
fi
grep -E "vusb $DOMID/|frontend $DOMID:" "$CONSOLE_DIR/guest-$BE.log" | tail -6 | sed 's/^/XT:   usbdom: /'
# What the controller still had of it (at least the keyboard's interrupt transfer) came back
# before its connection was released.
drained() {
  grep -qE "vusb $DOMID/0: disconnected \([1-9][0-9]* transfers to drain\)" "$CONSOLE_DIR/guest-$BE.log" &&
    grep -q "frontend $DOMID: the last transfer of its closed connection is back" "$CONSOLE_DIR/guest-$BE.log"
}
if wait_for 15 drained; then
  pass domu-inflight-drained
else
  fail domu-inflight-drained "usbdom did not log transfers to drain and their return for domain $DOMID"
fi
# The stick the dead guest left mid-command is reset before anyone gets it again.
reset_logged() {
  grep -q "device $STICK: reset before it is exported again" "$CONSOLE_DIR/guest-$BE.log" &&
    grep -q "device $KBD: reset before it is exported again" "$CONSOLE_DIR/guest-$BE.log"
}
if wait_for 15 reset_logged && wait_for 15 xt_find_both; then
  pass domu-device-reset
else
  fail domu-device-reset "usbdom did not log the resets of $STICK and $KBD, or they are not listed again"
fi

# A new frontend (dom0) is served afterwards: the whole device reads back as the image.
timeout 30 modprobe xen-hcd
for m in usb-storage sd_mod; do timeout 30 modprobe $m; done
before=$(ls /sys/block | grep '^sd')
new_disk() { ls /sys/block | grep '^sd' | grep -v "^${before:-none}\$" | head -1; }
if timeout 30 usbdom create-controller 0 --ports 1 --wait && timeout 30 usbdom attach 0 1 "$STICK" --wait &&
  wait_for 60 sh -c "ls /sys/block | grep '^sd' | grep -qv '^${before:-none}\$'"; then
  d=$(new_disk)
  sum=$(timeout 120 dd if=/dev/$d bs=1M iflag=direct 2>/tmp/dd-nf.err | sha256sum | cut -d' ' -f1)
  if [ -n "$XT_STICK_SHA256" ] && [ "$sum" = "$XT_STICK_SHA256" ]; then
    pass after-destroy-sha256
  else
    fail after-destroy-sha256 "/dev/$d: sha256 $sum != image ${XT_STICK_SHA256:-(none given)} ($(tr '\n' ' ' < /tmp/dd-nf.err))"
  fi
else
  fail after-destroy-sha256 "dom0 as the next frontend got no disk"
fi
timeout 30 usbdom detach 0 1 >/dev/null 2>&1
sleep 2
timeout 30 usbdom remove-controller 0 >/dev/null 2>&1
# Seen in some runs, always right after the domU was created or destroyed and also while usbdom
# had no part in it yet: a dom0 busybox applet dies with a general protection fault in malloc.
# Said every time, so a failed step that it explains is not blamed on usbdom.
dmesg | grep -E 'traps:|segfault' | sed 's/^/XT: DOM0 PROGRAM CRASHED: /'
xt "pvusb domU checks done: $fails failed"
exit $fails
