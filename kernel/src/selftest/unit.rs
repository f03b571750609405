//! `unit`: the kernel core's own logic, run on the real target (PVH under QEMU, or a Xen PV domU):
//! frame allocator, command-line parsing, Xen time scaling, heap, event-loop timers, and under PVH
//! the identity DMA allocator. Each check returns a message naming what broke.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::event::{Event, EventLoop};
use crate::frames::FrameAllocator;
use crate::pv::shared_info::VcpuTime;

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

pub fn run() -> Result<(), String> {
    frames()?;
    cmdline()?;
    xen_time()?;
    heap()?;
    timers()?;
    log::info!(target: "unit", "frames, cmdline, xen time scaling, heap, timers: ok");
    Ok(())
}

fn frames() -> Result<(), String> {
    let mut fa = FrameAllocator::empty();
    fa.init(100, 64);
    check!(
        fa.free_frames() == 64,
        "fresh allocator has {} free",
        fa.free_frames()
    );
    let a = fa.alloc(1, 1, 0).ok_or("alloc 1")?;
    check!(a == 100, "first frame {a}");
    // 4 frames aligned to 4: 100 is used, so the first aligned run is 104.
    let b = fa.alloc(4, 4, 0).ok_or("alloc 4 aligned")?;
    check!(b == 104, "aligned run at {b}, want 104");
    // A 16-frame run that must not cross a 16-frame boundary: 112..128.
    let c = fa.alloc(16, 1, 16).ok_or("alloc boundary")?;
    check!(c % 16 == 0 && c >= 108, "boundary run at {c}");
    check!(
        fa.free_frames() == 64 - 21,
        "free after allocs {}",
        fa.free_frames()
    );
    check!(
        fa.alloc(17, 1, 16).is_none(),
        "run larger than its boundary was granted"
    );
    check!(
        fa.alloc(1000, 1, 0).is_none(),
        "oversized alloc was granted"
    );
    fa.free(b, 4);
    fa.free(b, 4); // double free ignored
    fa.free(5, 1); // foreign frame ignored
    check!(
        fa.free_frames() == 64 - 17,
        "free after frees {}",
        fa.free_frames()
    );
    let d = fa.alloc(4, 1, 0).ok_or("realloc")?;
    check!(d == 101, "first fit after free at {d}, want 101");
    fa.reserve(105, 3); // 105..108 are free here; reserve them
    check!(
        fa.alloc(1, 1, 0) == Some(108),
        "reserved frames were handed out"
    );
    Ok(())
}

fn cmdline() -> Result<(), String> {
    use crate::cmdline::get;
    let c = "console=hvc0 usbdom.selftest=probe  usbdom.x=1=2 flag";
    check!(get(c, "usbdom.selftest") == Some("probe"), "selftest key");
    check!(get(c, "usbdom.x") == Some("1=2"), "value containing '='");
    check!(get(c, "flag").is_none(), "bare word is not a key");
    check!(get(c, "usbdom").is_none(), "prefix matched");
    check!(get("", "a").is_none(), "empty cmdline");
    Ok(())
}

fn xen_time() -> Result<(), String> {
    // 2 GHz TSC: mul = 2^31 (0.5 ns per tick after shift 0).
    let t = VcpuTime {
        tsc_timestamp: 1000,
        system_time: 5_000_000,
        tsc_to_system_mul: 1 << 31,
        tsc_shift: 0,
    };
    check!(t.system_time_at(1000) == 5_000_000, "delta 0");
    check!(
        t.system_time_at(3000) == 5_001_000,
        "2000 ticks at 2 GHz = {}",
        t.system_time_at(3000) - 5_000_000
    );
    let t2 = VcpuTime { tsc_shift: -1, ..t };
    check!(
        t2.system_time_at(5000) == 5_001_000,
        "negative shift: {}",
        t2.system_time_at(5000)
    );
    let t3 = VcpuTime { tsc_shift: 1, ..t };
    check!(
        t3.system_time_at(2000) == 5_001_000,
        "positive shift: {}",
        t3.system_time_at(2000)
    );
    Ok(())
}

