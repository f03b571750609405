//! `cargo xtask bench`, Xen part (`USBDOM_BENCH=xen` runs only this): PVUSB through usbdom against
//! the same dom0 Linux owning the controller directly, side by side in ONE Xen boot under QEMU TCG
//! (`-smp 1`, the Xen tier's QEMU flags and devices: `qemu-xhci` + a 16 MiB `usb-storage` stick).
//!
//! dom0 runs `tests/xen/bench.sh`: first "direct" (dom0 loads `xhci-hcd`/`xhci-pci`, shipped in
//! the run's initramfs from the host's module tree of the dom0 kernel), then it unloads them,
//! hands the controller to usbdom (`xl pci=`), becomes its `xen-hcd` frontend and measures again,
//! twice, each time with a fresh usbdom: with the grant-copy data path (`usbdom.zero_copy=0`,
//! "usbdom"/copy) and with grant map (`usbdom.zero_copy=1`, "usbmap"/map); then a third time, grant
//! copy again, with dom0's frontend `xen-hcd-sg.ko` (scatter-gather: one URB per SCSI command of up
//! to 60 KiB instead of one per 4 KiB page; `tests/xen-hcd/xen-hcd-sg.patch`), "usbdom-sg"/sg. usbdom's loop
//! statistics lines (10 s windows; dom0 pauses 11 s between phases so each covers one phase) are
//! printed after the table. Per mode: sequential read of the whole stick (`qd1 DEV seq 3`: 1 MiB O_DIRECT
//! `pread`s, three passes, CLOCK_MONOTONIC; plain `dd bs=1M iflag=direct` is also run once as a
//! cross-check, timed by /proc/uptime at 10 ms resolution) and QD1 4 KiB random-read latency (`qd1` below, a static C program: 200 O_DIRECT
//! `pread`s at the same pseudo-random offsets in both modes, timed with CLOCK_MONOTONIC).
//! Also: `xl create` → usbdom ready (host serial stamps; the `U|` copy of the console is polled
//! every 0.3 s, so ±0.3 s), `usbdom create-controller --wait` → backend Connected (dom0 uptime,
//! 10 ms resolution), the stripped image size and the `memory=` usbdom ran in.
//! Ratios are reported, never asserted.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::qemu::Line;
use crate::report::Report;
use crate::util;
use crate::xen::{self, Boot};

/// Benchmark tool run in dom0: `/guest/qd1 DEV N SEED` (QD1 4 KiB random reads) prints
/// `n=.. mean_us=.. median_us=.. p90_us=.. min_us=.. max_us=..`; `/guest/qd1 DEV seq PASSES`
/// (whole-device 1 MiB reads) prints `bytes=.. secs=.. mib_s=..`.
const QD1_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: qd1 DEV N [SEED] | qd1 DEV seq PASSES\n"); return 2; }
  int seq = !strcmp(argv[2], "seq");
  int n = atoi(argv[seq ? 3 : 2]); unsigned seed = !seq && argc > 3 ? (unsigned)atoi(argv[3]) : 1;
  int fd = open(argv[1], O_RDONLY | O_DIRECT);
  if (fd < 0) { perror("open"); return 1; }
  unsigned long long size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) size = (unsigned long long)lseek(fd, 0, SEEK_END);
  if (size < 4096) { fprintf(stderr, "size %llu\n", size); return 1; }
  if (seq) {
    void *big; if (n < 1 || posix_memalign(&big, 4096, 1 << 20)) return 1;
    double t0 = now(); unsigned long long total = 0;
    for (int p = 0; p < n; p++)
      for (unsigned long long off = 0; off < size; ) {
        ssize_t r = pread(fd, big, size - off < (1 << 20) ? size - off : (1 << 20), (off_t)off);
        if (r <= 0) { perror("pread"); return 1; }
        off += (unsigned long long)r; total += (unsigned long long)r;
      }
    double us = now() - t0;
    printf("bytes=%llu secs=%.4f mib_s=%.3f\n", total, us / 1e6, total / 1048576.0 / (us / 1e6));
    return 0;
  }
  void *buf; if (posix_memalign(&buf, 4096, 4096)) return 1;
  double *lat = calloc(n, sizeof *lat); if (!lat || n < 1) return 1;
  unsigned long long blocks = size / 4096, x = seed * 2654435761ull + 1;
  double sum = 0;
  for (int i = 0; i < n; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    off_t off = (off_t)((x >> 33) % blocks) * 4096;
    double t0 = now();
    if (pread(fd, buf, 4096, off) != 4096) { perror("pread"); return 1; }
    lat[i] = now() - t0; sum += lat[i];
  }
  qsort(lat, n, sizeof *lat, cmp);
  printf("n=%d mean_us=%.1f median_us=%.1f p90_us=%.1f min_us=%.1f max_us=%.1f\n", n, sum / n, lat[n / 2], lat[n * 9 / 10], lat[0], lat[n - 1]);
  return 0;
}
"#;

