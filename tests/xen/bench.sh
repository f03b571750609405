#!/bin/sh
# Xen-tier benchmark (`cargo xtask bench`, xtask/src/bench_xen.rs), one boot, same QEMU devices:
#   1. "direct": dom0 owns the xHCI itself (xhci-hcd/xhci-pci from /guest/, shipped by the host),
#      reads the stick;
#   2. the controller goes to xen-pciback, usbdom is created with it passed through, dom0 becomes
#      the xen-hcd frontend and reads the stick again: once with usbdom's grant-copy data path
#      ("usbdom", usbdom.zero_copy=0), once more with a fresh usbdom on grant map ("usbmap",
#      usbdom.zero_copy=1).
#   3. "usbdom-sg": a fresh usbdom on grant copy again, dom0's frontend now xen-hcd-sg.ko
#      (xen-hcd with scatter-gather, tests/xen-hcd/xen-hcd-sg.patch) instead of xen-hcd.
#   Before them, "usbip": dom0 owns the xHCI again and reads the stick through usbip over loopback,
#   and "qusb": QEMU in dom0 (Xen's qusb backend) serves the stick to a Linux domU frontend.
# Each mode is one function call below; a mode measures its /dev/sdX with `measure MODE`:
# the stick's sha256 against the image, a dd cross-check, sequential read (/guest/qd1 seq: 3
# passes of 1 MiB O_DIRECT reads, with dom0's busy CPU time), sequential write (/guest/qd1 seqw:
# 3 passes of 1 MiB O_DIRECT writes over the first $WMIB MiB, saved before and restored after),
# QD1 4 KiB random-read latency (/guest/qd1: 200 O_DIRECT preads, the same offsets in all modes),
# and the sha256 again at the end (the write must leave the image intact).
# Output lines the host reads: "BENCH-MEASURE <name> <value>", "BENCH-FAIL <step>: <why>",
# "XT: phase <what>" (shown on the host as progress).
. /tests/lib.sh
. /tests/usbmon.sh
FE=0
fails=0
WMIB=8
M() { echo "BENCH-MEASURE $1 $2"; }
bfail() { echo "BENCH-FAIL $1: $2"; fails=$((fails + 1)); }
phase() { xt "phase $*"; }
sd_disks() { ls /sys/block 2>/dev/null | grep '^sd' | sort; }
DISK=""
new_disk() {
  DISK=$(sd_disks | head -1)
  [ -n "$DISK" ] && [ -b /dev/$DISK ] && [ "$(cat /sys/block/$DISK/size)" != 0 ]
}
no_disk() { [ -z "$(sd_disks)" ]; }
secs_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN{printf "%.2f", b-a}'; }
pause() { [ -n "$PAUSE" ] && sleep $PAUSE; }
# dom_cpu NAME: the domain's CPU time in seconds (xl list's Time(s), 0.1 s resolution).
dom_cpu() { xlt list "$1" 2>/dev/null | awk 'NR == 2 { print $6 }'; }

# sha_check MODE WHEN: /dev/$DISK's sha256 (64 KiB O_DIRECT reads) must be the image's.
sha_check() {
  local sum rc
  if [ -z "$XT_STICK_SHA256" ]; then xt "$1: data check skipped: no XT_STICK_SHA256"; return 0; fi
  sum=$({ timeout 120 dd if=/dev/$DISK bs=64k iflag=direct 2>/tmp/sha.err; echo $? > /tmp/sha.rc; } | sha256sum | cut -d' ' -f1)
  rc=$(cat /tmp/sha.rc 2>/dev/null)
  if [ "$rc" != 0 ]; then
    bfail $1-data-$2 "reading /dev/$DISK for its sha256 failed (dd exit ${rc:-?}: $(tr '\n' ' ' < /tmp/sha.err))"
    return 1
  elif [ "$sum" = "$XT_STICK_SHA256" ]; then
    xt "$1: sha256 matches the image ($2)"
  else
    bfail $1-data-$2 "/dev/$DISK sha256 $sum, the image is $XT_STICK_SHA256"
    return 1
  fi
}

