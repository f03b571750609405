#!/bin/sh
# `cargo xtask run`: bring usbdom up with an emulated stick, show what it prints, then let dom0 be
# a xen-hcd frontend of usbdom and show the stick reaching it as /dev/sdX (tests/xen/frontend.sh).
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 0 ]; then
  xt "running the frontend scenario"
  timeout 300 /tests/frontend.sh; frc=$?
  xt "frontend scenario rc=$frc"
  [ $frc = 0 ] || rc=1
  sleep "${XT_HOLD:-3}"
fi
xt_down || rc=1
exit $rc
