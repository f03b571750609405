//! The std xenstore transports of the dom0 tool: the Linux xenbus device (`/dev/xen/xenbus`, the
//! kernel relays whole messages to xenstored) or the xenstored unix socket. Both carry the
//! `xs_wire.h` byte stream that xenidc's [`Client`](xenidc::xenstore::Client) speaks; both are
//! opened non-blocking, and the client's `wait` closure sleeps between polls.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

use xenidc::xenstore::{Transport, TransportError};

/// `O_NONBLOCK` on Linux.
const O_NONBLOCK: i32 = 0o4000;

/// Device and socket paths tried in order.
pub const PATHS: [&str; 4] = [
    "/dev/xen/xenbus",
    "/proc/xen/xenbus",
    "/run/xenstored/socket",
    "/var/run/xenstored/socket",
];

/// A byte stream to xenstored.
pub enum XsStream {
    Dev(File),
    Socket(UnixStream),
}

impl XsStream {
    /// Open the first path that works (or `path` if given).
    pub fn open(path: Option<&str>) -> Result<(XsStream, String), String> {
        let candidates: Vec<&str> = match path {
            Some(p) => vec![p],
            None => PATHS.to_vec(),
        };
        let mut errors = Vec::new();
        for p in candidates {
            if p.ends_with("socket") {
                match UnixStream::connect(p) {
                    Ok(s) => {
                        s.set_nonblocking(true).map_err(|e| format!("{p}: {e}"))?;
                        return Ok((XsStream::Socket(s), p.to_string()));
                    }
                    Err(e) => errors.push(format!("{p}: {e}")),
                }
            } else {
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(O_NONBLOCK)
                    .open(p)
                {
                    Ok(f) => return Ok((XsStream::Dev(f), p.to_string())),
                    Err(e) => errors.push(format!("{p}: {e}")),
                }
            }
        }
        Err(format!("cannot reach xenstore ({})", errors.join("; ")))
    }
}

fn os(e: std::io::Error) -> TransportError {
    TransportError::Os(e.raw_os_error().unwrap_or(5))
}

impl Transport for XsStream {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        let r = match self {
            XsStream::Dev(f) => f.write(bytes),
            XsStream::Socket(s) => s.write(bytes),
        };
        match r {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(os(e)),
        }
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let r = match self {
            XsStream::Dev(f) => f.read(buf),
            XsStream::Socket(s) => s.read(buf),
        };
        match r {
            Ok(0) => Err(TransportError::Closed),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(os(e)),
        }
    }
}