/// What the dom0 script reported: `BENCH-MEASURE <name> <value>` and `BENCH-FAIL <step>: <why>`.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub measures: Vec<(String, f64)>,
    pub fails: Vec<String>,
    /// `memory=` of the last `xl create usbdom` (a failed create at 8 is retried at 16).
    pub memory: Option<u32>,
}

impl Outcome {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.measures
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

pub fn parse(lines: &[Line]) -> Outcome {
    let mut o = Outcome::default();
    for l in lines {
        let t = &l.text;
        if let Some(i) = t.find("BENCH-MEASURE ") {
            let mut w = t[i + "BENCH-MEASURE ".len()..].split_whitespace();
            if let (Some(n), Some(Ok(v))) = (w.next(), w.next().map(str::parse::<f64>)) {
                o.measures.push((n.to_string(), v));
            }
        } else if let Some(i) = t.find("BENCH-FAIL ") {
            o.fails
                .push(t[i + "BENCH-FAIL ".len()..].trim().to_string());
        } else if let Some(i) = t.find(&format!("XT: xl create {} start (memory=", xen::DOMAIN)) {
            let rest = &t[i..];
            let v = rest.split("memory=").nth(1).unwrap_or("");
            o.memory = v.trim_end_matches(')').trim().parse().ok().or(o.memory);
        }
    }
    o
}

/// One row of the side-by-side table: label, then direct, usbdom with grant copy ("usbdom"),
/// usbdom with grant map ("usbmap"), usbdom with grant copy and the SG frontend ("usbdom-sg").
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    pub direct: Option<f64>,
    pub copy: Option<f64>,
    pub map: Option<f64>,
    pub sg: Option<f64>,
}

/// `a / b` when both are there and `b > 0`.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The side-by-side table.
pub fn table(o: &Outcome) -> Vec<Row> {
    let rows = [
        ("sequential read MiB/s", "seq-mib-s"),
        ("  cross-check: dd MiB/s", "dd-mib-s"),
        ("QD1 4 KiB mean us", "lat-mean-us"),
        ("QD1 4 KiB median us", "lat-median-us"),
        ("QD1 4 KiB p90 us", "lat-p90-us"),
    ];
    rows.iter()
        .map(|(label, key)| Row {
            label: label.to_string(),
            direct: o.get(&format!("direct-{key}")),
            copy: o.get(&format!("usbdom-{key}")),
            map: o.get(&format!("usbmap-{key}")),
            sg: o.get(&format!("usbdom-sg-{key}")),
        })
        .collect()
}

/// usbdom's loop statistics lines (from the live copy of its console), in order.
pub fn loop_stats(lines: &[Line]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.text.starts_with("U| ") && l.text.contains(" loop: "))
        .map(|l| l.text[3..].trim())
        .collect()
}

/// The dom0 script's `XT: <mode>: queue max_sectors_kb=.. max_hw_sectors_kb=.. max_segments=..`
/// lines (the block queue limits each frontend gave usb-storage), without the `XT: `.
pub fn sg_queue_lines(lines: &[Line]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| {
            let i = l.text.find("XT: ")?;
            let t = &l.text[i + 4..];
            t.contains(": queue max_sectors_kb=").then_some(t.trim())
        })
        .collect()
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// The dom0 kernel's `xhci-hcd.ko` and `xhci-pci.ko` (its release from `xen-hcd.ko`'s vermagic).
fn xhci_modules(art: &xen::Artifacts) -> Result<Vec<(String, PathBuf)>, String> {
    let vermagic = util::output(
        Command::new("modinfo")
            .args(["-F", "vermagic"])
            .arg(&art.xen_hcd),
    )?;
    let kver = vermagic
        .split_whitespace()
        .next()
        .ok_or("xen-hcd.ko has no vermagic")?
        .to_string();
    let deps =
        util::output(Command::new("modprobe").args(["--show-depends", "-S", &kver, "xhci-pci"]))?;
    let mut out = Vec::new();
    for l in deps.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first() == Some(&"insmod") && w.len() >= 2 {
            let p = PathBuf::from(w[1]);
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name == "xhci-hcd.ko" || name == "xhci-pci.ko" {
                out.push((format!("guest/{name}"), p));
            }
        }
    }
    if out.len() != 2 {
        return Err(format!(
            "xhci-hcd.ko/xhci-pci.ko not found for {kver} (built in, or compressed modules?): {deps}"
        ));
    }
    Ok(out)
}