# measure_write MODE: save the first $WMIB MiB, time 3 passes of O_DIRECT 1 MiB writes of a
# pattern over them (qd1 seqw reads them back and compares), restore the saved bytes.
measure_write() {
  local mode=$1 out rc
  if ! timeout 60 dd if=/dev/$DISK of=/tmp/region bs=1M count=$WMIB iflag=direct 2>/tmp/save.err; then
    bfail $mode-seqw "saving the region failed: $(tr '\n' ' ' < /tmp/save.err)"
    return 1
  fi
  out=$(timeout 120 /guest/qd1 /dev/$DISK seqw 3 $WMIB 2>&1); rc=$?
  if [ $rc = 0 ]; then
    xt "$mode: seqw $out"
    M $mode-seqw-mib-s "$(echo "$out" | sed -n 's/.*mib_s=\([0-9.]*\).*/\1/p')"
  else
    bfail $mode-seqw "qd1 seqw rc=$rc: $out"
  fi
  if timeout 120 dd if=/tmp/region of=/dev/$DISK bs=1M oflag=direct conv=fsync 2>/tmp/restore.err; then
    xt "$mode: region restored"
  else
    bfail $mode-restore "restoring the first $WMIB MiB failed: $(tr '\n' ' ' < /tmp/restore.err)"
  fi
  rm -f /tmp/region
}

# measure MODE: the rows of one mode on /dev/$DISK (see the top of this file).
measure() {
  local mode=$1 bytes t0 secs out dc0 dc1 rc
  phase "$mode: sha256 before"
  sha_check $mode before
  bytes=$(($(cat /sys/block/$DISK/size) * 512))
  phase "$mode: dd read"
  t0=$(uptime_s)
  if timeout 120 dd if=/dev/$DISK of=/dev/null bs=1M iflag=direct 2>/tmp/seq.err; then
    secs=$(secs_since $t0)
    M $mode-dd-mib-s "$(awk -v b=$bytes -v s=$secs 'BEGIN { if (s > 0) printf "%.3f", b / 1048576 / s; else print "inf" }')"
  else
    bfail $mode-dd "dd failed: $(tr '\n' ' ' < /tmp/seq.err)"
  fi
  pause
  phase "$mode: seq read"
  [ -n "$BACKEND_DOM" ] && dc0=$(dom_cpu $BACKEND_DOM)
  out=$(timeout 120 /guest/qd1 /dev/$DISK seq 3 2>&1)
  if [ $? = 0 ]; then
    xt "$mode: seq $out"
    # The backend domain's own CPU time across the read (usbdom's is not in dom0's /proc/stat).
    [ -n "$BACKEND_DOM" ] && dc1=$(dom_cpu $BACKEND_DOM) && [ -n "$dc0" ] && [ -n "$dc1" ] &&
      M $mode-backend-seq-cpu-s "$(awk -v a=$dc0 -v b=$dc1 'BEGIN { printf "%.1f", b - a }')"
    for kv in $out; do
      case $kv in
        bytes=*) M $mode-seq-bytes "${kv#*=}";;
        mib_s=*) M $mode-seq-mib-s "${kv#*=}";;
        cpu_s=*) M $mode-${CPU_NAME:-seq-cpu-s} "${kv#*=}";;
      esac
    done
  else
    bfail $mode-seq "qd1 seq: $out"
  fi
  pause
  phase "$mode: seq write"
  measure_write $mode
  pause
  phase "$mode: qd1 4k"
  out=$(timeout 120 /guest/qd1 /dev/$DISK 200 42 2>&1)
  rc=$?
  if [ $rc = 0 ]; then
    xt "$mode: qd1 $out"
    for kv in $out; do
      case $kv in *_us=*) M "$mode-lat-${kv%%_us=*}-us" "${kv#*=}";; esac
    done
  else
    bfail $mode-lat "qd1: $out"
  fi
  pause
  # The breakdown of a read: a few more QD1 reads with usbmon recording (not the row above:
  # usbmon's reader wakes dom0 at every URB and slows the frontend down).
  phase "$mode: qd1 4k traced"
  if mon_start; then
    timeout 60 /guest/qd1 /dev/$DISK 20 7 >/dev/null 2>&1
    mon_stop 40
  fi
  pause
  phase "$mode: sha256 after"
  sha_check $mode after
  phase "$mode: done"
}

