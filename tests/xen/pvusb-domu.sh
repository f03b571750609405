#!/bin/sh
# PVUSB with a second Linux domain as the frontend, destroyed in the middle of a read: usbdom must
# notice, clean up, and serve a new frontend (dom0) afterwards. Run once usbdom is up, as the user
# script of `cargo xtask e2e --script tests/xen/pvusb-domu.sh` (which puts the dom0 kernel at
# /guest/vmlinuz, used here as the domU kernel). Output as tests/xen/pvusb.sh.
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
  tail -15 "$CONSOLE_DIR/guest-$BE.log" 2>/dev/null | sed 's/^/XT:   usbdom: /'
}
wait_for() {
  local n=$(($1 * 2))
  shift
  while [ $n -gt 0 ]; do
    "$@" && return 0
    sleep 0.5
    n=$((n - 1))
  done
  return 1
}
STICK=""
find_stick() {
  STICK=$(timeout 10 usbdom list 2>/dev/null | awk '$2 == "46f4:0001" { print $1; exit }')
  [ -n "$STICK" ]
}
wait_for 30 find_stick || { fail domu-list "usbdom list shows no stick"; exit 1; }
[ -f /guest/vmlinuz ] || { fail domu-kernel "no /guest/vmlinuz"; exit 1; }

# The domU's initramfs: static busybox, the modules of this (same) kernel, its /init.
rm -rf /tmp/du && mkdir -p /tmp/du/bin /tmp/du/proc /tmp/du/sys /tmp/du/dev /tmp/du/tmp /tmp/du/lib
cp /bin/busybox /tmp/du/bin/
for a in sh mount modprobe insmod sleep cat dd tail sed ls dmesg; do ln -s busybox /tmp/du/bin/$a; done
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
  fail domu-create "xl create $DU failed"
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
out=$(timeout 30 usbdom create-controller $DOMID --ports 1 --wait 2>&1)
rc=$?
echo "$out" | sed 's/^/XT:   /'
if [ $rc = 0 ] && timeout 30 usbdom attach $DOMID 1 "$STICK" --wait; then
  pass domu-attach
  echo "PVUSB-MEASURE domu-create-to-connected-s $(elapsed $t0)"
else
  fail domu-attach "create-controller/attach for domain $DOMID failed"
  exit 1
fi
if wait_for 90 grep -q 'DOMU: dd pass 1 start' "$CONSOLE_DIR/guest-$DU.log"; then
  pass domu-disk
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
# usbdom removes its <domid>/<devid> directory (an empty <domid> may stay).
gone() { [ -z "$(xenstore-list /local/domain/$BEID/backend/vusb/$DOMID 2>/dev/null)" ]; }
if wait_for 30 gone; then
  pass domu-destroy-cleanup
else
  fail domu-destroy-cleanup "usbdom still has the destroyed domain's controller after 30 s"
fi
grep -E "vusb $DOMID/" "$CONSOLE_DIR/guest-$BE.log" | tail -5 | sed 's/^/XT:   usbdom: /'

# A new frontend (dom0) is served afterwards.
timeout 30 modprobe xen-hcd
for m in usb-storage sd_mod; do timeout 30 modprobe $m; done
before=$(ls /sys/block | grep '^sd')
if timeout 30 usbdom create-controller 0 --ports 1 --wait && timeout 30 usbdom attach 0 1 "$STICK" --wait &&
  wait_for 60 sh -c "ls /sys/block | grep '^sd' | grep -qv '^${before:-none}\$'"; then
  d=$(ls /sys/block | grep '^sd' | grep -v "^${before:-none}\$" | head -1)
  if timeout 60 dd if=/dev/$d of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null; then
    pass after-destroy-new-frontend
  else
    fail after-destroy-new-frontend "reading /dev/$d failed"
  fi
else
  fail after-destroy-new-frontend "dom0 as the next frontend got no disk"
fi
timeout 30 usbdom detach 0 1 >/dev/null 2>&1
sleep 2
timeout 30 usbdom remove-controller 0 >/dev/null 2>&1
xt "pvusb domU checks done: $fails failed"
exit $fails
