#!/bin/sh
# Xen tier, PVUSB: bring usbdom up, run /tests/pvusb.sh (dom0 itself as the xen-hcd frontend; one
# "PVUSB-CHECK PASS|FAIL" line per check, which the host judges); with $XT_PVUSB_DOMU=1 then
# /tests/pvusb-domu.sh (a second Linux domain as the frontend, destroyed mid-read, then dom0
# again); with $XT_PVUSB_SG=1, before the domU, /tests/pvusb-sg.sh (dom0 the frontend again, with
# the scatter-gather xen-hcd-sg.ko); then shut usbdom down cleanly.
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 0 ]; then
  timeout "${XT_PVUSB_TIMEOUT:-300}" /tests/pvusb.sh; prc=$?
  xt "pvusb.sh rc=$prc"
  [ $prc = 0 ] || rc=1
  if [ "$XT_PVUSB_SG" = 1 ]; then
    timeout "${XT_PVUSB_SG_TIMEOUT:-240}" /tests/pvusb-sg.sh; prc=$?
    xt "pvusb-sg.sh rc=$prc"
    [ $prc = 0 ] || rc=1
  fi
  if [ "$XT_PVUSB_DOMU" = 1 ]; then
    timeout "${XT_PVUSB_DOMU_TIMEOUT:-420}" /tests/pvusb-domu.sh; prc=$?
    xt "pvusb-domu.sh rc=$prc"
    [ $prc = 0 ] || rc=1
  fi
fi
if [ $rc = 2 ]; then xt_unfollow; xt_dump "$XT_NAME"; exit 2; fi
xt_down || rc=1
exit $rc
