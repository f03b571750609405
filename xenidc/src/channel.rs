//! Channels: the connected ring + event channel + state that backends (and the test frontend) use
//! instead of raw rings and grants — the "channel" of the xenidc design.
//!
//! - [`BackChannel`]: maps the frontend's ring page, binds to its event channel, hands out requests
//!   (each copied out of the ring once), takes responses, and notifies with `io/ring.h` hold-off.
//!   A protocol error by the peer puts the channel into [`ChannelState::Failed`]; the owner then
//!   tears the connection down. Other channels are unaffected.
//! - [`Connection`]: a back channel plus its [`Mapper`], with resources reserved up front;
//!   [`Connection::complete`] releases a request's buffer *before* pushing its response, and
//!   [`Connection::teardown`] releases every mapping, the ring and the port at any moment.
//! - [`FrontChannel`]: allocates and grants a ring page and an unbound port for a backend (the
//!   frontend side; used by the test frontend).

use crate::abi::{DomId, GrantHandle, GrantRef, Port};
use crate::buffer::{BufferError, LocalBuffer, Mapper};
use crate::hypervisor::{Hypervisor, LocalPage, Mapping, XenError};
use crate::ring::{BackRing, FrontRing, RingEntry, RingError};
use crate::shm::SharedMem;
use core::fmt;

/// Errors of the channel layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    Ring(RingError),
    Xen(XenError),
    Buffer(BufferError),
    /// The channel failed earlier (peer protocol error) and only accepts teardown.
    Failed,
}

impl ChannelError {
    /// True if the peer violated the protocol (disconnect it).
    pub fn is_peer_error(&self) -> bool {
        match self {
            ChannelError::Ring(e) => e.is_peer_error(),
            ChannelError::Buffer(e) => e.is_peer_error(),
            _ => false,
        }
    }
}

impl From<RingError> for ChannelError {
    fn from(e: RingError) -> Self {
        ChannelError::Ring(e)
    }
}
impl From<XenError> for ChannelError {
    fn from(e: XenError) -> Self {
        ChannelError::Xen(e)
    }
}
impl From<BufferError> for ChannelError {
    fn from(e: BufferError) -> Self {
        ChannelError::Buffer(e)
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Ring(e) => write!(f, "ring: {e}"),
            ChannelError::Xen(e) => write!(f, "hypervisor: {e}"),
            ChannelError::Buffer(e) => write!(f, "buffer: {e}"),
            ChannelError::Failed => write!(f, "channel failed earlier"),
        }
    }
}

/// State of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Connected,
    /// The peer broke the protocol; the channel must be torn down.
    Failed(RingError),
}

/// Counters of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub received: u64,
    pub responded: u64,
    pub notifications_sent: u64,
}

/// Mapping metadata kept while the ring page's view lives inside the ring.
#[derive(Debug, Clone, Copy)]
struct RingMapping {
    handle: GrantHandle,
    bus_addr: u64,
    dom: DomId,
    gref: GrantRef,
}

/// The backend end of a channel: a frontend's ring page mapped, and an event channel bound.
pub struct BackChannel<H: Hypervisor, Req, Rsp> {
    ring: BackRing<H::Mem, Req, Rsp>,
    map: RingMapping,
    port: Port,
    state: ChannelState,
    stats: ChannelStats,
}

impl<H: Hypervisor, Req: RingEntry, Rsp: RingEntry> BackChannel<H, Req, Rsp> {
    /// Map `peer`'s ring page `ring_ref` (writable) and bind to its port `remote_port`. On
    /// failure nothing stays mapped or bound.
    pub fn connect(
        hv: &mut H,
        peer: DomId,
        ring_ref: GrantRef,
        remote_port: Port,
    ) -> Result<Self, ChannelError> {
        let m = hv.map_grant(peer, ring_ref, false)?;
        let map = RingMapping {
            handle: m.handle,
            bus_addr: m.bus_addr,
            dom: m.dom,
            gref: m.gref,
        };
        let ring = match BackRing::try_attach(m.mem) {
            Ok(r) => r,
            Err((e, mem)) => {
                let _ = hv.unmap_grant(Mapping {
                    mem,
                    handle: map.handle,
                    bus_addr: map.bus_addr,
                    dom: map.dom,
                    gref: map.gref,
                    readonly: false,
                });
                return Err(ChannelError::Ring(e));
            }
        };
        let port = match hv.evtchn_bind_interdomain(peer, remote_port) {
            Ok(p) => p,
            Err(e) => {
                let _ = hv.unmap_grant(Mapping {
                    mem: ring.into_mem(),
                    handle: map.handle,
                    bus_addr: map.bus_addr,
                    dom: map.dom,
                    gref: map.gref,
                    readonly: false,
                });
                return Err(e.into());
            }
        };
        Ok(BackChannel {
            ring,
            map,
            port,
            state: ChannelState::Connected,
            stats: ChannelStats::default(),
        })
    }