/// `qd1` built static for dom0.
fn build_qd1(dir: &std::path::Path) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let src = dir.join("qd1.c");
    let bin = dir.join("qd1");
    fs::write(&src, QD1_C).map_err(|e| e.to_string())?;
    xen::dom0_c_program(&src, &bin)?;
    Ok(bin)
}

pub fn run(r: &mut Report) {
    println!("==== bench: Xen tier PVUSB (usbdom vs dom0 owning the xHCI directly; TCG -smp 1, one boot) ====");
    let name = "bench: xen pvusb usbdom vs direct";
    let art = match xen::prepare() {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => return r.skip(name, why),
        Err(e) => return r.fail(name, format!("prerequisites: {e}")),
    };
    let k = match crate::build::kernel() {
        Ok(k) => k,
        Err(e) => return r.fail(name, format!("kernel build: {e}")),
    };
    let dir = util::target().join("xen-bench");
    let mut extra = match xhci_modules(&art) {
        Ok(m) => m,
        Err(e) => return r.fail(name, e),
    };
    match build_qd1(&dir) {
        Ok(b) => extra.push(("guest/qd1".to_string(), b)),
        Err(e) => return r.fail(name, format!("qd1: {e}")),
    }
    let b = Boot {
        art: &art,
        guest: &k.stripped,
        test: "bench",
        // Four phases (direct, copy, map, sg): more than the default 480 s under load.
        dom0_vars: vec![("timeout".into(), "720".into())],
        controller: "qemu-xhci",
        devices: vec![],
        extra_files: extra,
        dir,
        name: "bench",
        monitor: None,
        actions: vec![],
        timeout: Duration::from_secs(900),
        echo: std::env::var_os("USBDOM_BENCH_ECHO").is_some(),
    };
    let res = match xen::boot(&b) {
        Ok(x) => x,
        Err(e) => return r.fail(name, format!("boot: {e}")),
    };
    let o = parse(&res.out.lines);
    println!(
        "bench xen: {} (log {}/bench.log, load {})",
        res.timings(),
        b.dir.display(),
        crate::bench::bench_qemu::load()
    );
    println!(
        "  {:24} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "", "direct", "copy", "map", "copy/dir", "map/dir", "map/copy", "sg", "sg/copy"
    );
    let rows = table(&o);
    for r in &rows {
        println!(
            "  {:24} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
            r.label,
            fmt(r.direct),
            fmt(r.copy),
            fmt(r.map),
            fmt(ratio(r.copy, r.direct)),
            fmt(ratio(r.map, r.direct)),
            fmt(ratio(r.map, r.copy)),
            fmt(r.sg),
            fmt(ratio(r.sg, r.copy))
        );
    }
    println!("  (copy: usbdom.zero_copy=0, grant copy; map: usbdom.zero_copy=1, grant map; sg: grant copy, dom0 frontend xen-hcd-sg.ko; each a fresh usbdom)");
    for l in sg_queue_lines(&res.out.lines) {
        println!("  {l}");
    }
    println!("  usbdom loop statistics (10 s windows; copy run first, then map, then sg):");
    for l in loop_stats(&res.out.lines) {
        println!("    {l}");
    }
    let create_ready = match (res.create_start(), res.ready()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cc = o.get("create-controller-to-connected-s");
    // usbdom's own stamp of its "ready" line (seconds since its start).
    let own_ready = res.out.find("usbdom: ready").and_then(|l| {
        l.text
            .split('[')
            .nth(1)?
            .split(']')
            .next()?
            .trim()
            .parse::<f64>()
            .ok()
    });
    println!(
        "  usbdom start -> ready (s, usbdom's own clock)     {}",
        fmt(own_ready)
    );
    println!(
        "  xl create -> usbdom ready (s, serial stamps)      {}",
        fmt(create_ready)
    );
    println!(
        "  create-controller -> backend Connected (s)        {}",
        fmt(cc)
    );
    println!(
        "  sum: xl create -> Connected, dom0 gaps excluded  {}",
        fmt(create_ready.zip(cc).map(|(a, b)| a + b))
    );
    println!(
        "  attach -> frontend /dev/sdX (s)                   {}",
        fmt(o.get("attach-to-disk-s"))
    );
    println!(
        "  usbdom stripped image {} bytes ({:.1} KiB), memory={} MiB",
        k.stripped_size,
        k.stripped_size as f64 / 1024.0,
        o.memory
            .map(|m| m.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let complete = rows
        .iter()
        .all(|r| r.direct.is_some() && r.copy.is_some() && r.map.is_some() && r.sg.is_some());
    if !o.fails.is_empty() || !complete {
        let why = if o.fails.is_empty() {
            "measurements missing (see the log)".to_string()
        } else {
            o.fails.join("; ")
        };
        println!("---- bench log tail ----\n{}", res.out.tail(40));
        r.fail(name, why);
    } else {
        r.pass(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t: &[&str]) -> Vec<Line> {
        crate::qemu::lines_at_0(t)
    }

    #[test]
    fn parses_measures_fails_and_memory() {
        let o = parse(&l(&[
            "[  1.0] XT: xl create usbdom start (memory=8)",
            "XT: xl create usbdom start (memory=16)",
            "BENCH-MEASURE direct-seq-mib-s 8.000",
            "BENCH-MEASURE usbdom-seq-mib-s 4.000",
            "BENCH-MEASURE junk",
            "BENCH-MEASURE nan-ish abc",
            "BENCH-FAIL usbdom-lat: qd1: pread: I/O error",
        ]));
        assert_eq!(o.memory, Some(16));
        assert_eq!(o.get("direct-seq-mib-s"), Some(8.0));
        assert_eq!(o.get("junk"), None);
        assert_eq!(o.get("nan-ish"), None);
        assert_eq!(o.fails, vec!["usbdom-lat: qd1: pread: I/O error"]);
    }

    #[test]
    fn table_has_both_data_paths_and_their_ratios() {
        let o = parse(&l(&[
            "BENCH-MEASURE direct-seq-mib-s 8",
            "BENCH-MEASURE usbdom-seq-mib-s 6",
            "BENCH-MEASURE usbmap-seq-mib-s 3",
            "BENCH-MEASURE usbdom-sg-seq-mib-s 12",
            "BENCH-MEASURE direct-lat-mean-us 1000",
            "BENCH-MEASURE usbdom-lat-mean-us 2500",
        ]));
        let t = table(&o);
        assert_eq!(
            (t[0].direct, t[0].copy, t[0].map),
            (Some(8.0), Some(6.0), Some(3.0))
        );
        assert_eq!(ratio(t[0].copy, t[0].direct), Some(0.75));
        assert_eq!(ratio(t[0].map, t[0].copy), Some(0.5));
        // The SG frontend's column is its own keys, not a prefix match of "usbdom-".
        assert_eq!(t[0].sg, Some(12.0));
        assert_eq!(ratio(t[0].sg, t[0].copy), Some(2.0));
        assert_eq!(t[2].sg, None);
        assert_eq!(ratio(t[2].copy, t[2].direct), Some(2.5));
        // A mode that produced nothing gives no ratio.
        assert_eq!(ratio(t[2].map, t[2].direct), None);
        assert_eq!(t[3].label, "QD1 4 KiB median us");
        assert_eq!((t[3].direct, t[3].copy, t[3].map), (None, None, None));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn queue_limit_lines() {
        let lines = l(&[
            "[ 50.0] XT: usbdom: queue max_sectors_kb=120 max_hw_sectors_kb=120 max_segments=2048",
            "XT: usbdom-sg: queue max_sectors_kb=60 max_hw_sectors_kb=60 max_segments=16",
            "XT: usbdom-sg: /dev/sda (32768 sectors)",
            "U| queue max_sectors_kb=1",
        ]);
        assert_eq!(
            sg_queue_lines(&lines),
            vec![
                "usbdom: queue max_sectors_kb=120 max_hw_sectors_kb=120 max_segments=2048",
                "usbdom-sg: queue max_sectors_kb=60 max_hw_sectors_kb=60 max_segments=16"
            ]
        );
    }

    #[test]
    fn loop_stats_are_usbdom_console_lines_only() {
        let lines = l(&[
            "U| [ 12.0] INFO backend: loop: 5 busy rounds, 3 sleeps (0 ended by the timeout); x",
            "XT: loop: not usbdom",
            "U| [ 13.0] INFO backend: serving",
            "U| [ 22.0] INFO backend: loop: 7 busy rounds",
        ]);
        assert_eq!(
            loop_stats(&lines),
            vec![
                "[ 12.0] INFO backend: loop: 5 busy rounds, 3 sleeps (0 ended by the timeout); x",
                "[ 22.0] INFO backend: loop: 7 busy rounds"
            ]
        );
    }
}
