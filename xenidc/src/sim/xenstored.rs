//! The simulated xenstored wired to the simulated domains' xenstore ring pages.
//!
//! [`RingXenstored`] is the [`XenstoreService`] that connects [`crate::xenstore::server::Server`]
//! (the simulated xenstore server) to each domain's `xenstore_domain_interface` page through the
//! server end of [`crate::xenstore::ring::RingTransport`]: when a domain notifies its xenstore
//! port, its request bytes are fed to the server, and replies and watch events — for any domain —
//! are written to the rings of the domains concerned, which are then notified. Output that does not
//! fit a ring waits until that domain frees space and notifies again.

use super::XenstoreService;
use crate::abi::DomId;
use crate::shm::HostMem;
use crate::xenstore::client::Transport;
use crate::xenstore::ring::RingTransport;
use crate::xenstore::server::{ConnId, Server};
use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

fn no_notify() {}

struct Link {
    conn: ConnId,
    ring: RingTransport<HostMem, fn()>,
    out: Vec<u8>,
    broken: bool,
}

/// The simulated xenstored serving the domains' ring pages. Plug it in with
/// [`super::Sim::set_xenstore_service`].
pub struct RingXenstored {
    server: Rc<RefCell<Server>>,
    links: BTreeMap<u16, Link>,
}

impl RingXenstored {
    /// Serve `server` (shared, so tests can also inspect it or use it directly).
    pub fn new(server: Rc<RefCell<Server>>) -> RingXenstored {
        RingXenstored {
            server,
            links: BTreeMap::new(),
        }
    }

    /// True if domain `dom` broke the ring or wire protocol and was cut off.
    pub fn is_broken(&self, dom: DomId) -> bool {
        self.links.get(&dom.0).is_some_and(|l| l.broken)
    }
}

impl XenstoreService for RingXenstored {
    fn kick(&mut self, dom: DomId, page: &HostMem, notify: &mut dyn FnMut(DomId)) {
        let mut server = self.server.borrow_mut();
        let link = match self.links.entry(dom.0) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let Ok(ring) = RingTransport::server(page.clone(), no_notify as fn()) else {
                    return;
                };
                let conn = server.connect(dom.0);
                v.insert(Link {
                    conn,
                    ring,
                    out: Vec::new(),
                    broken: false,
                })
            }
        };
        if !link.broken {
            let mut buf = [0u8; 1024];
            loop {
                match link.ring.recv(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if server.feed(link.conn, &buf[..n]).is_err() {
                            link.broken = true;
                            break;
                        }
                    }
                    Err(_) => {
                        link.broken = true;
                        break;
                    }
                }
            }
            if link.broken {
                server.disconnect(link.conn);
            }
        }
        // Collect output for every domain we serve, then push what fits.
        let _ = server.take_dirty();
        for (&id, link) in self.links.iter_mut() {
            if link.broken {
                continue;
            }
            let more = server.take_output(link.conn);
            link.out.extend_from_slice(&more);
            if link.out.is_empty() {
                continue;
            }
            match link.ring.send(&link.out) {
                Ok(0) => {}
                Ok(n) => {
                    link.out.drain(..n);
                    notify(DomId(id));
                }
                Err(_) => link.broken = true,
            }
        }
    }
}
