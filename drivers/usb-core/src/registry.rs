//! The device registry: every enumerated device with its position in the topology, descriptors
//! and strings (USB 2.0 §9.1 device states; the registry holds devices in the Configured state).

use alloc::string::String;
use alloc::vec::Vec;

use crate::descriptor::{Configuration, DeviceDescriptor};
use crate::hc::{DeviceId, DeviceInfo, HubInfo, Route};

/// One enumerated device.
#[derive(Debug, Clone)]
pub struct UsbDevice {
    pub id: DeviceId,
    pub info: DeviceInfo,
    /// USB address the controller gave it.
    pub address: u8,
    pub descriptor: DeviceDescriptor,
    /// The active configuration (raw bytes as read, and parsed); `None` when unconfigured.
    pub config_raw: Vec<u8>,
    pub config: Option<Configuration>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// The hub this device hangs off (`None` on a root port).
    pub parent: Option<DeviceId>,
    /// Set for hubs.
    pub hub: Option<HubInfo>,
}

impl UsbDevice {
    pub fn route(&self) -> Route {
        self.info.route
    }
}

/// All devices known on one controller.
#[derive(Debug, Default)]
pub struct Registry {
    devices: Vec<UsbDevice>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, dev: UsbDevice) {
        self.devices.retain(|d| d.id != dev.id);
        self.devices.push(dev);
    }

    pub fn get(&self, id: DeviceId) -> Option<&UsbDevice> {
        self.devices.iter().find(|d| d.id == id)
    }

    pub fn get_mut(&mut self, id: DeviceId) -> Option<&mut UsbDevice> {
        self.devices.iter_mut().find(|d| d.id == id)
    }

    pub fn by_route(&self, route: &Route) -> Option<&UsbDevice> {
        self.devices.iter().find(|d| d.info.route == *route)
    }

    pub fn iter(&self) -> impl Iterator<Item = &UsbDevice> {
        self.devices.iter()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Remove `id` and every device below it (children of a hub first), returning their IDs in
    /// the order they should be released (deepest first).
    pub fn remove_subtree(&mut self, id: DeviceId) -> Vec<DeviceId> {
        let mut order = Vec::new();
        self.collect(id, &mut order);
        self.devices.retain(|d| !order.contains(&d.id));
        order
    }

    fn collect(&self, id: DeviceId, out: &mut Vec<DeviceId>) {
        if out.contains(&id) {
            return;
        }
        let children: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|d| d.parent == Some(id))
            .map(|d| d.id)
            .collect();
        for c in children {
            self.collect(c, out);
        }
        if self.get(id).is_some() {
            out.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hc::Speed;

    fn dev(id: u8, route: Route, parent: Option<u8>) -> UsbDevice {
        UsbDevice {
            id: DeviceId(id),
            info: DeviceInfo {
                route,
                speed: Speed::High,
                tt: None,
            },
            address: id,
            descriptor: DeviceDescriptor::default(),
            config_raw: Vec::new(),
            config: None,
            manufacturer: None,
            product: None,
            serial: None,
            parent: parent.map(DeviceId),
            hub: None,
        }
    }

    #[test]
    fn subtree_removal_is_deepest_first() {
        let mut r = Registry::new();
        let root = Route::root(1);
        let hub2 = root.child(2).unwrap();
        r.insert(dev(1, root, None));
        r.insert(dev(2, hub2, Some(1)));
        r.insert(dev(3, hub2.child(1).unwrap(), Some(2)));
        r.insert(dev(4, Route::root(2), None));
        assert_eq!(r.by_route(&hub2).unwrap().id, DeviceId(2));
        let gone = r.remove_subtree(DeviceId(1));
        assert_eq!(gone, vec![DeviceId(3), DeviceId(2), DeviceId(1)]);
        assert_eq!(r.len(), 1);
        assert!(r.get(DeviceId(4)).is_some());
        assert!(r.remove_subtree(DeviceId(9)).is_empty());
    }
}
