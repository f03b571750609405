# Helpers sourced by the dom0 scripts of the Xen tier (busybox sh). Every step is bounded.
# Markers the host harness (xtask/src/xen.rs) reads from the serial console:
#   "XT: ..."                   progress and facts
#   "U| <line>"                 live copy of the usbdom console (timing of its lines)
#   "XT-CONSOLE-BEGIN <name>", "C| <line>"..., "XT-CONSOLE-END <name>"   the full console at the end
XT_NAME=${XT_NAME:-usbdom}
XT_CREATE_TIMEOUT=${XT_CREATE_TIMEOUT:-120}
CONSOLE_DIR=/var/log/xen/console

xt() { echo "XT: $*"; }
# xl with a bound: a wedged toolstack must not hang a step.
xlt() { timeout "${XT_XL_TIMEOUT:-30}" xl "$@"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN{printf "%.1f", b-a}'; }

# wait_for SECS CMD...: run CMD every 0.5 s until it succeeds; 1 after SECS.
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

# xt_find_devs [ARGS]: LIST = the output of `usbdom list ARGS`; STICK and KBD = the paths of
# QEMU's usb-storage (46f4:0001) and usb-kbd (0627:0001) in it. 0 when the stick is listed.
xt_find_devs() {
  LIST=$(timeout 10 usbdom list "$@" 2>&1)
  STICK=$(echo "$LIST" | awk '$2 == "46f4:0001" { print $1; exit }')
  KBD=$(echo "$LIST" | awk '$2 == "0627:0001" { print $1; exit }')
  [ -n "$STICK" ]
}
# xt_find_both [ARGS]: xt_find_devs, and 0 only when the keyboard is listed too.
xt_find_both() { xt_find_devs "$@" && [ -n "$KBD" ]; }

# xt_controller_bdf [vvvv:dddd]: the BDF (ssss:bb:dd.f) of the first PCI device with that ID, else of
# the first USB host controller (class 0x0c03xx).
xt_controller_bdf() {
  local want=$1 d v id
  if [ -n "$want" ]; then
    for d in /sys/bus/pci/devices/*; do
      v=$(cat $d/vendor); id=$(cat $d/device)
      [ "${v#0x}:${id#0x}" = "$want" ] && { basename $d; return 0; }
    done
  fi
  for d in /sys/bus/pci/devices/*; do
    case $(cat $d/class) in 0x0c03*) basename $d; return 0;; esac
  done
  return 1
}

# xt_assign BDF: make the device assignable to a domU (bind to xen-pciback).
xt_assign() {
  modprobe xen-pciback || { xt "modprobe xen-pciback failed"; return 1; }
  timeout 60 xl pci-assignable-add "$1"; local rc=$?
  xt "pci-assignable-add $1 rc=$rc"
  return $rc
}

# xt_create NAME MEMORY "cfg lines": xl create in the background with a bounded wait.
# Returns 0 created, 1 failed, 2 hung (diagnostics printed).
xt_create() {
  local name=$1 mem=$2 cfgextra=$3 t0 i rc
  cat > /tmp/$name.cfg <<CFG
name="$name"
type="pv"
kernel="/guest/usbdom"
memory=$mem
vcpus=1
on_poweroff="destroy"
on_crash="preserve"
$cfgextra
CFG
  xt "---- /tmp/$name.cfg ----"; sed 's/^/XT:   /' /tmp/$name.cfg
  rm -f /tmp/$name.create.rc
  t0=$(uptime_s)
  xt "xl create $name start (memory=$mem)"
  ( xl -vvv create /tmp/$name.cfg > /tmp/$name.create.log 2>&1; echo $? > /tmp/$name.create.rc ) &
  for i in $(seq 1 $((XT_CREATE_TIMEOUT * 2))); do [ -f /tmp/$name.create.rc ] && break; sleep 0.5; done
  if [ ! -f /tmp/$name.create.rc ]; then
    xt "xl create HUNG (> ${XT_CREATE_TIMEOUT}s)"
    tail -40 /tmp/$name.create.log
    xt_diag
    return 2
  fi
  rc=$(cat /tmp/$name.create.rc)
  xt "xl create rc=$rc (took $(elapsed $t0)s)"
  if [ "$rc" != 0 ]; then tail -30 /tmp/$name.create.log; return 1; fi
  xt "domid of $name: $(xlt domid $name 2>/dev/null)"
  return 0
}

# xt_follow NAME [PREFIX]: copy the domain's console log to our console live, prefixed "U| "
# (or PREFIX, which may be empty).
xt_follow() {
  local f=$CONSOLE_DIR/guest-$1.log p="${2-U| }"
  ( n=0
    while :; do
      if [ -f "$f" ]; then
        m=$(wc -l < "$f")
        if [ "$m" -gt "$n" ]; then sed -n "$((n + 1)),${m}p" "$f" | sed "s/^/$p/"; n=$m; fi
      fi
      sleep 0.3
    done ) &
  XT_FOLLOW_PID=$!
}
xt_unfollow() { [ -n "$XT_FOLLOW_PID" ] && kill $XT_FOLLOW_PID 2>/dev/null; XT_FOLLOW_PID=""; }

# xt_wait_console NAME PATTERN SECS: wait until the console log has PATTERN (grep -E).
# Stops early on a panic or when the domain is gone. Returns 0 found, 1 not.
xt_wait_console() {
  local f=$CONSOLE_DIR/guest-$1.log i
  for i in $(seq 1 $(($3 * 2))); do
    grep -qE "$2" "$f" 2>/dev/null && return 0
    grep -q 'PANIC at' "$f" 2>/dev/null && { xt "$1 panicked"; return 1; }
    xlt domid "$1" >/dev/null 2>&1 || { xt "$1 is gone"; return 1; }
    sleep 0.5
  done
  return 1
}

# xt_start_usbdom BDF: create the driver domain (memory=8, retried once with 16 if the create
# fails) and follow its console. Returns like xt_create.
xt_start_usbdom() {
  local bdf=$1 pci="" rc
  [ -n "$bdf" ] && pci="pci=['$bdf']"
  xt_follow "$XT_NAME"
  xt_create "$XT_NAME" "${XT_MEM:-8}" "$pci"; rc=$?
  if [ $rc = 1 ] && [ "${XT_MEM:-8}" = 8 ]; then
    xt "memory=8 did not start: retrying with memory=16"
    xlt destroy "$XT_NAME" 2>/dev/null
    xt_create "$XT_NAME" 16 "$pci"; rc=$?
  fi
  return $rc
}

# xt_shutdown NAME SECS: xl shutdown, then wait until the domain is gone.
xt_shutdown() {
  local t0=$(uptime_s) i
  timeout 30 xl shutdown "$1"; xt "xl shutdown $1 rc=$?"
  for i in $(seq 1 $(($2 * 2))); do
    xlt domid "$1" >/dev/null 2>&1 || { xt "domain $1 gone after shutdown ($(elapsed $t0)s)"; return 0; }
    sleep 0.5
  done
  xt "domain $1 STILL PRESENT $2s after xl shutdown"
  xlt list
  timeout 60 xl destroy "$1"
  return 1
}

# xt_dump NAME: the whole console log between markers.
xt_dump() {
  echo "XT-CONSOLE-BEGIN $1"
  sed 's/^/C| /' "$CONSOLE_DIR/guest-$1.log" 2>/dev/null
  echo
  echo "XT-CONSOLE-END $1"
}

# xt_diag: state for a failure report.
xt_diag() {
  xt "---- diagnostics: xl list ----"; timeout 20 xl list
  xt "---- diagnostics: xl dmesg (tail) ----"; timeout 20 xl dmesg | tail -40
  xt "---- diagnostics: dom0 dmesg (tail) ----"; dmesg | tail -25
  xt "---- diagnostics: processes ----"; ps | grep -E 'xl|xen' | grep -v grep
}

# xt_up: find, assign and start usbdom, wait until it is ready. Sets XT_BDF. Returns 0 ready,
# 1 failure (usbdom started but not ready, or create failed), 2 create hung.
xt_up() {
  XT_BDF=$(xt_controller_bdf "${XT_PCI_ID:-1b36:000d}")
  if [ -z "$XT_BDF" ]; then xt "no USB host controller in dom0"; lspci -nn 2>/dev/null; return 1; fi
  xt "controller $XT_BDF ($(cat /sys/bus/pci/devices/$XT_BDF/vendor):$(cat /sys/bus/pci/devices/$XT_BDF/device))"
  xt_assign "$XT_BDF" || return 1
  xt_start_usbdom "$XT_BDF"; local rc=$?
  [ $rc = 0 ] || return $rc
  if xt_wait_console "$XT_NAME" 'usbdom: ready' "${XT_READY_TIMEOUT:-90}"; then
    xt "usbdom ready"
    return 0
  fi
  xt "usbdom did not reach 'usbdom: ready' (gone, panicked or ${XT_READY_TIMEOUT:-90}s timeout)"
  xt_diag
  return 1
}

# xt_down: shut usbdom down cleanly and dump its console.
xt_down() {
  local rc=0
  if xlt domid "$XT_NAME" >/dev/null 2>&1; then
    xt_shutdown "$XT_NAME" "${XT_SHUTDOWN_TIMEOUT:-30}" || rc=1
  else
    xt "domain $XT_NAME was already gone before xl shutdown"; rc=1
  fi
  sleep 1
  xt_unfollow
  xt_dump "$XT_NAME"
  return $rc
}