    /// The local event-channel port (match it against pending ports).
    pub fn port(&self) -> Port {
        self.port
    }
    pub fn peer(&self) -> DomId {
        self.map.dom
    }
    pub fn state(&self) -> ChannelState {
        self.state
    }
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }
    /// Requests received and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.ring.in_flight()
    }
    /// Ring size (entries): the most requests that can be in flight.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    fn guard<T>(&mut self, r: Result<T, RingError>) -> Result<T, ChannelError> {
        r.map_err(|e| {
            if e.is_peer_error() {
                self.state = ChannelState::Failed(e);
            }
            ChannelError::Ring(e)
        })
    }

    /// The next request, copied out of the ring, or `None`.
    pub fn receive(&mut self) -> Result<Option<Req>, ChannelError> {
        if let ChannelState::Failed(_) = self.state {
            return Err(ChannelError::Failed);
        }
        let r = self.ring.next_request();
        let r = self.guard(r)?;
        if r.is_some() {
            self.stats.received += 1;
        }
        Ok(r)
    }

    /// Queue a response (made visible by [`BackChannel::flush`]).
    pub fn respond(&mut self, rsp: &Rsp) -> Result<(), ChannelError> {
        if let ChannelState::Failed(_) = self.state {
            return Err(ChannelError::Failed);
        }
        self.ring.push_response(rsp)?;
        self.stats.responded += 1;
        Ok(())
    }

    /// Publish queued responses and notify the peer if it asked to be. Returns whether it was
    /// notified.
    pub fn flush(&mut self, hv: &mut H) -> Result<bool, ChannelError> {
        if let ChannelState::Failed(_) = self.state {
            return Err(ChannelError::Failed);
        }
        let notify = self.ring.publish_responses()?;
        if notify {
            hv.evtchn_send(self.port)?;
            self.stats.notifications_sent += 1;
        }
        Ok(notify)
    }

    /// Before going idle: true if more requests arrived (keep working), false if the channel
    /// armed its notification and may sleep.
    pub fn idle_check(&mut self) -> Result<bool, ChannelError> {
        if let ChannelState::Failed(_) = self.state {
            return Err(ChannelError::Failed);
        }
        let r = self.ring.final_check_for_requests();
        self.guard(r)
    }

    /// Unbind the port and unmap the ring page. The first error is returned; both are attempted.
    pub fn disconnect(self, hv: &mut H) -> Result<(), ChannelError> {
        let a = hv.evtchn_close(self.port);
        let b = hv.unmap_grant(Mapping {
            mem: self.ring.into_mem(),
            handle: self.map.handle,
            bus_addr: self.map.bus_addr,
            dom: self.map.dom,
            gref: self.map.gref,
            readonly: false,
        });
        a?;
        b?;
        Ok(())
    }
}

/// What [`Connection::teardown`] released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Data mappings that were still held (requests in flight when the connection went away).
    pub mappings_released: usize,
    /// Requests that were in flight (received, not answered).
    pub requests_abandoned: u32,
    /// Set if unbinding or unmapping the ring failed (e.g. the peer domain is already gone).
    pub ring_error: Option<ChannelError>,
}

/// A backend connection: a [`BackChannel`] and the [`Mapper`] for its requests' buffers, with
/// every resource reserved at connect time.
pub struct Connection<H: Hypervisor, Req, Rsp> {
    channel: BackChannel<H, Req, Rsp>,
    mapper: Mapper<H>,
}

impl<H: Hypervisor, Req: RingEntry, Rsp: RingEntry> Connection<H, Req, Rsp> {
    /// Connect to `peer`'s ring and reserve `segments_per_request` mapping slots and
    /// `bounce_pages` bounce pages per ring slot.
    pub fn connect(
        hv: &mut H,
        peer: DomId,
        ring_ref: GrantRef,
        remote_port: Port,
        segments_per_request: usize,
        bounce_pages_per_request: usize,
    ) -> Result<Self, ChannelError> {
        let channel = BackChannel::connect(hv, peer, ring_ref, remote_port)?;
        let n = channel.ring_size() as usize;
        match Mapper::new(
            hv,
            peer,
            n * segments_per_request,
            n * bounce_pages_per_request,
        ) {
            Ok(mapper) => Ok(Connection { channel, mapper }),
            Err(e) => {
                let _ = channel.disconnect(hv);
                Err(e.into())
            }
        }
    }

    pub fn channel(&mut self) -> &mut BackChannel<H, Req, Rsp> {
        &mut self.channel
    }
    pub fn mapper(&mut self) -> &mut Mapper<H> {
        &mut self.mapper
    }
    /// Both halves at once.
    pub fn parts(&mut self) -> (&mut BackChannel<H, Req, Rsp>, &mut Mapper<H>) {
        (&mut self.channel, &mut self.mapper)
    }
    pub fn port(&self) -> Port {
        self.channel.port()
    }
    pub fn state(&self) -> ChannelState {
        self.channel.state()
    }