fn heap() -> Result<(), String> {
    let mut v: Vec<u32> = Vec::with_capacity(50_000);
    for i in 0..50_000u32 {
        v.push(i.wrapping_mul(2_654_435_761));
    }
    let w = v.clone();
    drop(v);
    check!(
        w.iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u32).wrapping_mul(2_654_435_761)),
        "heap data corrupted"
    );
    // Beyond the static arena: the heap must grow from the platform's pages.
    let big_len = 2 * 1024 * 1024;
    let mut big: Vec<u8> = Vec::new();
    big.try_reserve_exact(big_len)
        .map_err(|_| String::from("2 MiB allocation failed: heap did not grow"))?;
    big.resize(big_len, 0x5a);
    check!(big.iter().all(|&b| b == 0x5a), "grown heap data corrupted");
    check!(
        crate::heap::grown_bytes() >= big_len - crate::heap::ARENA_SIZE,
        "heap grew by {} only",
        crate::heap::grown_bytes()
    );
    drop(big);
    let s: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    check!(s.len() == 1000 && s.starts_with("abc"), "string");
    Ok(())
}

fn timers() -> Result<(), String> {
    let mut ev = EventLoop::new();
    check!(ev.wait().is_none(), "empty loop must not block");
    let now = crate::time::now_ns();
    ev.add_timer(now + 3_000_000, 2);
    ev.add_timer(now + 1_000_000, 1);
    ev.add_timer(now + 2_000_000, 3);
    ev.cancel_timer(3);
    let e1 = ev.wait();
    let t1 = crate::time::now_ns();
    let e2 = ev.wait();
    let t2 = crate::time::now_ns();
    check!(e1 == Some(Event::Timer(1)), "first event {e1:?}");
    check!(e2 == Some(Event::Timer(2)), "second event {e2:?}");
    check!(
        t1 >= now + 1_000_000 && t2 >= now + 3_000_000,
        "timer fired early"
    );
    check!(
        ev.wait().is_none(),
        "cancelled timer fired or loop not empty"
    );
    Ok(())
}

/// PVH only: identity DMA buffers are zeroed, distinct, inside the pool and never cross 64 KiB.
pub fn pvh_dma() -> Result<(), String> {
    use hal::{DmaAlloc, DmaBuf};
    let dma = crate::platform::pvh::PvhDma;
    let before = crate::platform::pvh::dma_pool_free_pages();
    let a = dma.alloc(4096, 64).map_err(|e| format!("alloc: {e}"))?;
    let b = dma
        .alloc(65536, 4096)
        .map_err(|e| format!("alloc 64K: {e}"))?;
    check!(
        a.bus_addr() % 4096 == 0 && b.bus_addr() % 4096 == 0,
        "alignment"
    );
    check!(a.bus_addr() != b.bus_addr(), "same buffer twice");
    check!(
        b.bus_addr() >> 16 == (b.bus_addr() + 65535) >> 16,
        "64 KiB buffer crosses a 64 KiB boundary"
    );
    check!(b.read64(0) == 0 && b.read32(65532) == 0, "not zeroed");
    a.write32(8, 0xdead_beef);
    a.write_bytes(100, b"usb");
    let mut buf = [0u8; 3];
    a.read_bytes(100, &mut buf);
    check!(a.read32(8) == 0xdead_beef && &buf == b"usb", "read back");
    check!(
        crate::platform::pvh::dma_pool_free_pages() == before - 17,
        "pool accounting"
    );
    drop(a);
    drop(b);
    check!(
        crate::platform::pvh::dma_pool_free_pages() == before,
        "buffers not returned on drop"
    );
    log::info!(target: "unit", "PVH identity DMA: ok");
    Ok(())
}
