//! Physical port paths: how usbdom names a physical USB device in `port/N` and in its published
//! device list.
//!
//! The `usbif` protocol leaves the string in the backend's `port/N` key to the backend
//! (`../shared/reference/pvusb-protocol.md` §1.12). usbdom uses a controller-relative path in the
//! style of Linux sysfs bus ids: `<controller>-<root port>[.<hub port>…]`, e.g. `1-3` (controller
//! 1, root port 3) or `1-3.2` (port 2 of the hub on root port 3). Controllers are numbered from 1
//! in the order usbdom drives them. Xenstore node names may not contain `.`, so the published
//! node for `1-3.2` is `1-3_2` ([`PortPath::node_name`]).

use alloc::string::String;
use core::fmt;
use core::fmt::Write;
use usb_core::hc::Route;

/// A parsed physical port path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPath {
    /// Controller number, from 1.
    pub controller: u8,
    pub route: RouteKey,
}

/// [`Route`] with a total order (for maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub root_port: u8,
    pub depth: u8,
    pub string: u32,
}

impl From<Route> for RouteKey {
    fn from(r: Route) -> Self {
        RouteKey {
            root_port: r.root_port,
            depth: r.depth,
            string: r.string,
        }
    }
}

impl From<RouteKey> for Route {
    fn from(r: RouteKey) -> Self {
        Route {
            root_port: r.root_port,
            string: r.string,
            depth: r.depth,
        }
    }
}

/// Why a path string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not of the form `<controller>-<port>[.<port>…]`.
    Syntax,
    /// A number is 0 or too large (controller ≤ 255, root port ≤ 255, hub ports 1..=15).
    Range,
    /// More than five hub tiers (USB 2.0 §4.1.1).
    TooDeep,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Syntax => write!(f, "expected <controller>-<port>[.<port>...]"),
            PathError::Range => write!(f, "port number out of range"),
            PathError::TooDeep => write!(f, "more than five hub tiers"),
        }
    }
}

fn number(s: &str, max: u32) -> Result<u32, PathError> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PathError::Syntax);
    }
    let v: u32 = s.parse().map_err(|_| PathError::Syntax)?;
    if v == 0 || v > max {
        return Err(PathError::Range);
    }
    Ok(v)
}

impl PortPath {
    pub fn new(controller: u8, route: Route) -> Self {
        PortPath {
            controller,
            route: route.into(),
        }
    }

    /// Parse `1-3` / `1-3.2.4`.
    pub fn parse(s: &str) -> Result<PortPath, PathError> {
        let (c, rest) = s.split_once('-').ok_or(PathError::Syntax)?;
        let controller = number(c, 255)? as u8;
        let mut parts = rest.split('.');
        let root = number(parts.next().ok_or(PathError::Syntax)?, 255)? as u8;
        let mut route = Route::root(root);
        for p in parts {
            let port = number(p, 15)? as u8;
            route = route.child(port).ok_or(PathError::TooDeep)?;
        }
        Ok(PortPath::new(controller, route))
    }

    pub fn route(&self) -> Route {
        self.route.into()
    }

    /// The xenstore node name (`.` is not allowed in node names): `1-3.2` → `1-3_2`.
    pub fn node_name(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "{self}");
        s.replace('.', "_")
    }
}

impl fmt::Display for PortPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.controller, self.route())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parse_and_format() {
        let p = PortPath::parse("1-3").unwrap();
        assert_eq!(p.controller, 1);
        assert_eq!(p.route(), Route::root(3));
        assert_eq!(p.to_string(), "1-3");
        let q = PortPath::parse("2-3.2.15").unwrap();
        assert_eq!(
            q.route(),
            Route::root(3).child(2).unwrap().child(15).unwrap()
        );
        assert_eq!(q.to_string(), "2-3.2.15");
        assert_eq!(q.node_name(), "2-3_2_15");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "1", "1-", "-3", "1-3.", "1-a", "1-3..2", " 1-3", "1-3 ", "1-+3", "1-1234",
        ] {
            assert_eq!(PortPath::parse(bad), Err(PathError::Syntax), "{bad:?}");
        }
        assert_eq!(PortPath::parse("0-1"), Err(PathError::Range));
        assert_eq!(PortPath::parse("1-0"), Err(PathError::Range));
        assert_eq!(PortPath::parse("1-3.16"), Err(PathError::Range));
        assert_eq!(PortPath::parse("1-256"), Err(PathError::Range));
        assert_eq!(PortPath::parse("1-1.1.1.1.1.1.1"), Err(PathError::TooDeep));
        assert!(PortPath::parse("1-1.1.1.1.1.1").is_ok());
    }
}