for m in usbcore usb-storage sd_mod; do timeout 30 modprobe $m || xt "modprobe $m failed"; done

# direct: dom0's own xhci driver reads the stick; then gives the controller back (unloads the
# driver, waits for the disk to go).
direct() {
  phase "direct: load xhci-pci"
  if timeout 30 insmod /guest/xhci-hcd.ko && timeout 30 insmod /guest/xhci-pci.ko; then
    if wait_for 60 new_disk; then
      xt "direct: /dev/$DISK ($(cat /sys/block/$DISK/size) sectors)"
      measure direct
    else
      bfail direct-disk "no /dev/sdX within 60 s of loading xhci-pci"
      dmesg | tail -15 | sed 's/^/XT:   dmesg: /'
    fi
  else
    bfail direct-modules "insmod xhci-hcd/xhci-pci failed"
  fi
  timeout 30 rmmod xhci_pci || xt "rmmod xhci_pci failed"
  timeout 30 rmmod xhci_hcd || xt "rmmod xhci_hcd failed"
  wait_for 20 no_disk || bfail direct-release "a /dev/sd* is still there after rmmod xhci_pci"
}

# usbip: the peer users pick on one machine: dom0 owns the xHCI (xhci-pci, as in direct),
# exports the stick with usbip-host + usbipd and imports it back over 127.0.0.1 with vhci-hcd
# (`usbip attach`), then measures the imported /dev/sdX. All traffic stays on dom0's loopback.
usbip_find_busid() {
  local d
  for d in /sys/bus/usb/devices/*; do
    [ "$(cat $d/idVendor 2>/dev/null):$(cat $d/idProduct 2>/dev/null)" = 46f4:0001 ] && { BUSID=$(basename $d); return 0; }
  done
  return 1
}
usbip_diag() {
  xt "---- usbip diagnostics ----"
  timeout 10 usbip list -l 2>&1 | sed 's/^/XT:   /'
  timeout 10 usbip port 2>&1 | sed 's/^/XT:   /'
  netstat -ltn 2>/dev/null | sed 's/^/XT:   /'
  dmesg | tail -15 | sed 's/^/XT:   dmesg: /'
}
usbip_peer() {
  local m out
  if [ ! -x /usr/sbin/usbipd ] || [ ! -x /usr/sbin/usbip ] || [ ! -f /guest/vhci-hcd.ko ]; then
    echo "BENCH-SKIP usbip: no usbip/usbipd/vhci-hcd.ko in dom0 (the host did not ship them)"
    return
  fi
  phase "usbip: load xhci-pci and usbip, start usbipd"
  ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
  if ! { timeout 30 insmod /guest/xhci-hcd.ko && timeout 30 insmod /guest/xhci-pci.ko; }; then
    bfail usbip-modules "insmod xhci-hcd/xhci-pci failed"; return
  fi
  for m in usbip-core usbip-host vhci-hcd; do
    timeout 30 insmod /guest/$m.ko || bfail usbip-modules "insmod $m.ko failed"
  done
  if ! wait_for 60 usbip_find_busid; then
    bfail usbip-busid "no 46f4:0001 in /sys/bus/usb/devices within 60 s"; usbip_diag
  elif ! timeout 10 usbipd -D; then
    bfail usbip-usbipd "usbipd -D failed"; usbip_diag
  else
    wait_for 10 sh -c 'netstat -ltn 2>/dev/null | grep -q ":3240 "' || xt "usbip: nothing listens on :3240 yet"
    phase "usbip: bind $BUSID, attach over 127.0.0.1"
    if ! out=$(timeout 30 usbip bind -b $BUSID 2>&1); then
      bfail usbip-bind "usbip bind -b $BUSID: $out"; usbip_diag
    elif ! wait_for 30 no_disk; then
      bfail usbip-bind "/dev/sd* still there after usbip bind"; usbip_diag
    elif ! out=$(timeout 30 usbip attach -r 127.0.0.1 -b $BUSID 2>&1); then
      bfail usbip-attach "usbip attach -r 127.0.0.1 -b $BUSID: $out"; usbip_diag
    elif ! wait_for 60 new_disk; then
      bfail usbip-disk "no /dev/sdX within 60 s of usbip attach"; usbip_diag
    else
      xt "usbip: /dev/$DISK ($(cat /sys/block/$DISK/size) sectors) via vhci-hcd, busid $BUSID"
      measure usbip
    fi
    phase "usbip: detach, unbind"
    for m in $(timeout 10 usbip port 2>/dev/null | sed -n 's/^Port 0*\([0-9][0-9]*\):.*in Use.*/\1/p'); do
      timeout 20 usbip detach -p $m >/dev/null 2>&1 || xt "usbip detach -p $m failed"
    done
    wait_for 20 no_disk || xt "usbip: disk still there after detach"
    timeout 20 usbip unbind -b $BUSID >/dev/null 2>&1 || xt "usbip unbind failed"
  fi
  for m in $(pidof usbipd); do kill $m; done
  for m in vhci_hcd usbip_host usbip_core xhci_pci xhci_hcd; do
    grep -q "^$m " /proc/modules && { timeout 30 rmmod $m || xt "rmmod $m failed"; }
  done
  wait_for 20 no_disk || bfail usbip-release "a /dev/sd* is still there after rmmod xhci_pci"
}

