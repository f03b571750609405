//! A simulated xenstore server (`xenstored`) for host tests, driven purely by messages.
//!
//! Each client is a connection ([`ConnId`]) belonging to a domain. Raw request bytes go in with
//! [`Server::feed`]; raw reply bytes and watch events come out per connection with
//! [`Server::take_output`]. [`SimTransport`] wraps a shared server as a client [`Transport`], and the
//! simulated hypervisor can instead bridge a domain's ring page ([`super::ring::RingTransport`]) to a
//! connection.
//!
//! Semantics follow C `xenstored` (Xen `tools/xenstore/xenstored_core.c`, `docs/misc/xenstore.txt`),
//! read, not copied:
//!
//! * **Tree and permissions.** Every node has a value and a permission list; the first entry names
//!   the owner and the access of every domain not listed, later entries grant `n`/`r`/`w`/`b` to one
//!   domain. dom0 (privileged) and the owner may do anything. A new node inherits its parent's list,
//!   except that a node created by an unprivileged domain is owned by it. Creating needs write access
//!   to the nearest existing ancestor. A missing node is `ENOENT` if its nearest existing ancestor
//!   grants the access asked for, `EACCES` otherwise (so existence does not leak).
//! * **Paths.** Absolute or relative to the domain's home `/local/domain/<id>`; characters
//!   `A-Za-z0-9-/_@`; invalid paths are `EINVAL`. Children are listed in name order.
//! * **Domains.** [`Server::add_domain`] creates the home directory as the toolstack does: owned by
//!   dom0, readable by the domain, with `device`, `data`, `control`, `drivers`, `error`, `attr` and
//!   `feature` owned by the domain.
//! * **Watches** fire for a write, mkdir (of a new node), set-perms or rm of the watched path or
//!   anything below it (event path = the changed node); once on registration; only if the watcher
//!   may read the node. rm fires once for the removed node (watches at or above it) and once for
//!   each node removed below it (watches on exactly that node), as xenstored's `delete_node` does;
//!   a watch on a path that never existed below a removed node does not fire. Relative watches get
//!   relative event paths. `@introduceDomain`/`@releaseDomain` fire from
//!   [`Server::add_domain`]/[`Server::remove_domain`] to dom0 connections.
//! * **Transactions** work on a snapshot of the tree; the server records the generation of every
//!   node the transaction reads or changes, and a commit fails with `EAGAIN` if any of them changed
//!   in the meantime. Watches for a transaction's changes fire at commit.
//! * **Errors**: `EINVAL` (bad path, bad arguments, unknown type), `EACCES`, `ENOENT`, `EEXIST`
//!   (duplicate watch), `E2BIG` (reply too long, too many watches), `ENOSPC` (too many
//!   transactions), `EPERM` (unprivileged owner change), `EBUSY` (transaction start inside a
//!   transaction), `EAGAIN` (conflict), `ENOSYS` (known but unsupported message types).
//!
//! A header announcing more than 4096 payload bytes breaks the connection: [`Server::feed`] returns
//! [`ServerError::Protocol`] and ignores that connection from then on; other connections continue.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use super::client::{Transport, TransportError};
use super::wire::{
    self, encode, Access, DecodeError, Decoder, Errno, Frame, MsgType, Perm, TxId, PAYLOAD_MAX,
};

/// Most watches per connection.
pub const MAX_WATCHES: usize = 128;
/// Most open transactions per connection.
pub const MAX_TRANSACTIONS: usize = 10;

/// A client connection to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

/// Errors of the server itself (not replies to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerError {
    /// No such connection (never made, or disconnected).
    NoConnection(ConnId),
    /// The connection sent bytes that lost framing; it is dead.
    Protocol(ConnId, DecodeError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::NoConnection(c) => write!(f, "no xenstore connection {}", c.0),
            ServerError::Protocol(c, e) => write!(f, "xenstore connection {}: {e}", c.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    value: Vec<u8>,
    perms: Vec<Perm>,
    gen: u64,
}

type Tree = BTreeMap<String, Node>;

#[derive(Debug)]
struct Watch {
    /// Canonical path (absolute, or `@special`).
    path: String,
    token: Vec<u8>,
    /// Registered with a relative path: events are reported relative to the home.
    relative: bool,
}

struct Conn {
    domid: u16,
    /// Taken out while a frame from it is being handled.
    decoder: Option<Box<Decoder>>,
    out: Vec<u8>,
    watches: Vec<Watch>,
    dead: bool,
}

/// A change that may fire watches.
#[derive(Debug, Clone)]
struct Fire {
    path: String,
    /// Only watches on exactly `path` (for the nodes below a removed one); otherwise every
    /// watch at or above `path`.
    exact: bool,
    perms: Vec<Perm>,
}

struct Txn {
    conn: ConnId,
    tree: Tree,
    /// Generation (None = absent) at snapshot time of every node read or changed.
    base: BTreeMap<String, Option<u64>>,
    modified: BTreeSet<String>,
    fires: Vec<Fire>,
}

/// The simulated xenstore server. See the [module documentation](self).
pub struct Server {
    tree: Tree,
    gen: u64,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u32,
    txns: BTreeMap<u32, Txn>,
    next_tx: u32,
    /// Connections whose output queue grew since [`Server::take_dirty`].
    dirty: BTreeSet<ConnId>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("nodes", &self.tree.len())
            .field("conns", &self.conns.len())
            .field("txns", &self.txns.len())
            .finish()
    }
}

fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn child_prefix(path: &str) -> String {
    if path == "/" {
        String::from("/")
    } else {
        format!("{path}/")
    }
}

/// `a` is `b` or below it.
fn is_at_or_below(a: &str, b: &str) -> bool {
    a == b || (a.starts_with(b) && (b == "/" || a.as_bytes().get(b.len()) == Some(&b'/')))
}

/// The home directory of a domain.
pub fn home_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

struct Rights {
    read: bool,
    write: bool,
    owner: bool,
}

fn rights(domid: u16, perms: &[Perm]) -> Rights {
    let all = Rights {
        read: true,
        write: true,
        owner: true,
    };
    if domid == 0 {
        return all;
    }
    let Some(first) = perms.first() else {
        return Rights {
            read: false,
            write: false,
            owner: false,
        };
    };
    if first.domid == domid {
        return all;
    }
    let access = perms[1..]
        .iter()
        .find(|p| p.domid == domid)
        .map_or(first.access, |p| p.access);
    Rights {
        read: access.can_read(),
        write: access.can_write(),
        owner: false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// A transaction's access record: snapshot generations, and the paths it changed.
type TxnLog<'a> = (
    &'a mut BTreeMap<String, Option<u64>>,
    &'a mut BTreeSet<String>,
);

/// The names of the children of `path` in `tree`, in name order.
fn children(tree: &Tree, path: &str) -> Vec<String> {
    let prefix = child_prefix(path);
    tree.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| {
            let rest = &k[prefix.len()..];
            (!rest.is_empty() && !rest.contains('/')).then(|| String::from(rest))
        })
        .collect()
}

/// Operations on one tree (the main tree or a transaction's snapshot).
struct Ctx<'a> {
    tree: &'a mut Tree,
    gen: &'a mut u64,
    txn: Option<TxnLog<'a>>,
    domid: u16,
    fires: Vec<Fire>,
}

