//! The xenstore access the backend needs, as a trait, so the backend can share the domain's one
//! xenstore connection with the rest of the kernel (which also watches e.g. `control/shutdown`).
//!
//! [`ClientStore`] implements it over xenidc's [`Client`] with a `wait` closure (the host tests,
//! or a kernel that gives the backend a connection of its own).
//!
//! Errors: a missing node is `Ok(None)` / an empty directory; a refusal by xenstored (`EACCES`,
//! `EINVAL`…) is [`StoreError::Refused`] (the backend logs it and carries on); anything else
//! ([`StoreError::Broken`]: transport failure, timeout) is returned to the caller.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use xenidc::xenstore::{Client, Error, Transport, TxId, WatchEvent};

/// A xenstore failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The server refused the request (permissions, bad path…).
    Refused(String),
    /// The connection failed or timed out.
    Broken(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Refused(e) => write!(f, "refused: {e}"),
            StoreError::Broken(e) => write!(f, "connection: {e}"),
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Remote { .. }
            | Error::BadPath
            | Error::BadReply { .. }
            | Error::Encode { .. } => StoreError::Refused(e.to_string()),
            e => StoreError::Broken(e.to_string()),
        }
    }
}

/// What the backend does with xenstore. Relative paths are relative to the domain's home.
pub trait Store {
    fn read(&mut self, path: &str) -> Result<Option<String>, StoreError>;
    fn write(&mut self, path: &str, value: &str) -> Result<(), StoreError>;
    fn mkdir(&mut self, path: &str) -> Result<(), StoreError>;
    fn rm(&mut self, path: &str) -> Result<(), StoreError>;
    fn directory(&mut self, path: &str) -> Result<Vec<String>, StoreError>;
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
    /// Watch events received so far, and whether some were lost (then rescan everything).
    fn take_events(&mut self) -> Result<(Vec<WatchEvent>, bool), StoreError>;
}

/// [`Store`] over a xenidc [`Client`]: `wait` is called while a reply is outstanding (block on
/// the xenstore port; return false to give up).
pub struct ClientStore<T: Transport> {
    pub client: Client<T>,
    pub wait: Box<dyn FnMut() -> bool>,
}

impl<T: Transport> ClientStore<T> {
    pub fn new(client: Client<T>, wait: Box<dyn FnMut() -> bool>) -> Self {
        ClientStore { client, wait }
    }
}

impl<T: Transport> Store for ClientStore<T> {
    fn read(&mut self, path: &str) -> Result<Option<String>, StoreError> {
        match self.client.read_string(TxId::NONE, path, &mut self.wait) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn write(&mut self, path: &str, value: &str) -> Result<(), StoreError> {
        Ok(self
            .client
            .write(TxId::NONE, path, value.as_bytes(), &mut self.wait)?)
    }
    fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        Ok(self.client.mkdir(TxId::NONE, path, &mut self.wait)?)
    }
    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        match self.client.rm(TxId::NONE, path, &mut self.wait) {
            Err(e) if e.is_enoent() => Ok(()),
            r => Ok(r?),
        }
    }
    fn directory(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        match self.client.directory(TxId::NONE, path, &mut self.wait) {
            Err(e) if e.is_enoent() => Ok(Vec::new()),
            r => Ok(r?),
        }
    }
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        Ok(self.client.watch(path, token, &mut self.wait)?)
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        Ok(self.client.unwatch(path, token, &mut self.wait)?)
    }
    fn take_events(&mut self) -> Result<(Vec<WatchEvent>, bool), StoreError> {
        self.client.poll()?;
        let lost = self.client.take_events_lost() > 0;
        let mut v = Vec::new();
        while let Some(e) = self.client.next_event() {
            v.push(e);
        }
        Ok((v, lost))
    }
}