# qusb: Xen's own PVUSB backend, QEMU in dom0 (`usbctrl=["type=qusb"]`, libxl starts
# /usr/libexec/xen-qemu-system-i386 for the domain and hands it the stick as a usb-host device),
# serving a Linux PV domU frontend (xen-hcd; the dom0 kernel at /guest/vmlinuz) that runs
# `measure qusb` itself (tests/xen/bench-domu.sh); its console is copied to ours unprefixed.
qusb_diag() {
  xt "---- qusb diagnostics ----"
  tail -30 /tmp/$1.create.log 2>/dev/null | sed 's/^/XT:   create: /'
  tail -30 /var/log/xen/qemu-dm-$1.log 2>/dev/null | sed 's/^/XT:   qemu-dm: /'
  timeout 10 xl list 2>&1 | sed 's/^/XT:   xl: /'
  timeout 10 xl usb-list $1 2>&1 | sed 's/^/XT:   usb-list: /'
  dmesg | tail -15 | sed 's/^/XT:   dmesg: /'
  dmesg | grep -E 'traps:|segfault' | sed 's/^/XT:   DOM0 PROGRAM CRASHED: /'
}
# busy_ticks: user+nice+system+irq+softirq of /proc/stat's cpu line (USER_HZ, 100 on x86).
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# domu_over DOMU DOMID: the frontend domU (tests/xen/bench-domu.sh) finished, or is gone
# (crashed, powered off: its xenstore directory is gone, seen twice so a busy xenstored is not
# taken for it).
domu_over() {
  grep -q 'XT-DOMU-DONE' "$CONSOLE_DIR/guest-$1.log" 2>/dev/null && return 0
  timeout 10 xenstore-exists /local/domain/$2 2>/dev/null && return 1
  sleep 1
  ! timeout 10 xenstore-exists /local/domain/$2 2>/dev/null
}
# domu_cfg NAME ARGS [LINES]: /tmp/NAME.cfg for a frontend domU booting /tmp/domu.cpio, with ARGS
# after the usual kernel command line (the image's sha256 included) and further xl config LINES.
domu_cfg() {
  cat > /tmp/$1.cfg <<CFG
name="$1"
type="pv"
kernel="/guest/vmlinuz"
ramdisk="/tmp/domu.cpio"
extra="console=hvc0 rdinit=/init loglevel=4 xt.stick_sha256=$XT_STICK_SHA256 $2"
memory=192
vcpus=1
on_poweroff="destroy"
on_crash="destroy"
${3:-}
CFG
}
# domu_initramfs FRONTEND: /tmp/domu.cpio for a frontend domU running tests/xen/bench-domu.sh:
# static busybox, this kernel's modules, qd1, the bench scripts, usbmon.ko, and FRONTEND's module
# when it is not stock xen-hcd (/guest/FRONTEND.ko).
domu_initramfs() {
  local d=/tmp/domu
  rm -rf $d && mkdir -p $d/bin $d/proc $d/sys $d/dev $d/tmp $d/lib $d/guest $d/tests
  cp /bin/busybox $d/bin/ && ln -s busybox $d/bin/sh && cp -a /lib/modules $d/lib/
  cp /guest/qd1 $d/guest/
  [ -f /guest/usbmon.ko ] && cp /guest/usbmon.ko $d/guest/
  [ "$1" = xen-hcd ] || cp /guest/$1.ko $d/guest/
  cp /tests/lib.sh /tests/bench.sh /tests/usbmon.sh $d/tests/
  cp /tests/bench-domu.sh $d/init && chmod +x $d/init
  (cd $d && find . | cpio -o -H newc > /tmp/domu.cpio 2>/dev/null)
}
qusb_peer() {
  local du=qusb-fe bus addr a rc
  if [ ! -x /usr/libexec/xen-qemu-system-i386 ] || [ ! -f /guest/vmlinuz ]; then
    echo "BENCH-SKIP qusb: no /usr/libexec/xen-qemu-system-i386 or /guest/vmlinuz in dom0 (the host did not ship them)"
    return
  fi
  phase "qusb: load xhci-pci, build the frontend domU"
  if ! { timeout 30 insmod /guest/xhci-hcd.ko && timeout 30 insmod /guest/xhci-pci.ko; }; then
    bfail qusb-modules "insmod xhci-hcd/xhci-pci failed"; return
  fi
  if wait_for 60 usbip_find_busid; then
    bus=$(cat /sys/bus/usb/devices/$BUSID/busnum); addr=$(cat /sys/bus/usb/devices/$BUSID/devnum)
    domu_initramfs xen-hcd
    xt "qusb: stick $BUSID (bus $bus, address $addr); domU initramfs $(wc -c < /tmp/domu.cpio) bytes"
    domu_cfg $du "xt.mode=qusb xt.frontend=xen-hcd" 'usbctrl=["type=qusb,version=2,ports=4"]
usbdev=["hostbus='$bus',hostaddr='$addr',controller=0,port=1"]'
    xt_follow $du ""
    phase "qusb: xl create $du (QEMU backend)"
    rm -f /tmp/$du.rc
    ( timeout 120 xl -vvv create /tmp/$du.cfg > /tmp/$du.create.log 2>&1; echo $? > /tmp/$du.rc ) &
    wait_for 130 test -f /tmp/$du.rc
    rc=$(cat /tmp/$du.rc 2>/dev/null)
    if [ "$rc" != 0 ]; then
      bfail qusb-create "xl create $du with usbctrl type=qusb failed (rc=${rc:-hung}): $(grep -iE 'error|fail|cannot' /tmp/$du.create.log | tail -3 | tr '\n' ' ')"
      qusb_diag $du
    else
      local domid=$(xlt domid $du)
      xt "qusb: domU $du is domain $domid; $(timeout 10 xl usb-list $du 2>&1 | tr '\n' ' ')"
      # dom0's busy CPU time across the domU's sequential read (QEMU's backend work is dom0's),
      # bounded by the domU's phase lines as they arrive (polled every 0.5 s; the read takes
      # tens of seconds). The domU reports its own as qusb-frontend-seq-cpu-s.
      local c0 c1 log="$CONSOLE_DIR/guest-$du.log"
      if wait_for 300 grep -q 'phase qusb: seq read' "$log"; then
        c0=$(busy_ticks)
        if wait_for 300 grep -q 'BENCH-MEASURE qusb-seq-mib-s' "$log"; then
          c1=$(busy_ticks)
          M qusb-seq-cpu-s "$(awk -v a=$c0 -v b=$c1 'BEGIN { printf "%.3f", (b - a) / 100 }')"
        fi
      fi
      if [ -z "$domid" ] || ! wait_for 400 domu_over $du $domid; then
        bfail qusb-domu "the domU did not finish within 400 s"
        qusb_diag $du
      elif ! grep -q 'XT-DOMU-DONE' "$CONSOLE_DIR/guest-$du.log"; then
        bfail qusb-domu "the domU is gone without finishing: $(grep -E 'panic|Failed' "$CONSOLE_DIR/guest-$du.log" | head -2 | tr '\n' ' ')"
        qusb_diag $du
      fi
    fi
    sleep 1
    xt_unfollow
    timeout 30 xl destroy $du 2>/dev/null
  else
    bfail qusb-busid "no 46f4:0001 in /sys/bus/usb/devices within 60 s"
  fi
  for a in xhci_pci xhci_hcd; do timeout 30 rmmod $a || xt "rmmod $a failed"; done
  wait_for 20 no_disk || bfail qusb-release "a /dev/sd* is still there after rmmod xhci_pci"
}