impl Ctx<'_> {
    fn next_gen(&mut self) -> u64 {
        *self.gen += 1;
        *self.gen
    }

    fn note_access(&mut self, path: &str) {
        if let Some((base, _)) = &mut self.txn {
            if !base.contains_key(path) {
                base.insert(String::from(path), self.tree.get(path).map(|n| n.gen));
            }
        }
    }

    fn note_modify(&mut self, path: &str) {
        self.note_access(path);
        if let Some((_, modified)) = &mut self.txn {
            modified.insert(String::from(path));
        }
    }

    fn allowed(&self, perms: &[Perm], need: Need) -> bool {
        let r = rights(self.domid, perms);
        match need {
            Need::Read => r.read,
            Need::Write => r.write,
        }
    }

    fn nearest_existing(&self, path: &str) -> String {
        let mut p = path;
        loop {
            if self.tree.contains_key(p) {
                return String::from(p);
            }
            match parent_of(p) {
                Some(q) => p = q,
                None => return String::from("/"),
            }
        }
    }

    /// The node, or ENOENT/EACCES as xenstored decides them.
    fn get(&mut self, path: &str, need: Need) -> Result<&Node, Errno> {
        self.note_access(path);
        match self.tree.get(path) {
            Some(n) => {
                if self.allowed(&n.perms, need) {
                    Ok(n)
                } else {
                    Err(Errno::EACCES)
                }
            }
            None => {
                let anc = self.nearest_existing(path);
                let ok = self
                    .tree
                    .get(&anc)
                    .is_some_and(|n| self.allowed(&n.perms, need));
                Err(if ok { Errno::ENOENT } else { Errno::EACCES })
            }
        }
    }

    fn children(&self, path: &str) -> Vec<String> {
        children(self.tree, path)
    }

    fn descendants(&self, path: &str) -> Vec<String> {
        let prefix = child_prefix(path);
        self.tree
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.as_str() != "/")
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Create `path` (and missing parents) with `value`.
    fn create(&mut self, path: &str, value: &[u8]) {
        let mut missing = Vec::new();
        let mut p = path;
        while !self.tree.contains_key(p) {
            missing.push(String::from(p));
            match parent_of(p) {
                Some(q) => p = q,
                None => break,
            }
        }
        let anc = String::from(p);
        // The ancestor's child list changes.
        self.note_modify(&anc);
        let g = self.next_gen();
        let mut perms = match self.tree.get_mut(&anc) {
            Some(n) => {
                n.gen = g;
                n.perms.clone()
            }
            None => Vec::new(),
        };
        if self.domid != 0 {
            if let Some(first) = perms.first_mut() {
                first.domid = self.domid;
            }
        }
        for (i, m) in missing.iter().rev().enumerate() {
            self.note_modify(m);
            let g = self.next_gen();
            let v = if i + 1 == missing.len() {
                value.to_vec()
            } else {
                Vec::new()
            };
            self.tree.insert(
                m.clone(),
                Node {
                    value: v,
                    perms: perms.clone(),
                    gen: g,
                },
            );
        }
        self.fires.push(Fire {
            path: String::from(path),
            exact: false,
            perms,
        });
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.get(path, Need::Read).map(|n| n.value.clone())
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        match self.get(path, Need::Write) {
            Ok(_) => {
                self.note_modify(path);
                let g = self.next_gen();
                let perms = match self.tree.get_mut(path) {
                    Some(n) => {
                        n.value = value.to_vec();
                        n.gen = g;
                        n.perms.clone()
                    }
                    None => Vec::new(),
                };
                self.fires.push(Fire {
                    path: String::from(path),
                    exact: false,
                    perms,
                });
                Ok(())
            }
            Err(Errno::ENOENT) => {
                self.create(path, value);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn mkdir(&mut self, path: &str) -> Result<(), Errno> {
        match self.get(path, Need::Write) {
            Ok(_) => Ok(()),
            Err(Errno::ENOENT) => {
                self.create(path, &[]);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn rm(&mut self, path: &str) -> Result<(), Errno> {
        match self.get(path, Need::Write) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                // Removing a missing node is fine if its parent exists.
                let parent = parent_of(path).unwrap_or("/");
                self.note_access(parent);
                return if self.tree.contains_key(parent) {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
            }
            Err(e) => return Err(e),
        }
        if path == "/" {
            return Err(Errno::EINVAL);
        }
        let perms = self
            .tree
            .get(path)
            .map(|n| n.perms.clone())
            .unwrap_or_default();
        self.fires.push(Fire {
            path: String::from(path),
            exact: false,
            perms,
        });
        let mut gone = self.descendants(path);
        // Deepest first, as xenstored deletes them.
        gone.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        for d in &gone {
            self.note_modify(d);
            if let Some(n) = self.tree.remove(d) {
                self.fires.push(Fire {
                    path: d.clone(),
                    exact: true,
                    perms: n.perms,
                });
            }
        }
        self.note_modify(path);
        self.tree.remove(path);
        if let Some(parent) = parent_of(path) {
            let parent = String::from(parent);
            self.note_modify(&parent);
            let g = self.next_gen();
            if let Some(n) = self.tree.get_mut(&parent) {
                n.gen = g;
            }
        }
        Ok(())
    }

    fn directory(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.get(path, Need::Read)?;
        let mut out = Vec::new();
        for c in self.children(path) {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn get_perms(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        let node = self.get(path, Need::Read)?;
        let mut out = Vec::new();
        for p in &node.perms {
            p.write_to(&mut out);
            out.push(0);
        }
        Ok(out)
    }

    fn set_perms(&mut self, path: &str, perms: Vec<Perm>) -> Result<(), Errno> {
        let domid = self.domid;
        let node = self.get(path, Need::Write)?;
        if !rights(domid, &node.perms).owner {
            return Err(Errno::EACCES);
        }
        if domid != 0 && node.perms.first().map(|p| p.domid) != Some(perms[0].domid) {
            return Err(Errno::EPERM);
        }
        self.note_modify(path);
        let g = self.next_gen();
        if let Some(n) = self.tree.get_mut(path) {
            n.perms = perms.clone();
            n.gen = g;
        }
        self.fires.push(Fire {
            path: String::from(path),
            exact: false,
            perms,
        });
        Ok(())
    }
}

/// What a request asks, after argument parsing.
enum Op {
    Read(String),
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    Directory(String),
    GetPerms(String),
    SetPerms(String, Vec<Perm>),
}

impl Server {
    /// An empty store with `/`, `/local` and `/local/domain`, all owned by dom0.
    pub fn new() -> Server {
        let mut tree = Tree::new();
        let dom0_only = alloc::vec![Perm {
            domid: 0,
            access: Access::None
        }];
        for (i, p) in ["/", "/local", "/local/domain"].iter().enumerate() {
            tree.insert(
                String::from(*p),
                Node {
                    value: Vec::new(),
                    perms: dom0_only.clone(),
                    gen: i as u64 + 1,
                },
            );
        }
        Server {
            tree,
            gen: 3,
            conns: BTreeMap::new(),
            next_conn: 1,
            txns: BTreeMap::new(),
            next_tx: 1,
            dirty: BTreeSet::new(),
        }
    }

    /// Create a domain's home directory the way the toolstack does, and fire `@introduceDomain`.
    pub fn add_domain(&mut self, domid: u16) {
        let home = home_path(domid);
        let ro = alloc::vec![
            Perm {
                domid: 0,
                access: Access::None
            },
            Perm {
                domid,
                access: Access::Read
            },
        ];
        let rw = alloc::vec![Perm {
            domid,
            access: Access::None
        }];
        self.admin_write(&home, b"", &ro);
        for sub in [
            "device", "data", "control", "drivers", "error", "attr", "feature",
        ] {
            self.admin_write(&format!("{home}/{sub}"), b"", &rw);
        }
        self.fire_special("@introduceDomain");
    }

    /// Remove a domain: its home directory, its connections (with their watches and
    /// transactions), and fire `@releaseDomain`.
    pub fn remove_domain(&mut self, domid: u16) {
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for c in conns {
            self.disconnect(c);
        }
        let home = home_path(domid);
        let mut fires = Vec::new();
        {
            let mut ctx = self.ctx(0, None);
            let _ = ctx.rm(&home);
            fires.append(&mut ctx.fires);
        }
        self.fire_all(&fires);
        self.fire_special("@releaseDomain");
    }

    /// Open a connection for `domid` (domid 0 is privileged).
    pub fn connect(&mut self, domid: u16) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                decoder: Some(Box::new(Decoder::new())),
                out: Vec::new(),
                watches: Vec::new(),
                dead: false,
            },
        );
        id
    }

    /// Close a connection: its watches go, its transactions are aborted.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.txns.retain(|_, t| t.conn != conn);
        self.dirty.remove(&conn);
    }

    /// Whether the connection exists and has not broken the protocol.
    pub fn is_alive(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.dead)
    }

    /// The domain of a connection.
    pub fn domid_of(&self, conn: ConnId) -> Option<u16> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// Process raw request bytes from a connection (any split: partial messages are kept).
    /// Replies and watch events are appended to the output queues of the connections concerned.
    pub fn feed(&mut self, conn: ConnId, mut bytes: &[u8]) -> Result<(), ServerError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(ServerError::NoConnection(conn))?;
        if c.dead {
            return Err(ServerError::Protocol(conn, DecodeError::Failed));
        }
        // Take the decoder out so handling a frame can borrow the server.
        let mut decoder = c.decoder.take().unwrap_or_else(|| Box::new(Decoder::new()));
        let result = loop {
            if bytes.is_empty() {
                break Ok(());
            }
            match decoder.decode(&mut bytes) {
                Ok(Some(frame)) => self.handle_frame(conn, frame),
                Ok(None) => {}
                Err(e) => break Err(ServerError::Protocol(conn, e)),
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.decoder = Some(decoder);
            if result.is_err() {
                c.dead = true;
            }
        }
        result
    }

    /// Process one or more whole messages and return what every connection received as a result
    /// (replies for `conn`, watch events for any connection).
    pub fn request(
        &mut self,
        conn: ConnId,
        bytes: &[u8],
    ) -> Result<Vec<(ConnId, Vec<u8>)>, ServerError> {
        self.feed(conn, bytes)?;
        Ok(self
            .take_dirty()
            .into_iter()
            .map(|c| (c, self.take_output(c)))
            .collect())
    }

    /// The bytes queued for a connection (replies and events), removing them.
    pub fn take_output(&mut self, conn: ConnId) -> Vec<u8> {
        self.dirty.remove(&conn);
        self.conns
            .get_mut(&conn)
            .map(|c| core::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    /// Move up to `buf.len()` queued bytes of a connection into `buf`.
    pub fn take_output_into(&mut self, conn: ConnId, buf: &mut [u8]) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        let n = buf.len().min(c.out.len());
        buf[..n].copy_from_slice(&c.out[..n]);
        c.out.drain(..n);
        if c.out.is_empty() {
            self.dirty.remove(&conn);
        }
        n
    }

    /// Connections that received output since the last call (the simulator notifies them).
    pub fn take_dirty(&mut self) -> Vec<ConnId> {
        let d = core::mem::take(&mut self.dirty);
        d.into_iter().collect()
    }

    /// Number of open transactions (all connections).
    pub fn open_transactions(&self) -> usize {
        self.txns.len()
    }

    /// Number of watches of a connection.
    pub fn watch_count(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.watches.len())
    }

    // --- privileged direct access for test setup and inspection (no messages, fires watches) ---

    /// Read a node directly (as dom0).
    pub fn admin_read(&self, path: &str) -> Option<&[u8]> {
        self.tree.get(path).map(|n| n.value.as_slice())
    }

    /// The permissions of a node.
    pub fn admin_perms(&self, path: &str) -> Option<&[Perm]> {
        self.tree.get(path).map(|n| n.perms.as_slice())
    }

    /// The children of a node, in name order.
    pub fn admin_children(&self, path: &str) -> Vec<String> {
        children(&self.tree, path)
    }

    /// All node paths, in order.
    pub fn admin_paths(&self) -> Vec<String> {
        self.tree.keys().cloned().collect()
    }

    /// Write a node as dom0 and set its permissions (watches fire as for a client write).
    pub fn admin_write(&mut self, path: &str, value: &[u8], perms: &[Perm]) {
        let mut fires = Vec::new();
        {
            let mut ctx = self.ctx(0, None);
            let _ = ctx.write(path, value);
            if !perms.is_empty() {
                if let Some(n) = ctx.tree.get_mut(path) {
                    n.perms = perms.to_vec();
                }
                for f in &mut ctx.fires {
                    if f.path == path {
                        f.perms = perms.to_vec();
                    }
                }
            }
            fires.append(&mut ctx.fires);
        }
        self.fire_all(&fires);
    }

    /// Remove a subtree as dom0 (watches fire).
    pub fn admin_rm(&mut self, path: &str) {
        let mut fires = Vec::new();
        {
            let mut ctx = self.ctx(0, None);
            let _ = ctx.rm(path);
            fires.append(&mut ctx.fires);
        }
        self.fire_all(&fires);
    }

    fn ctx(&mut self, domid: u16, tx: Option<u32>) -> Ctx<'_> {
        match tx.and_then(|t| self.txns.get_mut(&t)) {
            Some(t) => Ctx {
                tree: &mut t.tree,
                gen: &mut self.gen,
                txn: Some((&mut t.base, &mut t.modified)),
                domid,
                fires: Vec::new(),
            },
            None => Ctx {
                tree: &mut self.tree,
                gen: &mut self.gen,
                txn: None,
                domid,
                fires: Vec::new(),
            },
        }
    }

    fn reply(&mut self, conn: ConnId, ty: MsgType, req_id: u32, tx: TxId, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let (ty, payload): (MsgType, &[u8]) = if payload.len() > PAYLOAD_MAX {
            (MsgType::ERROR, b"E2BIG\0")
        } else {
            (ty, payload)
        };
        // Cannot fail: the payload fits and is sent raw.
        let _ = encode(&mut c.out, ty, req_id, tx, &[payload], true);
        self.dirty.insert(conn);
    }

    fn error(&mut self, conn: ConnId, req_id: u32, tx: TxId, errno: Errno) {
        let name = errno.name().unwrap_or("EINVAL");
        let mut p = Vec::from(name.as_bytes());
        p.push(0);
        self.reply(conn, MsgType::ERROR, req_id, tx, &p);
    }

    fn event(&mut self, conn: ConnId, path: &str, token: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut p = Vec::with_capacity(path.len() + token.len() + 2);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token);
        p.push(0);
        if p.len() <= PAYLOAD_MAX {
            let _ = encode(&mut c.out, MsgType::WATCH_EVENT, 0, TxId::NONE, &[&p], true);
            self.dirty.insert(conn);
        }
    }

    fn fire_special(&mut self, name: &str) {
        let mut out = Vec::new();
        for (id, c) in &self.conns {
            if c.dead || c.domid != 0 {
                continue;
            }
            for w in &c.watches {
                if w.path == name {
                    out.push((*id, w.token.clone()));
                }
            }
        }
        for (id, token) in out {
            self.event(id, name, &token);
        }
    }

    fn fire_all(&mut self, fires: &[Fire]) {
        let mut out: Vec<(ConnId, String, Vec<u8>)> = Vec::new();
        for f in fires {
            for (id, c) in &self.conns {
                if c.dead || !rights(c.domid, &f.perms).read {
                    continue;
                }
                let home = child_prefix(&home_path(c.domid));
                for w in &c.watches {
                    if w.path.starts_with('@') {
                        continue;
                    }
                    let fires = if f.exact {
                        w.path == f.path
                    } else {
                        is_at_or_below(&f.path, &w.path)
                    };
                    if !fires {
                        continue;
                    }
                    let path = &f.path;
                    let shown = if w.relative {
                        match path.strip_prefix(home.as_str()) {
                            Some(rel) => String::from(rel),
                            None => continue,
                        }
                    } else {
                        path.clone()
                    };
                    out.push((*id, shown, w.token.clone()));
                }
            }
        }
        for (id, path, token) in out {
            self.event(id, &path, &token);
        }
    }

    /// Canonical absolute path of a request argument, or EINVAL.
    fn canonical(domid: u16, arg: &[u8], allow_special: bool) -> Result<(String, bool), Errno> {
        let p = wire::check_path(arg).map_err(|_| Errno::EINVAL)?;
        if p.starts_with('/') {
            Ok((String::from(p), false))
        } else if p.starts_with('@') {
            if allow_special {
                Ok((String::from(p), false))
            } else {
                Err(Errno::EINVAL)
            }
        } else {
            let full = format!("{}/{p}", home_path(domid));
            wire::check_path(full.as_bytes()).map_err(|_| Errno::EINVAL)?;
            Ok((full, true))
        }
    }

    /// The single NUL-terminated argument of a request.
    fn one_arg(payload: &[u8]) -> Result<&[u8], Errno> {
        let [a] = wire::exact_strings::<1>(payload).map_err(|_| Errno::EINVAL)?;
        Ok(a)
    }

    fn parse_op(domid: u16, ty: MsgType, payload: &[u8]) -> Result<Op, Errno> {
        let path = |a: &[u8]| Self::canonical(domid, a, false).map(|(p, _)| p);
        Ok(match ty {
            MsgType::READ => Op::Read(path(Self::one_arg(payload)?)?),
            MsgType::MKDIR => Op::Mkdir(path(Self::one_arg(payload)?)?),
            MsgType::RM => Op::Rm(path(Self::one_arg(payload)?)?),
            MsgType::DIRECTORY => Op::Directory(path(Self::one_arg(payload)?)?),
            MsgType::GET_PERMS => Op::GetPerms(path(Self::one_arg(payload)?)?),
            MsgType::WRITE => {
                let nul = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
                Op::Write(path(&payload[..nul])?, payload[nul + 1..].to_vec())
            }
            MsgType::SET_PERMS => {
                let mut it = wire::strings(payload).map_err(|_| Errno::EINVAL)?;
                let p = path(it.next().ok_or(Errno::EINVAL)?)?;
                let perms = it
                    .map(Perm::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| Errno::EINVAL)?;
                if perms.is_empty() {
                    return Err(Errno::EINVAL);
                }
                Op::SetPerms(p, perms)
            }
            _ => return Err(Errno::EINVAL),
        })
    }

    fn handle_frame(&mut self, conn: ConnId, frame: Frame<'_>) {
        let Some(domid) = self.domid_of(conn) else {
            return;
        };
        let h = frame.header;
        let (req_id, tx) = (h.req_id, h.tx_id);
        let payload = frame.payload;
        let r: Result<Vec<u8>, Errno> = match h.ty {
            MsgType::WATCH => self.do_watch(conn, domid, payload),
            MsgType::UNWATCH => self.do_unwatch(conn, domid, payload),
            MsgType::TRANSACTION_START => self.do_tx_start(conn, tx),
            MsgType::TRANSACTION_END => self.do_tx_end(conn, tx, payload),
            MsgType::GET_DOMAIN_PATH => Self::one_arg(payload)
                .and_then(|a| wire::parse_u32(a).map_err(|_| Errno::EINVAL))
                .and_then(|d| u16::try_from(d).map_err(|_| Errno::EINVAL))
                .map(|d| {
                    let mut p = home_path(d).into_bytes();
                    p.push(0);
                    p
                }),
            MsgType::RESET_WATCHES => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.watches.clear();
                }
                Ok(b"OK\0".to_vec())
            }
            MsgType::READ
            | MsgType::WRITE
            | MsgType::MKDIR
            | MsgType::RM
            | MsgType::DIRECTORY
            | MsgType::GET_PERMS
            | MsgType::SET_PERMS => self.do_node_op(conn, domid, h.ty, tx, payload),
            MsgType::CONTROL
            | MsgType::INTRODUCE
            | MsgType::RELEASE
            | MsgType::IS_DOMAIN_INTRODUCED
            | MsgType::RESUME
            | MsgType::SET_TARGET
            | MsgType::DIRECTORY_PART => Err(Errno::ENOSYS),
            _ => Err(Errno::EINVAL),
        };
        match r {
            Ok(p) => {
                self.reply(conn, h.ty, req_id, tx, &p);
                if h.ty == MsgType::WATCH {
                    // The initial event follows the acknowledgement.
                    if let Ok([path, token]) = wire::exact_strings::<2>(payload) {
                        let (path, token) =
                            (String::from_utf8_lossy(path).into_owned(), token.to_vec());
                        self.event(conn, &path, &token);
                    }
                }
            }
            Err(e) => self.error(conn, req_id, tx, e),
        }
    }

    fn do_node_op(
        &mut self,
        conn: ConnId,
        domid: u16,
        ty: MsgType,
        tx: TxId,
        payload: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        if tx != TxId::NONE && self.txns.get(&tx.0).is_none_or(|t| t.conn != conn) {
            return Err(Errno::ENOENT);
        }
        let op = Self::parse_op(domid, ty, payload)?;
        let txo = (tx != TxId::NONE).then_some(tx.0);
        let ok = || b"OK\0".to_vec();
        let (result, fires) = {
            let mut ctx = self.ctx(domid, txo);
            let r = match op {
                Op::Read(p) => ctx.read(&p),
                Op::Write(p, v) => ctx.write(&p, &v).map(|_| ok()),
                Op::Mkdir(p) => ctx.mkdir(&p).map(|_| ok()),
                Op::Rm(p) => ctx.rm(&p).map(|_| ok()),
                Op::Directory(p) => ctx.directory(&p),
                Op::GetPerms(p) => ctx.get_perms(&p),
                Op::SetPerms(p, perms) => ctx.set_perms(&p, perms).map(|_| ok()),
            };
            (r, core::mem::take(&mut ctx.fires))
        };
        match txo.and_then(|t| self.txns.get_mut(&t)) {
            Some(t) => t.fires.extend(fires),
            None => self.fire_all(&fires),
        }
        result
    }

    fn do_watch(&mut self, conn: ConnId, domid: u16, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let [path, token] = wire::exact_strings::<2>(payload).map_err(|_| Errno::EINVAL)?;
        let (path, relative) = Self::canonical(domid, path, true)?;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        if c.watches.iter().any(|w| w.path == path && w.token == token) {
            return Err(Errno::EEXIST);
        }
        if c.watches.len() >= MAX_WATCHES {
            return Err(Errno::E2BIG);
        }
        c.watches.push(Watch {
            path,
            token: token.to_vec(),
            relative,
        });
        Ok(b"OK\0".to_vec())
    }

    fn do_unwatch(&mut self, conn: ConnId, domid: u16, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let [path, token] = wire::exact_strings::<2>(payload).map_err(|_| Errno::EINVAL)?;
        let (path, _) = Self::canonical(domid, path, true)?;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EINVAL)?;
        let i = c
            .watches
            .iter()
            .position(|w| w.path == path && w.token == token)
            .ok_or(Errno::ENOENT)?;
        c.watches.remove(i);
        Ok(b"OK\0".to_vec())
    }

    fn do_tx_start(&mut self, conn: ConnId, tx: TxId) -> Result<Vec<u8>, Errno> {
        if tx != TxId::NONE {
            return Err(Errno::EBUSY);
        }
        if self.txns.values().filter(|t| t.conn == conn).count() >= MAX_TRANSACTIONS {
            return Err(Errno::ENOSPC);
        }
        let mut id = self.next_tx;
        while id == 0 || self.txns.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        self.txns.insert(
            id,
            Txn {
                conn,
                tree: self.tree.clone(),
                base: BTreeMap::new(),
                modified: BTreeSet::new(),
                fires: Vec::new(),
            },
        );
        let mut out = Vec::new();
        wire::push_decimal(&mut out, id);
        out.push(0);
        Ok(out)
    }

    fn do_tx_end(&mut self, conn: ConnId, tx: TxId, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let commit = match Self::one_arg(payload)? {
            b"T" => true,
            b"F" => false,
            _ => return Err(Errno::EINVAL),
        };
        if self.txns.get(&tx.0).is_none_or(|t| t.conn != conn) {
            return Err(Errno::ENOENT);
        }
        let Some(t) = self.txns.remove(&tx.0) else {
            return Err(Errno::ENOENT);
        };
        if !commit {
            return Ok(b"OK\0".to_vec());
        }
        let conflict = t
            .base
            .iter()
            .any(|(p, g)| self.tree.get(p).map(|n| n.gen) != *g);
        if conflict {
            return Err(Errno::EAGAIN);
        }
        for p in &t.modified {
            match t.tree.get(p) {
                Some(n) => {
                    self.gen += 1;
                    let mut n = n.clone();
                    n.gen = self.gen;
                    self.tree.insert(p.clone(), n);
                }
                None => {
                    self.tree.remove(p);
                }
            }
        }
        self.fire_all(&t.fires);
        Ok(b"OK\0".to_vec())
    }
}

