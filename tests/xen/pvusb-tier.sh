#!/bin/sh
# Xen tier, PVUSB: bring usbdom up, run /tests/pvusb.sh (dom0 itself as the xen-hcd frontend; one
# "PVUSB-CHECK PASS|FAIL" line per check, which the host judges), then shut usbdom down cleanly.
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 0 ]; then
  timeout "${XT_PVUSB_TIMEOUT:-300}" /tests/pvusb.sh; prc=$?
  xt "pvusb.sh rc=$prc"
  [ $prc = 0 ] || rc=1
fi
if [ $rc = 2 ]; then xt_unfollow; xt_dump "$XT_NAME"; exit 2; fi
xt_down || rc=1
exit $rc