# usbdom_start ZC: create usbdom with the controller (XT_BDF) and usbdom.zero_copy=ZC on its
# command line (memory=$XT_MEM, retried once at 16), follow its console, wait for "usbdom: ready".
# Returns like xt_up.
usbdom_start() {
  local cfg="pci=['$XT_BDF']
extra='usbdom.zero_copy=$1 usbdom.trace=1'" rc
  xt_follow "$XT_NAME"
  xt_create "$XT_NAME" "${XT_MEM:-8}" "$cfg"; rc=$?
  if [ $rc = 1 ] && [ "${XT_MEM:-8}" = 8 ]; then
    xt "memory=8 did not start: retrying with memory=16"
    xlt destroy "$XT_NAME" 2>/dev/null
    XT_MEM=16
    xt_create "$XT_NAME" 16 "$cfg"; rc=$?
  fi
  [ $rc = 0 ] || return $rc
  xt_wait_console "$XT_NAME" 'usbdom: ready' "${XT_READY_TIMEOUT:-90}" && { xt "usbdom ready"; return 0; }
  xt "usbdom did not reach 'usbdom: ready'"
  xt_diag
  return 1
}

# via_usbdom MODE ZC NAME: usbdom with data path ZC (0 grant copy, 1 grant map), as domain NAME,
# serves the stick to dom0 (xen-hcd frontend), which measures it as MODE; then usbdom shuts down.
# Only the first run is named "usbdom": the host reads the create and ready times of that name.
via_usbdom() {
  local mode=$1 zc=$2 rc crc
  XT_NAME=$3
  local B="--backend $XT_NAME"
  phase "$mode: start usbdom (zero_copy=$zc)"
  usbdom_start "$zc"; rc=$?
  if [ $rc = 0 ]; then
    M $mode-domid "$(xlt domid "$XT_NAME")"
    wait_for 30 xt_find_devs $B || bfail $mode-list "usbdom list shows no stick"
    phase "$mode: connect dom0's xen-hcd"
    t0=$(uptime_s)
    out=$(timeout 30 usbdom create-controller $FE --ports 1 --version 2 --wait $B 2>&1)
    crc=$?
    if [ $crc = 0 ]; then
      [ $mode = usbdom ] && M create-controller-to-connected-s "$(secs_since $t0)"
      be=$(xenstore-read /local/domain/$FE/device/vusb/0/backend 2>/dev/null)
      xt "backend $be state $(xenstore-read $be/state 2>/dev/null)"
    else
      bfail $mode-create-controller "rc=$crc: $out"
    fi
    if [ -n "$STICK" ] && [ $crc = 0 ]; then
      t0=$(uptime_s)
      if timeout 30 usbdom attach $FE 1 "$STICK" --wait $B >/tmp/attach.out 2>&1 && wait_for 60 new_disk; then
        [ $mode = usbdom ] && M attach-to-disk-s "$(secs_since $t0)"
        xt "$mode: /dev/$DISK ($(cat /sys/block/$DISK/size) sectors)"
        # The SG frontend's 1 MiB commands (usb-storage keeps 120 KiB unless told: a udev rule
        # in production, tests/xen-hcd/xen-hcd-sg.patch).
        [ -n "$SG_MAX_SECTORS" ] && echo "$SG_MAX_SECTORS" > /sys/block/$DISK/device/max_sectors
        xt "$mode: queue max_sectors_kb=$(cat /sys/block/$DISK/queue/max_sectors_kb) max_hw_sectors_kb=$(cat /sys/block/$DISK/queue/max_hw_sectors_kb) max_segments=$(cat /sys/block/$DISK/queue/max_segments) frontend $(readlink /sys/bus/xen/devices/vusb-0/driver/module | sed 's,.*/,,')"
        # Pauses longer than usbdom's 10 s statistics window around the phases, so each of its
        # statistics lines covers one phase only.
        PAUSE=11 BACKEND_DOM=$XT_NAME measure $mode
      else
        bfail $mode-disk "attach or /dev/sdX failed: $(cat /tmp/attach.out)"
      fi
      timeout 30 usbdom detach $FE 1 $B >/dev/null 2>&1 || xt "detach failed"
      wait_for 20 no_disk || xt "disk still present after detach"
    fi
    [ $crc = 0 ] && { timeout 30 usbdom remove-controller $FE $B >/dev/null 2>&1 || xt "remove-controller failed"; }
  else
    bfail $mode-up "usbdom did not come up (rc=$rc)"
  fi
  if [ $rc = 2 ]; then xt_unfollow; xt_dump "$XT_NAME"; exit 2; fi
  xt_down || xt "usbdom shutdown was not clean"
}