/// A client [`Transport`] straight into a shared simulated server: bytes sent are processed at
/// once, and replies are available to the next `recv`. A protocol error from the server shows as
/// [`TransportError::Closed`].
#[derive(Clone)]
pub struct SimTransport {
    server: Rc<RefCell<Server>>,
    conn: ConnId,
}

impl fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTransport")
            .field("conn", &self.conn)
            .finish()
    }
}

impl SimTransport {
    /// Open a new connection for `domid`.
    pub fn connect(server: &Rc<RefCell<Server>>, domid: u16) -> SimTransport {
        let conn = server.borrow_mut().connect(domid);
        SimTransport {
            server: server.clone(),
            conn,
        }
    }
    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }
    /// The server.
    pub fn server(&self) -> &Rc<RefCell<Server>> {
        &self.server
    }
}

impl Transport for SimTransport {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        self.server
            .borrow_mut()
            .feed(self.conn, bytes)
            .map_err(|_| TransportError::Closed)?;
        Ok(bytes.len())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let mut s = self.server.borrow_mut();
        if !s.conns.contains_key(&self.conn) {
            return Err(TransportError::Closed);
        }
        Ok(s.take_output_into(self.conn, buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::client::{Client, Error, WatchEvent};
    use crate::xenstore::wire::RawHeader;
    use alloc::vec;
    use proptest::prelude::*;

    type C = Client<SimTransport>;

    fn w() -> impl FnMut() -> bool {
        || false
    }

    fn setup() -> (Rc<RefCell<Server>>, C, C, C) {
        let s = Rc::new(RefCell::new(Server::new()));
        s.borrow_mut().add_domain(5);
        s.borrow_mut().add_domain(6);
        let d0 = Client::new(SimTransport::connect(&s, 0));
        let d5 = Client::new(SimTransport::connect(&s, 5));
        let d6 = Client::new(SimTransport::connect(&s, 6));
        (s, d0, d5, d6)
    }

    fn errno(r: Result<impl core::fmt::Debug, Error>) -> Errno {
        r.unwrap_err().errno().expect("a remote error")
    }

    fn events(c: &mut C) -> Vec<(String, String)> {
        c.poll().unwrap();
        core::iter::from_fn(|| c.next_event())
            .map(|WatchEvent { path, token }| (path, token))
            .collect()
    }

    fn ev(p: &str, t: &str) -> (String, String) {
        (p.into(), t.into())
    }

    const T: TxId = TxId::NONE;

    #[test]
    fn read_write_mkdir_rm_directory() {
        let (_s, mut d0, ..) = setup();
        d0.write(T, "/a/b/c", b"v", &mut w()).unwrap();
        assert_eq!(d0.read(T, "/a/b/c", &mut w()).unwrap(), b"v");
        assert_eq!(d0.read(T, "/a/b", &mut w()).unwrap(), b"");
        d0.write(T, "/a/b/c", b"", &mut w()).unwrap();
        assert_eq!(d0.read(T, "/a/b/c", &mut w()).unwrap(), b"");
        d0.mkdir(T, "/a/d", &mut w()).unwrap();
        d0.mkdir(T, "/a/d", &mut w()).unwrap();
        assert_eq!(d0.directory(T, "/a", &mut w()).unwrap(), vec!["b", "d"]);
        assert_eq!(
            d0.directory(T, "/a/d", &mut w()).unwrap(),
            Vec::<String>::new()
        );
        d0.rm(T, "/a/b", &mut w()).unwrap();
        assert_eq!(errno(d0.read(T, "/a/b/c", &mut w())), Errno::ENOENT);
        assert_eq!(d0.directory(T, "/a", &mut w()).unwrap(), vec!["d"]);
        // rm of a missing node whose parent exists is fine; with a missing parent it is ENOENT.
        d0.rm(T, "/a/zz", &mut w()).unwrap();
        assert_eq!(errno(d0.rm(T, "/a/zz/y", &mut w())), Errno::ENOENT);
        assert_eq!(errno(d0.rm(T, "/", &mut w())), Errno::EINVAL);
        assert_eq!(d0.get_domain_path(5, &mut w()).unwrap(), "/local/domain/5");
    }

    #[test]
    fn home_directories_relative_paths_and_ownership() {
        let (s, mut d0, mut d5, _) = setup();
        // The home itself is dom0's and read-only for the domain; its `device` dir is the domain's.
        assert_eq!(errno(d5.write(T, "x", b"1", &mut w())), Errno::EACCES);
        d5.write(T, "device/vusb/0/state", b"1", &mut w()).unwrap();
        assert_eq!(
            s.borrow().admin_read("/local/domain/5/device/vusb/0/state"),
            Some(&b"1"[..])
        );
        assert_eq!(
            d5.read(T, "/local/domain/5/device/vusb/0/state", &mut w())
                .unwrap(),
            b"1"
        );
        let perms = d0
            .get_perms(T, "/local/domain/5/device/vusb/0", &mut w())
            .unwrap();
        assert_eq!(
            perms,
            vec![Perm {
                domid: 5,
                access: Access::None
            }]
        );
        assert_eq!(
            d0.get_perms(T, "/local/domain/5", &mut w()).unwrap(),
            vec![
                Perm {
                    domid: 0,
                    access: Access::None
                },
                Perm {
                    domid: 5,
                    access: Access::Read
                }
            ]
        );
        assert!(d5
            .directory(T, "/local/domain/5", &mut w())
            .unwrap()
            .contains(&"device".into()));
    }

    #[test]
    fn permissions_are_enforced() {
        let (_s, mut d0, mut d5, mut d6) = setup();
        d6.write(T, "data/secret", b"x", &mut w()).unwrap();
        // Another domain's node: EACCES, and a missing node below it too (no existence leak).
        assert_eq!(
            errno(d5.read(T, "/local/domain/6/data/secret", &mut w())),
            Errno::EACCES
        );
        assert_eq!(
            errno(d5.read(T, "/local/domain/6/data/nothing", &mut w())),
            Errno::EACCES
        );
        assert_eq!(
            errno(d5.write(T, "/local/domain/6/data/secret", b"y", &mut w())),
            Errno::EACCES
        );
        assert_eq!(errno(d5.read(T, "/", &mut w())), Errno::EACCES);
        // Missing node under a readable ancestor: ENOENT.
        assert_eq!(errno(d5.read(T, "data/nothing", &mut w())), Errno::ENOENT);
        // ACL: the owner grants read to dom5.
        d6.set_perms(
            T,
            "data/secret",
            &[
                Perm {
                    domid: 6,
                    access: Access::None,
                },
                Perm {
                    domid: 5,
                    access: Access::Read,
                },
            ],
            &mut w(),
        )
        .unwrap();
        assert_eq!(
            d5.read(T, "/local/domain/6/data/secret", &mut w()).unwrap(),
            b"x"
        );
        assert_eq!(
            errno(d5.write(T, "/local/domain/6/data/secret", b"y", &mut w())),
            Errno::EACCES
        );
        // Default access (first entry) applies to unlisted domains.
        d6.set_perms(
            T,
            "data/secret",
            &[Perm {
                domid: 6,
                access: Access::Both,
            }],
            &mut w(),
        )
        .unwrap();
        d5.write(T, "/local/domain/6/data/secret", b"y", &mut w())
            .unwrap();
        // ...but a non-owner with write access may not change permissions.
        assert_eq!(
            errno(d5.set_perms(
                T,
                "/local/domain/6/data/secret",
                &[Perm {
                    domid: 5,
                    access: Access::Both
                }],
                &mut w()
            )),
            Errno::EACCES
        );
        // The owner may not give the node away; dom0 may.
        assert_eq!(
            errno(d6.set_perms(
                T,
                "data/secret",
                &[Perm {
                    domid: 5,
                    access: Access::None
                }],
                &mut w()
            )),
            Errno::EPERM
        );
        d0.set_perms(
            T,
            "/local/domain/6/data/secret",
            &[Perm {
                domid: 5,
                access: Access::None,
            }],
            &mut w(),
        )
        .unwrap();
        assert_eq!(
            d5.read(T, "/local/domain/6/data/secret", &mut w()).unwrap(),
            b"y"
        );
        // A node dom0 creates below a domain's dir inherits the perms unchanged.
        d0.write(T, "/local/domain/6/data/byzero", b"", &mut w())
            .unwrap();
        assert_eq!(
            d0.get_perms(T, "/local/domain/6/data/byzero", &mut w())
                .unwrap(),
            vec![Perm {
                domid: 6,
                access: Access::None
            }]
        );
    }

    #[test]
    fn bad_requests_get_strict_errors() {
        let (s, mut d0, ..) = setup();
        assert_eq!(d0.read(T, "/a b", &mut w()), Err(Error::BadPath));
        let conn = d0.transport().conn();
        let send = |ty: u32, payload: &[u8]| -> Vec<u8> {
            let h = RawHeader {
                ty,
                req_id: 77,
                tx_id: 0,
                len: payload.len() as u32,
            };
            let mut m = h.to_wire().to_vec();
            m.extend_from_slice(payload);
            let out = s.borrow_mut().request(conn, &m).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, conn);
            let r = RawHeader::from_wire(out[0].1[..16].try_into().unwrap());
            assert_eq!(r.req_id, 77);
            out[0].1[16..].to_vec()
        };
        assert_eq!(send(2, b"/a b\0"), b"EINVAL\0");
        assert_eq!(send(2, b"/a"), b"EINVAL\0"); // missing NUL
        assert_eq!(send(2, b"/a\0/b\0"), b"EINVAL\0"); // two args
        assert_eq!(send(2, b"/a/\0"), b"EINVAL\0");
        assert_eq!(send(2, b"/\xff\0"), b"EINVAL\0");
        assert_eq!(send(11, b""), b"EINVAL\0");
        assert_eq!(send(999, b""), b"EINVAL\0");
        assert_eq!(send(16, b"ENOENT\0"), b"EINVAL\0");
        assert_eq!(send(8, b""), b"ENOSYS\0");
        assert_eq!(send(14, b"/local\0"), b"EINVAL\0"); // no perms
        assert_eq!(send(14, b"/local\0q1\0"), b"EINVAL\0");
        assert_eq!(send(7, b"X\0"), b"EINVAL\0");
        assert_eq!(send(10, b"abc\0"), b"EINVAL\0");
        assert_eq!(send(4, b"/a\0"), b"EINVAL\0"); // watch without token
        assert_eq!(send(5, b"/a\0t\0"), b"ENOENT\0"); // unwatch of an unknown watch
                                                      // A reply longer than 4096 bytes is E2BIG.
        for i in 0..700 {
            s.borrow_mut()
                .admin_write(&format!("/big/node{i:04}"), b"", &[]);
        }
        assert_eq!(send(1, b"/big\0"), b"E2BIG\0");
        assert!(s.borrow().is_alive(conn));
    }

    #[test]
    fn oversized_header_kills_only_that_connection() {
        let (s, mut d0, mut d5, _) = setup();
        let conn = d5.transport().conn();
        let h = RawHeader {
            ty: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        };
        assert!(matches!(
            s.borrow_mut().feed(conn, &h.to_wire()),
            Err(ServerError::Protocol(_, DecodeError::PayloadTooLong { .. }))
        ));
        assert!(!s.borrow().is_alive(conn));
        assert_eq!(
            d5.read(T, "device", &mut w()),
            Err(Error::Transport(TransportError::Closed))
        );
        d0.write(T, "/still", b"ok", &mut w()).unwrap();
        assert_eq!(
            s.borrow_mut().feed(ConnId(999), b"x"),
            Err(ServerError::NoConnection(ConnId(999)))
        );
    }

    #[test]
    fn split_requests_are_reassembled() {
        let (s, _d0, ..) = setup();
        let conn = s.borrow_mut().connect(0);
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            MsgType::WRITE,
            1,
            TxId::NONE,
            &[b"/k", b"v"],
            true,
        )
        .unwrap();
        encode(&mut bytes, MsgType::READ, 2, TxId::NONE, &[b"/k"], false).unwrap();
        for b in &bytes {
            s.borrow_mut().feed(conn, core::slice::from_ref(b)).unwrap();
        }
        let out = s.borrow_mut().take_output(conn);
        let mut d = Decoder::new();
        let mut input = &out[..];
        let f = d.decode(&mut input).unwrap().unwrap();
        assert_eq!(
            (f.header.ty, f.header.req_id, f.payload),
            (MsgType::WRITE, 1, &b"OK\0"[..])
        );
        let f = d.decode(&mut input).unwrap().unwrap();
        assert_eq!(
            (f.header.ty, f.header.req_id, f.payload),
            (MsgType::READ, 2, &b"v"[..])
        );
    }

