#!/bin/sh
# `cargo xtask e2e`: bring usbdom up, run the user's script (/tests/user.sh) in dom0 with a
# timeout, then shut usbdom down. The user script gets XT_NAME, XT_BDF and the domid in XT_DOMID.
. /tests/lib.sh
xt_up; rc=$?
if [ $rc = 0 ] && [ -x /tests/user.sh ]; then
  export XT_NAME XT_BDF XT_DOMID=$(xlt domid "$XT_NAME")
  xt "user script start"
  timeout "${XT_USER_TIMEOUT:-300}" /tests/user.sh; urc=$?
  xt "user script rc=$urc"
  [ $urc = 0 ] || rc=1
fi
[ $rc = 2 ] && { xt_unfollow; xt_dump "$XT_NAME"; exit 2; }
xt_down || rc=1
exit $rc