# 3. usbdom-sg: grant copy (a fresh usbdom), dom0's frontend the scatter-gather xen-hcd-sg.ko.
sg_phase() {
  timeout 20 rmmod xen_hcd || xt "rmmod xen_hcd failed"
  [ -d /sys/module/xen_hcd ] && bfail usbdom-sg-module "xen_hcd is still loaded"
  if timeout 30 insmod /guest/xen-hcd-sg.ko; then
    SG_MAX_SECTORS=2048 via_usbdom usbdom-sg 0 usbdom-sg
    timeout 20 rmmod xen_hcd_sg || xt "rmmod xen_hcd_sg failed"
    timeout 30 modprobe xen-hcd || xt "modprobe xen-hcd failed"
  else
    bfail usbdom-sg-module "insmod /guest/xen-hcd-sg.ko failed"
  fi
}

# via_usbdom_domu MODE FRONTEND: usbdom (grant copy, a fresh one) serves the stick to a Linux PV
# domU, the production shape, which is the xen-hcd frontend (FRONTEND: xen-hcd, or xen-hcd-sg
# from /guest/xen-hcd-sg.ko) and measures it itself (tests/xen/bench-domu.sh). Its console and
# usbdom's are both followed. dom0's CPU rows are not taken here (dom0 only relays consoles).
via_usbdom_domu() {
  local mode=$1 fe=$2 du=$1-fe rc domid ufp dfp log
  XT_NAME=usbdom-du
  local B="--backend $XT_NAME"
  if [ ! -f /guest/vmlinuz ]; then
    echo "BENCH-SKIP $mode: no /guest/vmlinuz in dom0 for the domU (the host did not ship it)"
    return
  fi
  phase "$mode: start usbdom, build the frontend domU"
  usbdom_start 0; rc=$?
  if [ $rc != 0 ]; then
    bfail $mode-up "usbdom did not come up (rc=$rc)"
    [ $rc = 2 ] && { xt_unfollow; xt_dump "$XT_NAME"; exit 2; }
    xt_down
    return
  fi
  ufp=$XT_FOLLOW_PID
  wait_for 30 xt_find_devs $B || bfail $mode-list "usbdom list shows no stick"
  domu_initramfs $fe
  domu_cfg $du "xt.mode=$mode xt.frontend=$fe xt.pause=11"
  log=$CONSOLE_DIR/guest-$du.log
  xt_follow $du ""; dfp=$XT_FOLLOW_PID
  phase "$mode: xl create $du"
  rm -f /tmp/$du.rc
  ( timeout 120 xl create /tmp/$du.cfg > /tmp/$du.create.log 2>&1; echo $? > /tmp/$du.rc ) &
  wait_for 130 test -f /tmp/$du.rc
  rc=$(cat /tmp/$du.rc 2>/dev/null)
  domid=$(xlt domid $du 2>/dev/null)
  if [ "$rc" != 0 ] || [ -z "$domid" ]; then
    bfail $mode-create "xl create $du failed (rc=${rc:-hung}): $(tail -3 /tmp/$du.create.log | tr '\n' ' ')"
  elif ! wait_for 120 grep -q "XT: $mode: domU frontend ready" "$log"; then
    bfail $mode-domu "the domU did not load its frontend within 120 s"
  elif ! timeout 30 usbdom create-controller $domid --ports 1 --version 2 --wait $B >/tmp/cc.out 2>&1 ||
    ! timeout 30 usbdom attach $domid 1 "$STICK" --wait $B >>/tmp/cc.out 2>&1; then
    bfail $mode-attach "create-controller/attach for domain $domid failed: $(tr '\n' ' ' < /tmp/cc.out)"
  elif ! domu_cpu $mode $log || ! wait_for 600 domu_over $du $domid; then
    bfail $mode-domu "the domU did not finish within 600 s"
  elif ! grep -q 'XT-DOMU-DONE' "$log"; then
    bfail $mode-domu "the domU is gone without finishing: $(grep -E 'panic|Failed' "$log" | head -2 | tr '\n' ' ')"
  fi
  sleep 1
  kill $dfp 2>/dev/null
  timeout 30 xl destroy $du 2>/dev/null
  XT_FOLLOW_PID=$ufp
  phase "$mode: done"
  xt_down || xt "usbdom shutdown was not clean"
}
# domu_cpu MODE LOG: dom0's busy time and usbdom's CPU time across the domU's sequential read,
# bounded by its phase lines as they arrive in LOG (polled every 0.5 s; the read takes tens of
# seconds): MODE-seq-cpu-s and MODE-backend-seq-cpu-s. Fails only if the read never started.
domu_cpu() {
  local c0 c1 d0 d1
  wait_for 300 grep -q "phase $1: seq read" "$2" || return 1
  c0=$(busy_ticks); d0=$(dom_cpu $XT_NAME)
  if wait_for 300 grep -q "BENCH-MEASURE $1-seq-mib-s" "$2"; then
    c1=$(busy_ticks); d1=$(dom_cpu $XT_NAME)
    M $1-seq-cpu-s "$(awk -v a=$c0 -v b=$c1 'BEGIN { printf "%.3f", (b - a) / 100 }')"
    [ -n "$d0" ] && [ -n "$d1" ] && M $1-backend-seq-cpu-s "$(awk -v a=$d0 -v b=$d1 'BEGIN { printf "%.1f", b - a }')"
  fi
  return 0
}
# Sourced by a frontend domU (tests/xen/bench-domu.sh) for `measure` only.
[ -n "$BENCH_LIB_ONLY" ] && return 0

# The modes, in order: dom0 owning the controller (direct, then usbip), then through usbdom, both
# data paths side by side: grant copy ("usbdom"; its create and ready times are read by the host
# from the serial stamps of this first run), then grant map ("usbmap").
direct
usbip_peer
qusb_peer
XT_BDF=$(xt_controller_bdf "${XT_PCI_ID:-1b36:000d}")
if [ -n "$XT_BDF" ] && xt_assign "$XT_BDF"; then
  timeout 30 modprobe xen-hcd || bfail modprobe-xen-hcd "modprobe xen-hcd failed"
  via_usbdom usbdom 0 usbdom
  via_usbdom usbmap 1 usbdom-map
  sg_phase
  via_usbdom_domu usbdom-domu xen-hcd
  via_usbdom_domu usbdom-domu-sg xen-hcd-sg
else
  bfail usbdom-up "no USB host controller to assign ($XT_BDF)"
fi
for m in usb-storage xen-hcd; do timeout 20 modprobe -r $m || xt "modprobe -r $m failed"; done
xt "bench done: $fails failed"
exit $fails