    #[test]
    fn watches_fire_on_registration_changes_below_and_ancestors() {
        let (s, mut d0, mut d5, _) = setup();
        d0.watch("/w", "t", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/w", "t")]);
        d0.write(T, "/w/a/b", b"1", &mut w()).unwrap();
        d0.write(T, "/other", b"1", &mut w()).unwrap();
        d0.mkdir(T, "/w/a", &mut w()).unwrap(); // exists: no event
        d0.mkdir(T, "/w/m", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/w/a/b", "t"), ev("/w/m", "t")]);
        // A change above a watched path does not fire it (only the registration did).
        d0.watch("/x/y/z", "deep", &mut w()).unwrap();
        d0.write(T, "/x", b"", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/x/y/z", "deep")]);
        // rm of a subtree: watches at or above the top see the top; a watch on a removed node
        // below sees that node; a watch on a path that never existed sees nothing.
        d0.watch("/w/a/b", "leaf", &mut w()).unwrap();
        d0.watch("/w/a/b/never", "never", &mut w()).unwrap();
        events(&mut d0);
        d0.rm(T, "/w/a", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/w/a", "t"), ev("/w/a/b", "leaf")]);
        d0.unwatch("/w/a/b", "leaf", &mut w()).unwrap();
        // Two watches on one path with different tokens both fire; a duplicate is EEXIST.
        d0.watch("/w", "t2", &mut w()).unwrap();
        assert_eq!(errno(d0.watch("/w", "t2", &mut w())), Errno::EEXIST);
        events(&mut d0);
        d0.write(T, "/w", b"", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/w", "t"), ev("/w", "t2")]);
        d0.unwatch("/w", "t", &mut w()).unwrap();
        d0.write(T, "/w", b"", &mut w()).unwrap();
        assert_eq!(events(&mut d0), vec![ev("/w", "t2")]);
        // Another domain's watch fires on dom0's change only where it may read; relative paths.
        d5.watch("device", "dev", &mut w()).unwrap();
        d5.watch("/local/domain/6", "other", &mut w()).unwrap();
        assert_eq!(
            events(&mut d5),
            vec![ev("device", "dev"), ev("/local/domain/6", "other")]
        );
        d0.write(T, "/local/domain/5/device/vusb/0/state", b"3", &mut w())
            .unwrap();
        d0.write(T, "/local/domain/6/data/x", b"3", &mut w())
            .unwrap();
        assert_eq!(events(&mut d5), vec![ev("device/vusb/0/state", "dev")]);
        // Special watches fire for dom0 only.
        d0.watch("@releaseDomain", "rel", &mut w()).unwrap();
        d5.watch("@releaseDomain", "rel", &mut w()).unwrap();
        events(&mut d0);
        events(&mut d5);
        s.borrow_mut().remove_domain(6);
        let e = events(&mut d0);
        assert!(e.contains(&ev("@releaseDomain", "rel")), "{e:?}");
        assert_eq!(events(&mut d5), vec![]);
        assert_eq!(s.borrow().admin_read("/local/domain/6"), None);
    }

    #[test]
    fn transactions_commit_abort_and_conflict() {
        let (s, mut d0, mut d5, _) = setup();
        d0.write(T, "/t/a", b"0", &mut w()).unwrap();
        d0.watch("/t", "tok", &mut w()).unwrap();
        events(&mut d0);
        // Commit: invisible until committed, events at commit.
        let tx = d0.transaction_start(&mut w()).unwrap();
        d0.write(tx, "/t/a", b"1", &mut w()).unwrap();
        d0.write(tx, "/t/n/new", b"2", &mut w()).unwrap();
        assert_eq!(d0.read(tx, "/t/a", &mut w()).unwrap(), b"1");
        assert_eq!(d0.read(T, "/t/a", &mut w()).unwrap(), b"0");
        assert_eq!(errno(d0.read(T, "/t/n/new", &mut w())), Errno::ENOENT);
        assert_eq!(events(&mut d0), vec![]);
        assert_eq!(s.borrow().open_transactions(), 1);
        d0.transaction_end(tx, true, &mut w()).unwrap();
        assert_eq!(s.borrow().open_transactions(), 0);
        assert_eq!(d0.read(T, "/t/a", &mut w()).unwrap(), b"1");
        assert_eq!(d0.read(T, "/t/n/new", &mut w()).unwrap(), b"2");
        assert_eq!(
            events(&mut d0),
            vec![ev("/t/a", "tok"), ev("/t/n/new", "tok")]
        );
        // Abort: nothing happens.
        let tx = d0.transaction_start(&mut w()).unwrap();
        d0.rm(tx, "/t/a", &mut w()).unwrap();
        d0.transaction_end(tx, false, &mut w()).unwrap();
        assert_eq!(d0.read(T, "/t/a", &mut w()).unwrap(), b"1");
        assert_eq!(events(&mut d0), vec![]);
        // Conflict: another connection changes a node the transaction read.
        let tx = d0.transaction_start(&mut w()).unwrap();
        assert_eq!(d0.read(tx, "/t/a", &mut w()).unwrap(), b"1");
        d0.write(tx, "/t/b", b"x", &mut w()).unwrap();
        let mut d0b = Client::new(SimTransport::connect(&s, 0));
        d0b.write(T, "/t/a", b"other", &mut w()).unwrap();
        assert_eq!(errno(d0.transaction_end(tx, true, &mut w())), Errno::EAGAIN);
        assert_eq!(errno(d0.read(T, "/t/b", &mut w())), Errno::ENOENT);
        // A change to an unrelated node does not conflict.
        let tx = d0.transaction_start(&mut w()).unwrap();
        d0.read(tx, "/t/a", &mut w()).unwrap();
        d0b.write(T, "/elsewhere", b"", &mut w()).unwrap();
        d0.transaction_end(tx, true, &mut w()).unwrap();
        // Unknown / foreign transaction ids, nested start, quota.
        assert_eq!(errno(d0.read(TxId(12345), "/t/a", &mut w())), Errno::ENOENT);
        let tx = d0.transaction_start(&mut w()).unwrap();
        assert_eq!(errno(d5.read(tx, "device", &mut w())), Errno::ENOENT);
        assert_eq!(errno(d5.transaction_end(tx, true, &mut w())), Errno::ENOENT);
        assert_eq!(
            errno(d0.request(tx, crate::xenstore::Request::TransactionStart, &mut w())),
            Errno::EBUSY
        );
        for _ in 1..MAX_TRANSACTIONS {
            d0.transaction_start(&mut w()).unwrap();
        }
        assert_eq!(errno(d0.transaction_start(&mut w())), Errno::ENOSPC);
        // Disconnecting drops the connection's transactions.
        let conn = d0.transport().conn();
        s.borrow_mut().disconnect(conn);
        assert_eq!(s.borrow().open_transactions(), 0);
    }

    #[test]
    fn transaction_helper_retries_until_commit() {
        let (s, mut d0, ..) = setup();
        d0.write(T, "/counter", b"0", &mut w()).unwrap();
        let mut other = Client::new(SimTransport::connect(&s, 0));
        let mut interfere = 2;
        let r = d0.transaction(5, &mut w(), |c, tx, wt| {
            let v = c.read_u32(tx, "/counter", wt)?;
            if interfere > 0 {
                interfere -= 1;
                other.write(T, "/counter", b"10", &mut || false)?;
            }
            let mut s = Vec::new();
            wire::push_decimal(&mut s, v + 1);
            c.write(tx, "/counter", &s, wt)?;
            Ok(v)
        });
        assert_eq!(r, Ok(10));
        assert_eq!(s.borrow().admin_read("/counter"), Some(&b"11"[..]));
    }

    /// Operations of the model test, on a small set of paths.
    #[derive(Debug, Clone)]
    enum MOp {
        Write(usize, u8),
        Mkdir(usize),
        Rm(usize),
        Read(usize),
        Dir(usize),
    }

    const PATHS: [&str; 7] = ["/m", "/m/a", "/m/b", "/m/a/x", "/m/a/y", "/m/b/x", "/n"];

    fn mop() -> impl Strategy<Value = MOp> {
        let p = 0..PATHS.len();
        prop_oneof![
            (p.clone(), any::<u8>()).prop_map(|(i, v)| MOp::Write(i, v)),
            p.clone().prop_map(MOp::Mkdir),
            p.clone().prop_map(MOp::Rm),
            p.clone().prop_map(MOp::Read),
            p.prop_map(MOp::Dir),
        ]
    }

    /// The simple model: a map of existing paths (parents implied by creation).
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Model(BTreeMap<String, Vec<u8>>);

    impl Model {
        fn create_parents(&mut self, p: &str) {
            let mut q = parent_of(p);
            while let Some(x) = q {
                if x == "/" {
                    break;
                }
                self.0.entry(String::from(x)).or_default();
                q = parent_of(x);
            }
        }
        fn apply(&mut self, op: &MOp) -> Result<Vec<u8>, Errno> {
            match *op {
                MOp::Write(i, v) => {
                    self.create_parents(PATHS[i]);
                    self.0.insert(PATHS[i].into(), vec![v]);
                    Ok(b"OK\0".to_vec())
                }
                MOp::Mkdir(i) => {
                    self.create_parents(PATHS[i]);
                    self.0.entry(PATHS[i].into()).or_default();
                    Ok(b"OK\0".to_vec())
                }
                MOp::Rm(i) => {
                    let p = PATHS[i];
                    if !self.0.contains_key(p) {
                        let parent = parent_of(p).unwrap();
                        return if parent == "/" || self.0.contains_key(parent) {
                            Ok(b"OK\0".to_vec())
                        } else {
                            Err(Errno::ENOENT)
                        };
                    }
                    self.0.retain(|k, _| !is_at_or_below(k, p));
                    Ok(b"OK\0".to_vec())
                }
                MOp::Read(i) => self.0.get(PATHS[i]).cloned().ok_or(Errno::ENOENT),
                MOp::Dir(i) => {
                    let p = PATHS[i];
                    if !self.0.contains_key(p) {
                        return Err(Errno::ENOENT);
                    }
                    let mut out = Vec::new();
                    for k in self.0.keys() {
                        if parent_of(k) == Some(p) {
                            out.extend_from_slice(&k.as_bytes()[p.len() + 1..]);
                            out.push(0);
                        }
                    }
                    Ok(out)
                }
            }
        }
    }

    fn real_apply(c: &mut C, tx: TxId, op: &MOp) -> Result<Vec<u8>, Errno> {
        use crate::xenstore::Request as R;
        let v;
        let req = match *op {
            MOp::Write(i, x) => {
                v = [x];
                R::Write(PATHS[i], &v)
            }
            MOp::Mkdir(i) => R::Mkdir(PATHS[i]),
            MOp::Rm(i) => R::Rm(PATHS[i]),
            MOp::Read(i) => R::Read(PATHS[i]),
            MOp::Dir(i) => R::Directory(PATHS[i]),
        };
        c.request(tx, req, &mut || false)
            .map_err(|e| e.errno().unwrap())
    }

    fn real_state(s: &Rc<RefCell<Server>>) -> Model {
        let s = s.borrow();
        Model(
            s.admin_paths()
                .into_iter()
                .filter(|p| p.starts_with("/m") || p.starts_with("/n"))
                .map(|p| {
                    let v = s.admin_read(&p).unwrap().to_vec();
                    (p, v)
                })
                .collect(),
        )
    }

    proptest! {
        /// The server's results and tree match the model for any sequence of operations.
        #[test]
        fn server_matches_model(ops in proptest::collection::vec(mop(), 1..60)) {
            let s = Rc::new(RefCell::new(Server::new()));
            let mut c = Client::new(SimTransport::connect(&s, 0));
            let mut m = Model::default();
            for op in &ops {
                let want = m.apply(op);
                let got = real_apply(&mut c, T, op);
                prop_assert_eq!(got, want, "op {:?}", op);
            }
            prop_assert_eq!(real_state(&s), m);
        }

        /// Transactions are atomic and isolated: a transaction sees its snapshot plus its own
        /// changes; on commit its operations take effect as if run at commit time; on EAGAIN none
        /// do. Without interference a commit always succeeds.
        #[test]
        fn transactions_are_serializable(
            setup_ops in proptest::collection::vec(mop(), 0..15),
            tx_ops in proptest::collection::vec(mop(), 1..12),
            other_ops in proptest::collection::vec(mop(), 0..4),
        ) {
            let s = Rc::new(RefCell::new(Server::new()));
            let mut a = Client::new(SimTransport::connect(&s, 0));
            let mut b = Client::new(SimTransport::connect(&s, 0));
            let mut m = Model::default();
            for op in &setup_ops {
                m.apply(op).ok();
                real_apply(&mut a, T, op).ok();
            }
            let tx = a.transaction_start(&mut || false).unwrap();
            let mut snapshot = m.clone();
            for op in &tx_ops {
                let want = snapshot.apply(op);
                prop_assert_eq!(real_apply(&mut a, tx, op), want);
            }
            let mut after_other = m.clone();
            for op in &other_ops {
                let want = after_other.apply(op);
                prop_assert_eq!(real_apply(&mut b, T, op), want);
            }
            let r = a.transaction_end(tx, true, &mut || false);
            if r.is_ok() {
                let mut serial = after_other.clone();
                for op in &tx_ops { serial.apply(op).ok(); }
                prop_assert_eq!(real_state(&s), serial);
            } else {
                prop_assert_eq!(r.unwrap_err().errno(), Some(Errno::EAGAIN));
                prop_assert!(!other_ops.is_empty());
                prop_assert_eq!(real_state(&s), after_other);
            }
        }
    }
}