    /// Finish a request: release its buffer (unmap / return bounce pages), then queue the
    /// response. A failed unmap is reported after the response was queued anyway (the frontend
    /// must get an answer).
    pub fn complete(
        &mut self,
        hv: &mut H,
        buf: Option<LocalBuffer>,
        rsp: &Rsp,
    ) -> Result<(), ChannelError> {
        let released = match buf {
            Some(b) => self.mapper.release(hv, b),
            None => Ok(()),
        };
        self.channel.respond(rsp)?;
        released?;
        Ok(())
    }

    /// Tear the connection down, at any moment: unmap every buffer still mapped, free the bounce
    /// pages, unbind the port and unmap the ring.
    pub fn teardown(self, hv: &mut H) -> TeardownReport {
        let requests_abandoned = self.channel.in_flight();
        let mappings_released = self.mapper.teardown(hv);
        let ring_error = self.channel.disconnect(hv).err();
        TeardownReport {
            mappings_released,
            requests_abandoned,
            ring_error,
        }
    }
}

/// The frontend end of a channel: our ring page granted to the backend and an unbound port.
pub struct FrontChannel<H: Hypervisor, Req, Rsp> {
    ring: FrontRing<H::Page, Req, Rsp>,
    frame: u64,
    bus_addr: u64,
    gref: GrantRef,
    port: Port,
    peer: DomId,
}

impl<H: Hypervisor, Req: RingEntry, Rsp: RingEntry> FrontChannel<H, Req, Rsp> {
    /// Allocate and initialise a ring page, grant it to `backend`, allocate an unbound port.
    pub fn create(hv: &mut H, backend: DomId) -> Result<Self, ChannelError> {
        let page = hv.alloc_page()?;
        let (frame, bus_addr) = (page.frame, page.bus_addr);
        let slot = crate::ring::slot_size::<Req, Rsp>();
        if crate::ring::ring_size::<Req, Rsp>(page.mem.size()) == 0 {
            let size = page.mem.size();
            hv.free_page(page);
            return Err(RingError::PageTooSmall { page: size, slot }.into());
        }
        let ring = FrontRing::init(page.mem)?;
        let gref = match hv.grant_access(frame, backend, false) {
            Ok(g) => g,
            Err(e) => {
                hv.free_page(LocalPage {
                    mem: ring.into_mem(),
                    frame,
                    bus_addr,
                });
                return Err(e.into());
            }
        };
        let port = match hv.evtchn_alloc_unbound(backend) {
            Ok(p) => p,
            Err(e) => {
                let _ = hv.end_access(gref);
                hv.free_page(LocalPage {
                    mem: ring.into_mem(),
                    frame,
                    bus_addr,
                });
                return Err(e.into());
            }
        };
        Ok(FrontChannel {
            ring,
            frame,
            bus_addr,
            gref,
            port,
            peer: backend,
        })
    }

    /// The grant reference of the ring page (advertise as e.g. `urb-ring-ref`).
    pub fn ring_ref(&self) -> GrantRef {
        self.gref
    }
    /// The local port (advertise as `event-channel`).
    pub fn port(&self) -> Port {
        self.port
    }
    pub fn peer(&self) -> DomId {
        self.peer
    }
    pub fn free_slots(&self) -> u32 {
        self.ring.free_requests()
    }
    pub fn outstanding(&self) -> u32 {
        self.ring.outstanding()
    }

    /// Queue a request (visible after [`FrontChannel::flush`]).
    pub fn send(&mut self, req: &Req) -> Result<(), ChannelError> {
        Ok(self.ring.push_request(req)?)
    }
    /// Publish queued requests; notify the backend if needed.
    pub fn flush(&mut self, hv: &mut H) -> Result<bool, ChannelError> {
        let notify = self.ring.publish_requests()?;
        if notify {
            hv.evtchn_send(self.port)?;
        }
        Ok(notify)
    }
    /// The next response, or `None`.
    pub fn receive(&mut self) -> Result<Option<Rsp>, ChannelError> {
        Ok(self.ring.next_response()?)
    }
    /// Before going idle: true if responses arrived meanwhile.
    pub fn idle_check(&mut self) -> Result<bool, ChannelError> {
        Ok(self.ring.final_check_for_responses()?)
    }
    /// Direct access to the ring page (tests of hostile frontends write raw indices).
    pub fn ring_page(&self) -> &H::Page {
        self.ring.mem()
    }

    /// Close the port and revoke the ring grant, then free the page. If the backend still has the
    /// ring mapped, revoking fails: the channel is handed back with the error, to retry later.
    pub fn close(self, hv: &mut H) -> Result<(), (Self, ChannelError)> {
        if let Err(e) = hv.end_access(self.gref) {
            return Err((self, e.into()));
        }
        let _ = hv.evtchn_close(self.port);
        hv.free_page(LocalPage {
            mem: self.ring.into_mem(),
            frame: self.frame,
            bus_addr: self.bus_addr,
        });
        Ok(())
    }
}
