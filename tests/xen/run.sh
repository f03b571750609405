#!/bin/sh
# `cargo xtask run`: bring usbdom up with an emulated stick, show what it prints, and (once the
# PVUSB backend exists) let a xen-hcd frontend in dom0 use the stick.
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 0 ]; then
  # ---- FRONTEND HOOK ----------------------------------------------------------------------
  # When the PVUSB backend and the dom0 tool exist, /tests/frontend.sh (tests/xen/frontend.sh)
  # attaches the stick to a xen-hcd frontend in dom0 and shows it as /dev/sdX.
  if [ -x /tests/frontend.sh ]; then
    xt "running the frontend scenario"
    timeout 300 /tests/frontend.sh; xt "frontend scenario rc=$?"
  else
    xt "no frontend scenario yet (tests/xen/frontend.sh): showing usbdom alone"
  fi
  # -------------------------------------------------------------------------------------------
  sleep "${XT_HOLD:-3}"
fi
xt_down || rc=1
exit $rc
