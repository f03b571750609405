//! A second back ring that shares the event channel of a [`xenidc::channel::Connection`].
//!
//! `usbif` uses two ring pages (urb ring and conn ring) but **one** event channel
//! (`io/usbif.h`; `../shared/reference/pvusb-protocol.md` §1.2). xenidc's
//! [`BackChannel`](xenidc::channel::BackChannel) binds its own port, so it cannot carry the conn
//! ring. This thin adapter maps the conn ring page and drives it with xenidc's
//! [`BackRing`], notifying through the port the urb channel bound. The
//! ring logic itself (index validation, hold-off) is xenidc's; this file only owns the mapping.
//!
//! It should move into xenidc as `BackChannel::connect_shared(port)` once that exists; the backend
//! then drops this file.

use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::channel::ChannelError;
use xenidc::hypervisor::{Hypervisor, Mapping};
use xenidc::ring::{BackRing, RingEntry, RingError};

/// A mapped back ring without its own event channel.
pub struct SharedPortRing<H: Hypervisor, Req, Rsp> {
    ring: BackRing<H::Mem, Req, Rsp>,
    handle: xenidc::abi::GrantHandle,
    bus_addr: u64,
    dom: DomId,
    gref: GrantRef,
    failed: Option<RingError>,
}

impl<H: Hypervisor, Req: RingEntry, Rsp: RingEntry> SharedPortRing<H, Req, Rsp> {
    /// Map `peer`'s ring page `gref` writable and attach a back ring to it.
    pub fn connect(hv: &mut H, peer: DomId, gref: GrantRef) -> Result<Self, ChannelError> {
        let m = hv.map_grant(peer, gref, false)?;
        let (handle, bus_addr) = (m.handle, m.bus_addr);
        match BackRing::try_attach(m.mem) {
            Ok(ring) => Ok(SharedPortRing {
                ring,
                handle,
                bus_addr,
                dom: peer,
                gref,
                failed: None,
            }),
            Err((e, mem)) => {
                let _ = hv.unmap_grant(Mapping {
                    mem,
                    handle,
                    bus_addr,
                    dom: peer,
                    gref,
                    readonly: false,
                });
                Err(ChannelError::Ring(e))
            }
        }
    }

    fn guard<T>(&mut self, r: Result<T, RingError>) -> Result<T, ChannelError> {
        if let Some(e) = self.failed {
            return Err(ChannelError::Ring(e));
        }
        r.map_err(|e| {
            if e.is_peer_error() {
                self.failed = Some(e);
            }
            ChannelError::Ring(e)
        })
    }

    /// The next request copied out of the ring.
    pub fn receive(&mut self) -> Result<Option<Req>, ChannelError> {
        let r = if self.failed.is_some() {
            Ok(None)
        } else {
            self.ring.next_request()
        };
        self.guard(r)
    }

    /// Queue a response.
    pub fn respond(&mut self, rsp: &Rsp) -> Result<(), ChannelError> {
        let r = self.ring.push_response(rsp);
        self.guard(r)
    }

    /// Publish responses; notify through `port` (the urb channel's) if the peer asked for it.
    pub fn flush(&mut self, hv: &mut H, port: Port) -> Result<bool, ChannelError> {
        let r = self.ring.publish_responses();
        let notify = self.guard(r)?;
        if notify {
            hv.evtchn_send(port)?;
        }
        Ok(notify)
    }

    /// Whether the peer broke the ring protocol.
    pub fn failed(&self) -> Option<RingError> {
        self.failed
    }

    /// Unmap the page.
    pub fn disconnect(self, hv: &mut H) -> Result<(), ChannelError> {
        hv.unmap_grant(Mapping {
            mem: self.ring.into_mem(),
            handle: self.handle,
            bus_addr: self.bus_addr,
            dom: self.dom,
            gref: self.gref,
            readonly: false,
        })?;
        Ok(())
    }
}
