#!/bin/sh
# Xen tier: usbdom as a PV driver domain with the emulated xHCI passed through. Brings it up, waits
# for its ready line (and its first interrupt), shuts it down cleanly. The host checks the console.
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 2 ]; then xt_unfollow; xt_dump "$XT_NAME"; exit 2; fi
if [ $rc = 0 ]; then
  xt_wait_console "$XT_NAME" 'irq: first interrupt received' 10 || xt "no interrupt line within 10s"
fi
xt_down || rc=1
exit $rc
