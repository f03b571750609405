//! usbdom: a Xen PV USB driver domain unikernel.
//!
//! Two entries (see `boot/`): `usbdom_xen_pv_main` (Xen PV domU) and `usbdom_pvh_main` (plain QEMU
//! through PVH). Both set up the console, logging, time and heap, then build their platform
//! (`platform::pvh::PvhPlatform` or the Xen platform of `crate::xen`) and either run a self-test
//! (`usbdom.selftest=<name>` on the command line) or the driver domain service.
//!
//! Build: `cargo build -p usbdom --target x86_64-unknown-none --release` (`build.rs` links with
//! `boot/linker.ld`, non-PIE; nothing else to pass). Run under plain QEMU (PVH entry):
//! `qemu-system-x86_64 -accel tcg -M q35 -m 64 -display none -serial stdio -no-reboot -kernel <elf>
//! -append usbdom.selftest=probe -device isa-debug-exit,iobase=0xf4,iosize=0x04 -device qemu-xhci`
//! (exit status 33 = pass, 35 = fail). Under Xen: `type="pv"`, `kernel=<elf>`, `memory=8`,
//! `pci=['BDF']`; `extra="usbdom.selftest=<name>"` runs a self-test instead of the service.
//! Kernel-core self-tests: `unit` (both), `pvmm` (Xen; optional `usbdom.bar0=<hex>`
//! `usbdom.bar0size=<hex>`), and the expected-failure checks `panic`, `fault`, `null` (a `PANIC at`
//! line, then `SELFTEST FAIL <name>: panic` and the crash exit).
#![no_std]
#![no_main]

extern crate alloc;

// Modules whose API is used by `crate::xen` and the USB stack wiring, not all of it by main yet.
#[allow(dead_code)]
mod arch;
mod backend;
mod cmdline;
mod console;
#[allow(dead_code)]
mod event;
mod exit;
#[allow(dead_code)]
mod frames;
mod heap;
mod logger;
mod panic;
#[allow(dead_code)]
mod platform;
#[allow(dead_code)]
mod pv;
#[cfg(feature = "selftest")]
mod selftest;
#[cfg(not(feature = "selftest"))]
#[path = "selftest_off.rs"]
mod selftest;
#[allow(dead_code)]
mod time;
mod xen;

use platform::Kind;

/// Banner line (`usbdom 0.1.0 starting (pvh)`): the harness greps it.
fn banner(kind: Kind) {
    log::info!(target: "usbdom", "usbdom {} starting ({})", env!("CARGO_PKG_VERSION"), kind.name());
}

/// PVH entry (from `boot/`): `start_info_pa` = physical address of `hvm_start_info`.
#[no_mangle]
pub extern "C" fn usbdom_pvh_main(start_info_pa: u64) -> ! {
    exit::set_kind(Kind::Pvh);
    console::init_serial();
    arch::exceptions::init_pvh();
    logger::init(log::LevelFilter::Info);
    let khz = time::init_tsc();
    banner(Kind::Pvh);
    let (img_start, img_end) = boot::image_range();
    // SAFETY: `start_info_pa` is what the PVH loader passed in %ebx; boot/ identity-maps 0..4 GiB.
    let info = unsafe { platform::pvh::parse_start_info(start_info_pa, img_end as u64) };
    let Some(info) = info else {
        log::error!(target: "error", "bad hvm_start_info at {start_info_pa:#x}: not started through PVH?");
        exit::exit(exit::Exit::Crash);
    };
    cmdline::set(info.cmdline);
    arch::pvh_unmap_page0();
    log::info!(target: "usbdom",
        "image {img_start:#x}..{img_end:#x}, TSC {} MHz, cmdline '{}'", khz / 1000, info.cmdline);
    // DMA pool: up to 16 MiB of the RAM after the image.
    let (ram_start, ram_end) = info.ram_after_image;
    let pool_end = ram_end.min(ram_start + (16 << 20));
    platform::pvh::init_dma_pool(ram_start, pool_end);
    log::info!(target: "usbdom", "DMA pool {ram_start:#x}..{pool_end:#x} ({} pages, identity-mapped)",
        platform::pvh::dma_pool_free_pages());
    let platform = platform::pvh::PvhPlatform::new();
    if let Some(name) = cmdline::get(info.cmdline, "usbdom.selftest") {
        selftest::run(name, &platform);
    }
    log::info!(target: "usbdom", "ready");
    log::info!(target: "usbdom", "no service under PVH without a self-test: shutdown (poweroff)");
    exit::exit(exit::Exit::Poweroff)
}

/// Xen PV entry (from `boot/`): `start_info` = virtual address of Xen's `start_info`.
#[no_mangle]
pub extern "C" fn usbdom_xen_pv_main(start_info: *const u8) -> ! {
    exit::set_kind(Kind::XenPv);
    console::init_xen_early();
    // SAFETY: Xen passes the start_info VA in %rsi; it is mapped and 1168 bytes long.
    let si = unsafe { pv::start_info::read(start_info as usize) };
    pv::mm::init_p2m(si.mfn_list as usize, si.nr_pages as usize);
    // The console ring page is in Xen's initial mapping: va = m2p[mfn] * 4096.
    let cons_va = pv::mm::pfn_to_va(pv::mm::mfn_to_pfn(si.console_mfn));
    // SAFETY: the console frame is ours, mapped by the domain builder at its pfn's address.
    unsafe { console::init_xen_ring(cons_va, si.console_evtchn) };
    logger::init(log::LevelFilter::Info);
    let traps = arch::exceptions::init_xen_pv();
    if traps != 0 {
        log::warn!(target: "usbdom", "set_trap_table failed ({traps}): CPU exceptions will not be reported");
    }
    let si_info = pv::boot_xen(&si);
    banner(Kind::XenPv);
    log::info!(target: "usbdom", "{si_info}");
    let cmdline: &'static str = alloc::string::String::from(pv::start_info::cmdline(&si)).leak();
    cmdline::set(cmdline);
    log::info!(target: "usbdom", "cmdline '{cmdline}'");
    let selftest = cmdline::get(cmdline, "usbdom.selftest");
    if let Some(name) = selftest.filter(|n| selftest::is_core(n)) {
        selftest::run_core(name);
    }
    // Everything Xen-specific beyond boot, console, time, memory and the event loop: xenstore,
    // pcifront, BARs, interrupts, DMA, the service loop and `xl shutdown`.
    xen::run(&si, selftest)
}
