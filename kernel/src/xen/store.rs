//! [`XsStore`]: the PVUSB backend's xenstore access (`pvusb::store::Store`) over this domain's one
//! xenstore connection ([`super::xs::Xs`]), so the backend, pcifront and the `control/shutdown`
//! watch share it. The backend's watch tokens are prefixed with `pvusb:` on the wire and the prefix
//! is removed from the events it gets back, so its events never reach another user and vice versa.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use pvusb::store::{Store, StoreError};
use xenidc::xenstore::{TxId, WatchEvent};

use super::xs::OP_TIMEOUT_NS;
use super::Ctx;

/// Token prefix of the backend's watches.
pub const PREFIX: &str = "pvusb:";

pub struct XsStore {
    ctx: Rc<RefCell<Ctx>>,
}

impl XsStore {
    pub fn new(ctx: Rc<RefCell<Ctx>>) -> Self {
        XsStore { ctx }
    }
}

impl Store for XsStore {
    fn read(&mut self, path: &str) -> Result<Option<String>, StoreError> {
        Ok(self.ctx.borrow_mut().xs.read(path)?)
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), StoreError> {
        Ok(self.ctx.borrow_mut().xs.write(path, value)?)
    }

    fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        let mut c = self.ctx.borrow_mut();
        let mut wait = c.xs.waiter(OP_TIMEOUT_NS);
        Ok(c.xs.client().mkdir(TxId::NONE, path, &mut wait)?)
    }

    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        let mut c = self.ctx.borrow_mut();
        let mut wait = c.xs.waiter(OP_TIMEOUT_NS);
        match c.xs.client().rm(TxId::NONE, path, &mut wait) {
            Err(e) if e.is_enoent() => Ok(()),
            r => Ok(r?),
        }
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.ctx.borrow_mut();
        let mut wait = c.xs.waiter(OP_TIMEOUT_NS);
        match c.xs.client().directory(TxId::NONE, path, &mut wait) {
            Err(e) if e.is_enoent() => Ok(Vec::new()),
            r => Ok(r?),
        }
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        Ok(self
            .ctx
            .borrow_mut()
            .xs
            .watch(path, &format!("{PREFIX}{token}"))?)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        let mut c = self.ctx.borrow_mut();
        let mut wait = c.xs.waiter(OP_TIMEOUT_NS);
        Ok(c.xs
            .client()
            .unwatch(path, &format!("{PREFIX}{token}"), &mut wait)?)
    }

    fn take_events(&mut self) -> Result<(Vec<WatchEvent>, bool), StoreError> {
        let (events, lost) = self.ctx.borrow_mut().xs.take_events(PREFIX)?;
        let events = events
            .into_iter()
            .map(|e| WatchEvent {
                token: String::from(&e.token[PREFIX.len()..]),
                path: e.path,
            })
            .collect();
        Ok((events, lost))
    }
}
