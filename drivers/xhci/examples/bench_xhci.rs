//! Host micro-benchmark of the xHCI driver for `cargo xtask bench` (contract in xtask's
//! `bench.rs`): `bench_xhci list` prints the variants (the first is the baseline);
//! `bench_xhci <variant> <n>` submits `n` transfers of that variant and polls their completions,
//! against the simulated controller of `xhci::sim`.
//!
//! Costs include the simulated controller's work.  The marginal cost of one more TRB in a TD is
//! `(bulk-16trb - bulk-1trb) / 15`, which `xtask bench` shows as the ratio of the two variants.

use hal::fake::{FakeClock, FakeDma, FakeMemory};
use hal::{DmaAlloc, DmaBuf, DmaSegment};
use usb_core::hc::*;
use usb_core::sim::SimDevice;
use usb_core::Bus;
use xhci::sim::SimXhci;
use xhci::Xhci;

/// The driver over the simulated controller's registers and the hal fakes.
type P = hal::fake::FakePlatform;

const VARIANTS: &[&str] = &["bulk-1trb", "bulk-16trb", "control-8"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("list") {
        for v in VARIANTS {
            println!("{v}");
        }
        return;
    }
    let (Some(variant), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: bench_xhci list | bench_xhci <variant> <iterations>");
        std::process::exit(2);
    };
    if !VARIANTS.contains(&variant.as_str()) {
        eprintln!("unknown variant {variant}");
        std::process::exit(2);
    }
    let mem = FakeMemory::new(0x20_0000, 0x80_0000);
    let sim = SimXhci::new(mem.clone(), false, 0);
    let storage = SimDevice::new(
        Speed::High,
        0x46f4,
        1,
        8,
        &[(0x81, 2, 512), (0x02, 2, 512)],
        "bench",
    );
    sim.plug(2, Some(storage));
    let dma = FakeDma::new(mem);
    let clock = FakeClock::default();
    let x = Xhci::<P>::new(sim.regs(), dma.clone(), clock.clone(), None).expect("bring-up");
    let mut bus = Bus::new(x, dma.clone(), clock).expect("bus");
    let ev = bus.scan();
    assert_eq!(ev.len(), 1, "{ev:?}");
    let dev = bus.registry.iter().next().unwrap().id;
    // 16 separate pages, 64 bytes used in each: one TRB each, little data to move.
    let pages: Vec<_> = (0..16).map(|_| dma.alloc(4096, 4096).unwrap()).collect();
    let segs: Vec<DmaSegment> = pages
        .iter()
        .map(|p| DmaSegment {
            bus_addr: p.bus_addr(),
            len: 64,
        })
        .collect();
    let setup = usb_core::request::SetupPacket::get_device_descriptor(8).to_bytes();
    let eight = [DmaSegment {
        bus_addr: pages[0].bus_addr(),
        len: 8,
    }];
    let (endpoint, setup, buffer) = match variant.as_str() {
        "bulk-1trb" => (EndpointAddress(0x02), None, &segs[..1]),
        "bulk-16trb" => (EndpointAddress(0x02), None, &segs[..16]),
        _ => (EndpointAddress::EP0, Some(setup), &eight[..]),
    };
    let req = TransferRequest {
        device: dev,
        endpoint,
        setup,
        buffer,
        flags: TransferFlags::empty(),
    };
    for _ in 0..n {
        let id = bus.hc.submit(&req).expect("submit");
        loop {
            match bus.hc.poll() {
                Some(HcEvent::Transfer(c)) if c.id == id => {
                    assert!(c.result.is_ok(), "{c:?}");
                    break;
                }
                Some(_) => {}
                None => panic!("no completion"),
            }
        }
        // Keep the simulated device's OUT log from growing without bound.
        sim.device(2).out_data.clear();
    }
    eprintln!(
        "{} transfers, {} TRBs",
        bus.hc.stats.transfers, bus.hc.stats.trbs
    );
}
