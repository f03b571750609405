# usbmon in dom0 for the bench's breakdown of a read (sourced by tests/xen/bench.sh): the
# frontend's own timestamps of its URBs (Documentation/usb/usbmon.rst, text interface 'u': one
# line per submit S and completion C, microseconds). /guest/usbmon.ko is shipped by xtask.
# mon_start: capture every bus (0u) in the background. mon_stop [N]: stop, print the last N
# lines (default 12) as "XT: usbmon: <line>".
MON_PID=""
mon_start() {
  [ -d /sys/kernel/debug/usb ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
  [ -d /sys/module/usbmon ] || timeout 10 insmod /guest/usbmon.ko 2>/dev/null
  if [ ! -r /sys/kernel/debug/usb/usbmon/0u ]; then
    xt "usbmon: not available (no /sys/kernel/debug/usb/usbmon/0u)"
    return 1
  fi
  cat /sys/kernel/debug/usb/usbmon/0u > /tmp/usbmon.txt 2>/dev/null &
  MON_PID=$!
}
mon_stop() {
  [ -n "$MON_PID" ] || return 1
  kill "$MON_PID" 2>/dev/null
  wait "$MON_PID" 2>/dev/null
  MON_PID=""
  tail -n "${1:-12}" /tmp/usbmon.txt | sed 's/^/XT: usbmon: /'
}
