//! usbdom's one entry point: `cargo xtask <command>`.
//!
//! - `build`: the kernel ELF and its stripped size;
//! - `test [host|qemu|xen|all]`: the three test tiers (default all), ending with one summary line
//!   `xtask: N passed, M failed, K skipped` and a non-zero exit on any failure;
//! - `run`: Xen + dom0 + usbdom with an emulated stick, showing what usbdom prints;
//! - `e2e`: the Xen setup with extra devices, a user script in dom0 and a monitor socket;
//! - `bench`: the benchmarks the crates expose, as ratios from one run.

mod bench;
mod breakdown;
mod build;
mod console;
mod cpio;
mod host;
mod pvusb_tier;
mod qemu;
mod qemu_tier;
mod report;
mod toolchain;
mod util;
mod xen;

use std::path::PathBuf;
use std::process::ExitCode;

use report::Report;

const USAGE: &str = "usage: cargo xtask <command>
  build                         build the kernel; print the ELF path and its stripped size
  test [host|qemu|xen|all]      run test tiers (default: all)
       [--scenario NAME]        qemu tier: only this scenario
  run [--hold SECS]             boot Xen + dom0 + usbdom with an emulated stick; dom0 as a xen-hcd
                                frontend gets the stick as /dev/sdX; usbdom's console and dom0's view shown
  e2e [--controller qemu-xhci|piix3-usb-uhci|ich9-usb-uhci1] [--device DEV]... [--script FILE]
      [--file SRC:DEST]... [--on 'LINE=>MONITOR CMD']... [--timeout SECS]
                                the Xen setup with extra QEMU devices, FILE run in dom0 once usbdom is
                                up (host file SRC at /DEST in dom0, e.g. a module to insmod), QEMU
                                monitor on target/e2e/monitor.sock; logs in target/e2e/
  bench                         run the exposed benchmarks (ratios from one run)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[1.min(args.len())..];
    match cmd {
        "build" => done(build::cmd_build()),
        "test" => cmd_test(rest),
        "run" => {
            let mut hold = 3;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--hold" => match it.next().and_then(|v| v.parse().ok()) {
                        Some(v) => hold = v,
                        None => return usage("--hold needs a number of seconds"),
                    },
                    _ => return usage(&format!("unknown argument {a}")),
                }
            }
            ok_or_fail(xen::cmd_run(hold))
        }
        "e2e" => {
            let mut o = xen::E2e::default();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                let mut val = || it.next().cloned();
                match a.as_str() {
                    "--controller" => match val() {
                        Some(v) => o.controller = Some(v),
                        None => return usage("--controller needs a QEMU device name"),
                    },
                    "--device" => match val() {
                        Some(v) => o.devices.push(v),
                        None => return usage("--device needs a value"),
                    },
                    "--script" => match val() {
                        Some(v) => o.script = Some(PathBuf::from(v)),
                        None => return usage("--script needs a file"),
                    },
                    "--file" => match val().as_deref().and_then(|v| v.split_once(':')) {
                        Some((src, dest)) if !dest.is_empty() => o
                            .files
                            .push((dest.trim_start_matches('/').to_string(), PathBuf::from(src))),
                        _ => return usage("--file needs SRC:DEST"),
                    },
                    "--on" => match val().as_deref().and_then(|v| v.split_once("=>")) {
                        Some((w, c)) => o.actions.push(qemu::Action {
                            when: w.to_string(),
                            send: c.trim().to_string(),
                        }),
                        None => return usage("--on needs 'LINE=>MONITOR COMMAND'"),
                    },
                    "--timeout" => match val().and_then(|v| v.parse().ok()) {
                        Some(v) => o.timeout_s = Some(v),
                        None => return usage("--timeout needs seconds"),
                    },
                    _ => return usage(&format!("unknown argument {a}")),
                }
            }
            ok_or_fail(xen::cmd_e2e(o))
        }
        "bench" => {
            let mut r = Report::default();
            bench::cmd_bench(&mut r);
            finish(r)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => usage(&format!("unknown command {other}")),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("xtask: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn done(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A boot's end: the setup's error, or what the boot came to ([`xen::verdict`]), named on the
/// last line.
fn ok_or_fail(r: Result<Result<(), String>, String>) -> ExitCode {
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(what)) => {
            eprintln!("xtask: FAILED: {what}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_test(args: &[String]) -> ExitCode {
    let mut tiers: Vec<&str> = Vec::new();
    let mut scenario = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "host" | "qemu" | "xen" => tiers.push(a),
            "all" => tiers.extend(["host", "qemu", "xen"]),
            "--scenario" => match it.next() {
                Some(s) => scenario = Some(s.clone()),
                None => return usage("--scenario needs a name"),
            },
            _ => return usage(&format!("unknown tier {a}")),
        }
    }
    if tiers.is_empty() {
        tiers = vec!["host", "qemu", "xen"];
    }
    let t0 = std::time::Instant::now();
    let mut r = Report::default();
    for t in tiers {
        let t1 = std::time::Instant::now();
        match t {
            "host" => host::tier(&mut r),
            "qemu" => qemu_tier::tier(&mut r, scenario.as_deref()),
            "xen" => xen::tier(&mut r),
            _ => unreachable!(),
        }
        println!("xtask: {t} tier took {:.0}s", util::secs(t1));
    }
    println!("xtask: total {:.0}s", util::secs(t0));
    finish(r)
}

fn finish(r: Report) -> ExitCode {
    let failed: Vec<_> = r
        .results
        .iter()
        .filter_map(|(n, v)| match v {
            report::Verdict::Fail(why) => Some(format!("  FAILED {n}: {why}")),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        println!("{}", failed.join("\n"));
    }
    println!("{}", r.summary());
    if r.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
