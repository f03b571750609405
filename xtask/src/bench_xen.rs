//! `cargo xtask bench`, Xen part (`USBDOM_BENCH=xen` runs only this): PVUSB through usbdom against
//! the same dom0 Linux owning the controller directly, and against usbip (the peer a user would
//! pick instead), side by side in ONE Xen boot under QEMU TCG (`-smp 1`, the Xen tier's QEMU flags
//! and devices: `qemu-xhci` + a 16 MiB `usb-storage` stick).
//!
//! dom0 runs `tests/xen/bench.sh`, one shell function per mode of [`MODES`]: first "direct" (dom0
//! loads `xhci-hcd`/`xhci-pci`, shipped in the run's initramfs from the host's module tree of the
//! dom0 kernel); then "usbip" (dom0 owns the xHCI again, exports the stick with `usbip-host` +
//! `usbipd` and imports it back over 127.0.0.1 with `vhci-hcd`: Debian's `usbip` package, its
//! libraries and the three modules are shipped per run); then "qusb" (Xen's own PVUSB backend:
//! libxl starts QEMU for Xen, Debian's `qemu-system-xen`, shipped per run with its libraries, for
//! a Linux PV domU with `usbctrl=["type=qusb"]`; QEMU takes the stick from dom0's xHCI as a
//! `usb-host` device; the domU, the dom0 kernel with a busybox initramfs dom0 packs, is the
//! `xen-hcd` frontend and runs the measurements itself, `tests/xen/bench-domu.sh`; its dom0
//! CPU row is dom0's busy time across the domU's read, taken by dom0); then it unloads the xHCI
//! driver, hands the controller to usbdom (`xl pci=`), becomes its `xen-hcd` frontend and
//! measures again, twice, each time with a fresh usbdom: with the grant-copy data path
//! (`usbdom.zero_copy=0`, "usbdom"/copy, `usbdom-dom0` in the JSON) and with grant map
//! (`usbdom.zero_copy=1`, "usbmap"/map, `usbdom-dom0-map`); then a third time, grant copy again,
//! with dom0's frontend `xen-hcd-sg.ko` (scatter-gather, `tests/xen-hcd/xen-hcd-sg.patch`;
//! "usbdom-sg"/sg, `usbdom-dom0-sg`). usbdom's loop statistics lines (10 s
//! windows; dom0 pauses 11 s between phases so each covers one phase) are printed after the table.
//!
//! Per mode ([`ROWS`]): the stick's sha256 before and after; sequential read of the whole stick
//! (`qd1 DEV seq 3`: 1 MiB O_DIRECT `pread`s, three passes, CLOCK_MONOTONIC; plain `dd bs=1M
//! iflag=direct` is also run once as a cross-check, timed by /proc/uptime at 10 ms resolution);
//! sequential write (`qd1 DEV seqw 3 8`: 1 MiB O_DIRECT `pwrite`s over the first 8 MiB, saved
//! before and restored after); QD1 4 KiB random-read latency (200 O_DIRECT `pread`s at the same
//! pseudo-random offsets in all modes); dom0's busy CPU seconds per GiB of the sequential read
//! (`/proc/stat`: in a PV dom0 that is dom0's vCPU only, not usbdom's); for the modes through
//! usbdom, usbdom's own CPU seconds per GiB of that read (`xl list`'s Time(s), 0.1 s
//! resolution). dom0 prints `XT: phase` markers, shown on the host as progress lines. Also:
//! `xl create` → usbdom ready (host serial stamps; the `U|` copy of the console is polled every
//! 0.3 s, so ±0.3 s), `usbdom create-controller --wait` → backend Connected (dom0 uptime, 10 ms
//! resolution), the stripped image size and the `memory=` usbdom ran in. The results also go to
//! `target/bench/xen.json`.
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
/// (whole-device 1 MiB reads) prints `bytes=.. secs=.. mib_s=.. cpu_s=..`; `/guest/qd1 DEV seqw
/// PASSES MIB` (1 MiB O_DIRECT writes of a pattern over the first MIB MiB, PASSES times, then
/// `fdatasync`; then the region is read back and compared) prints the same and `verify=ok|bad`.
/// `cpu_s` is the busy time (user+nice+system+irq+softirq) of `/proc/stat`'s `cpu` line across
/// the timed part, in seconds (`sysconf(_SC_CLK_TCK)` ticks): in a Xen PV dom0, dom0's vCPUs only.
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
/* Busy ticks of all CPUs: user nice system (idle iowait) irq softirq. */
static unsigned long long busy(void) {
  unsigned long long v[7] = {0};
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return 0;
  if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]) != 7) v[0] = v[1] = v[2] = v[5] = v[6] = 0;
  fclose(f);
  return v[0] + v[1] + v[2] + v[5] + v[6];
}
static void report(unsigned long long total, double us, unsigned long long ticks) {
  printf("bytes=%llu secs=%.4f mib_s=%.3f cpu_s=%.3f", total, us / 1e6, total / 1048576.0 / (us / 1e6), (double)ticks / (double)sysconf(_SC_CLK_TCK));
}
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: qd1 DEV N [SEED] | qd1 DEV seq PASSES | qd1 DEV seqw PASSES MIB\n"); return 2; }
  int seqw = !strcmp(argv[2], "seqw");
  int seq = seqw || !strcmp(argv[2], "seq");
  if (seq && argc < 4 + seqw) { fprintf(stderr, "missing arguments\n"); return 2; }
  int n = atoi(argv[seq ? 3 : 2]); unsigned seed = !seq && argc > 3 ? (unsigned)atoi(argv[3]) : 1;
  int fd = open(argv[1], (seqw ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) { perror("open"); return 1; }
  unsigned long long size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) size = (unsigned long long)lseek(fd, 0, SEEK_END);
  if (size < 4096) { fprintf(stderr, "size %llu\n", size); return 1; }
  if (seqw) {
    unsigned long long region = (unsigned long long)atoi(argv[4]) << 20, total = 0;
    if (region == 0 || region > size || n < 1) { fprintf(stderr, "bad region %llu of %llu\n", region, size); return 2; }
    unsigned long long *pat, *back;
    if (posix_memalign((void **)&pat, 4096, region) || posix_memalign((void **)&back, 4096, 1 << 20)) return 1;
    for (unsigned long long i = 0; i < region / 8; i++) pat[i] = (i * 8) ^ 0x9e3779b97f4a7c15ull;
    unsigned long long c0 = busy(); double t0 = now();
    for (int p = 0; p < n; p++)
      for (unsigned long long off = 0; off < region; ) {
        ssize_t w = pwrite(fd, (char *)pat + off, region - off < (1 << 20) ? region - off : (1 << 20), (off_t)off);
        if (w <= 0) { perror("pwrite"); return 1; }
        off += (unsigned long long)w; total += (unsigned long long)w;
      }
    if (fdatasync(fd) != 0) { perror("fdatasync"); return 1; }
    double us = now() - t0; unsigned long long c1 = busy();
    int ok = 1;
    for (unsigned long long off = 0; off < region; off += 1 << 20) {
      size_t len = region - off < (1 << 20) ? region - off : (1 << 20);
      if (pread(fd, back, len, (off_t)off) != (ssize_t)len) { perror("pread back"); return 1; }
      if (memcmp(back, (char *)pat + off, len)) ok = 0;
    }
    report(total, us, c1 - c0);
    printf(" verify=%s\n", ok ? "ok" : "bad");
    return ok ? 0 : 3;
  }
  if (seq) {
    void *big; if (n < 1 || posix_memalign(&big, 4096, 1 << 20)) return 1;
    unsigned long long c0 = busy(); double t0 = now(); unsigned long long total = 0;
    for (int p = 0; p < n; p++)
      for (unsigned long long off = 0; off < size; ) {
        ssize_t r = pread(fd, big, size - off < (1 << 20) ? size - off : (1 << 20), (off_t)off);
        if (r <= 0) { perror("pread"); return 1; }
        off += (unsigned long long)r; total += (unsigned long long)r;
      }
    double us = now() - t0;
    report(total, us, busy() - c0);
    printf("\n");
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

/// One way of reaching the stick, measured by `tests/xen/bench.sh` (one shell function call
/// there): `tag` prefixes its `BENCH-MEASURE` names, `key` names it in `xen.json`, `column` heads
/// its table column. The first mode is the baseline the ratios are taken against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    pub tag: &'static str,
    pub key: &'static str,
    pub column: &'static str,
    pub what: &'static str,
}

pub const MODES: &[Mode] = &[
    Mode {
        tag: "direct",
        key: "direct",
        column: "direct",
        what: "dom0 owns the xHCI (xhci-pci)",
    },
    Mode {
        tag: "usbdom",
        key: "usbdom-dom0",
        column: "copy",
        what: "usbdom, grant copy (usbdom.zero_copy=0), dom0 is the xen-hcd frontend",
    },
    Mode {
        tag: "usbmap",
        key: "usbdom-dom0-map",
        column: "map",
        what: "usbdom, grant map (usbdom.zero_copy=1), a fresh usbdom",
    },
    Mode {
        tag: "usbdom-sg",
        key: "usbdom-dom0-sg",
        column: "sg",
        what: "usbdom, grant copy, dom0's frontend the scatter-gather xen-hcd-sg.ko (tests/xen-hcd/; 1 MiB commands: max_sectors 2048)",
    },
    Mode {
        tag: "usbdom-domu",
        key: "usbdom-domu",
        column: "domU",
        what: "usbdom, grant copy, a Linux PV domU is the (stock) xen-hcd frontend and measures; CPU: dom0's (relaying consoles) and usbdom's",
    },
    Mode {
        tag: "usbdom-domu-sg",
        key: "usbdom-domu-sg",
        column: "domU-sg",
        what: "as usbdom-domu, the domU's frontend the scatter-gather xen-hcd-sg.ko",
    },
    Mode {
        tag: "usbip",
        key: "usbip",
        column: "usbip",
        what: "dom0 owns the xHCI, exports the stick with usbip-host/usbipd, imports it over 127.0.0.1 (vhci-hcd)",
    },
    Mode {
        tag: "qusb",
        key: "qusb",
        column: "qusb",
        what: "Xen's qusb backend (QEMU in dom0, usb-host) serving a Linux PV domU frontend (xen-hcd) that measures; CPU: dom0's",
    },
];

/// What the dom0 script reported: `BENCH-MEASURE <name> <value>`, `BENCH-FAIL <step>: <why>` and
/// `BENCH-SKIP <mode>: <why>` (a mode this run could not measure, with the evidence).
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub measures: Vec<(String, f64)>,
    pub fails: Vec<String>,
    pub skips: Vec<(String, String)>,
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

    /// A row's value for one mode: a measure `<tag>-<measure>`, or one derived from measures.
    pub fn value(&self, tag: &str, m: Measure) -> Option<f64> {
        match m {
            Measure::Key(k) => self.get(&format!("{tag}-{k}")),
            // CPU seconds across the timed sequential read, per GiB read.
            Measure::CpuPerGib(k) => {
                let cpu = self.get(&format!("{tag}-{k}"))?;
                let bytes = self.get(&format!("{tag}-seq-bytes"))?;
                (bytes > 0.0).then(|| cpu / (bytes / f64::from(1u32 << 30)))
            }
        }
    }

    pub fn skipped(&self, tag: &str) -> Option<&str> {
        self.skips
            .iter()
            .find(|(m, _)| m == tag)
            .map(|(_, w)| w.as_str())
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
        } else if let Some(i) = t.find("BENCH-SKIP ") {
            if let Some((m, why)) = t[i + "BENCH-SKIP ".len()..].split_once(':') {
                o.skips.push((m.trim().to_string(), why.trim().to_string()));
            }
        } else if let Some(i) = t.find(&format!("XT: xl create {} start (memory=", xen::DOMAIN)) {
            let rest = &t[i..];
            let v = rest.split("memory=").nth(1).unwrap_or("");
            o.memory = v.trim_end_matches(')').trim().parse().ok().or(o.memory);
        }
    }
    o
}

/// Where a row's value comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// `BENCH-MEASURE <tag>-<key>`.
    Key(&'static str),
    /// `<tag>-<key>` (CPU seconds) per GiB of `<tag>-seq-bytes`.
    CpuPerGib(&'static str),
}

/// The usbdom domain's CPU time across the sequential read (`xl list`, 0.1 s resolution): only
/// the modes through usbdom have it.
pub const BACKEND_CPU: Measure = Measure::CpuPerGib("backend-seq-cpu-s");

/// The table's rows: label, source, and the `xen.json` key (rows without one are table only).
pub const ROWS: &[(&str, Measure, Option<&str>)] = &[
    (
        "sequential read MiB/s",
        Measure::Key("seq-mib-s"),
        Some("seq_read_mib_s"),
    ),
    ("  cross-check: dd MiB/s", Measure::Key("dd-mib-s"), None),
    (
        "sequential write MiB/s",
        Measure::Key("seqw-mib-s"),
        Some("seq_write_mib_s"),
    ),
    ("QD1 4 KiB mean us", Measure::Key("lat-mean-us"), None),
    (
        "QD1 4 KiB median us",
        Measure::Key("lat-median-us"),
        Some("qd1_4k_median_us"),
    ),
    (
        "QD1 4 KiB p90 us",
        Measure::Key("lat-p90-us"),
        Some("qd1_4k_p90_us"),
    ),
    (
        "dom0 CPU s per GiB read",
        Measure::CpuPerGib("seq-cpu-s"),
        Some("dom0_cpu_s_per_gib"),
    ),
    (
        "usbdom CPU s per GiB read",
        BACKEND_CPU,
        Some("usbdom_cpu_s_per_gib"),
    ),
];

/// One row of the side-by-side table: label, then one value per mode of [`MODES`], in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    pub values: Vec<Option<f64>>,
    /// Every mode (not skipped) must have a value.
    pub every_mode: bool,
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
    ROWS.iter()
        .map(|(label, m, _)| Row {
            label: label.to_string(),
            values: MODES.iter().map(|md| o.value(md.tag, *m)).collect(),
            every_mode: *m != BACKEND_CPU,
        })
        .collect()
}

/// The facts of the run that `xen.json` carries beside the measures.
pub struct Meta {
    pub image_bytes: u64,
    pub memory_mib: Option<u32>,
    pub date: String,
    pub machine: String,
    /// Modes or peers not measured, with why.
    pub skipped: Vec<(String, String)>,
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number, or `null` for a missing or non-finite value.
fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{}", (v * 1000.0).round() / 1000.0),
        _ => "null".into(),
    }
}

/// `target/bench/xen.json`: per JSON row key, an object of mode key → value (`null` when not
/// measured), then the run's facts.
/// The README's table of a run, from the same values as [`json`]: one column per mode (its JSON
/// key), one row per [`ROWS`] entry with a JSON key, each value with its ratio to `direct`
/// where that means something (throughput: mode/direct; latency and CPU: mode/direct as "×").
pub fn markdown(o: &Outcome, meta: &Meta) -> String {
    let mut t = format!(
        "Run of {} on {}; stripped image {} bytes, `memory={}`.\n\n| |",
        meta.date,
        meta.machine,
        meta.image_bytes,
        meta.memory_mib
            .map(|m| m.to_string())
            .unwrap_or_else(|| "?".into())
    );
    for md in MODES {
        t.push_str(&format!(" {} |", md.key));
    }
    t.push_str("\n|---|");
    for _ in MODES {
        t.push_str("---|");
    }
    t.push('\n');
    for (label, m, key) in ROWS {
        if key.is_none() {
            continue;
        }
        t.push_str(&format!("| {} |", label.trim()));
        let direct = o.value("direct", *m);
        for md in MODES {
            let v = o.value(md.tag, *m);
            let cell = match (v, md.tag) {
                (None, _) => "–".to_string(),
                (Some(v), "direct") => format!("{v:.1}"),
                (Some(v), _) => match ratio(Some(v), direct) {
                    Some(r) => format!("{v:.1} ({r:.2})"),
                    None => format!("{v:.1}"),
                },
            };
            t.push_str(&format!(" {cell} |"));
        }
        t.push('\n');
    }
    for (k, w) in &meta.skipped {
        t.push_str(&format!("\n{k}: not measured: {w}\n"));
    }
    t
}

pub fn json(o: &Outcome, meta: &Meta) -> String {
    let mut parts = Vec::new();
    for (_, m, key) in ROWS {
        let Some(key) = key else { continue };
        let vals: Vec<String> = MODES
            .iter()
            .map(|md| format!("{}: {}", json_str(md.key), json_num(o.value(md.tag, *m))))
            .collect();
        parts.push(format!("  {}: {{{}}}", json_str(key), vals.join(", ")));
    }
    parts.push(format!("  \"image_bytes\": {}", meta.image_bytes));
    parts.push(format!(
        "  \"memory_mib\": {}",
        meta.memory_mib
            .map(|m| m.to_string())
            .unwrap_or_else(|| "null".into())
    ));
    parts.push(format!("  \"date\": {}", json_str(&meta.date)));
    parts.push(format!("  \"machine\": {}", json_str(&meta.machine)));
    let sk: Vec<String> = meta
        .skipped
        .iter()
        .map(|(k, w)| format!("{}: {}", json_str(k), json_str(w)))
        .collect();
    parts.push(format!("  \"skipped\": {{{}}}", sk.join(", ")));
    format!("{{\n{}\n}}\n", parts.join(",\n"))
}

/// The host: name, kernel, CPU model and count, load.
fn machine() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let n = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} (Linux {}, {n} x {model}, load {})",
        host.trim(),
        kernel.trim(),
        crate::bench::bench_qemu::load()
    )
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

/// The dom0 kernel's release, from `xen-hcd.ko`'s vermagic.
fn dom0_kver(art: &xen::Artifacts) -> Result<String, String> {
    let vermagic = util::output(
        Command::new("modinfo")
            .args(["-F", "vermagic"])
            .arg(&art.xen_hcd),
    )?;
    vermagic
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "xen-hcd.ko has no vermagic".into())
}

/// The breakdown of each mode's last QD1 4 KiB read ([`crate::breakdown`]): the frontend's usbmon
/// lines of its traced QD1 reads (`XT: usbmon: `, recorded apart from the QD1 row, which usbmon
/// would slow down) and, through usbdom, usbdom's trace lines printed at the next statistics
/// line. Per mode, the lines between its `XT: phase <mode>: qd1 4k traced` marker and its
/// `done` marker.
pub fn breakdowns(lines: &[Line]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(mode) = lines[i]
            .text
            .split("XT: phase ")
            .nth(1)
            .and_then(|t| t.strip_suffix(": qd1 4k traced"))
        else {
            i += 1;
            continue;
        };
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.text.contains("XT: phase ") && l.text.contains(": done"))
            .map_or(lines.len(), |p| i + 1 + p);
        let part = &lines[i..end];
        let mon: Vec<&str> = part
            .iter()
            .filter_map(|l| l.text.split("XT: usbmon: ").nth(1))
            .collect();
        let traced: Vec<crate::breakdown::Traced> = part
            .iter()
            .filter(|l| l.text.starts_with("U| "))
            .filter_map(|l| crate::breakdown::parse_trace(&l.text))
            .collect();
        // One table per bus (usbip has two: vhci, the frontend, and the xHCI under usbip-host).
        let urbs = crate::breakdown::parse_usbmon(mon);
        let mut buses: Vec<u32> = urbs.iter().map(|u| u.bus).collect();
        buses.sort();
        buses.dedup();
        for bus in buses {
            let on_bus: Vec<_> = urbs.iter().filter(|u| u.bus == bus).cloned().collect();
            if let Some(t) = crate::breakdown::render(&on_bus, &traced) {
                let name = if bus_count(&urbs) > 1 {
                    format!("{mode} (bus {bus})")
                } else {
                    mode.to_string()
                };
                out.push((name, t));
            }
        }
        i = end;
    }
    out
}

fn bus_count(urbs: &[crate::breakdown::MonUrb]) -> usize {
    let mut b: Vec<u32> = urbs.iter().map(|u| u.bus).collect();
    b.sort();
    b.dedup();
    b.len()
}

fn print_breakdowns(lines: &[Line]) {
    let b = breakdowns(lines);
    if b.is_empty() {
        println!("  (no breakdown of a read: no usbmon lines)");
        return;
    }
    println!("  the last QD1 4 KiB read, per URB (us; frontend = usbmon submit->complete in dom0; usbdom = taken off the ring -> response published; outside = the rest: frontend paths, notifications, domain switches; (gap) = dom0 between two URBs):");
    for (mode, t) in b {
        println!("    {mode}:");
        for l in t {
            println!("      {l}");
        }
    }
}

/// The `.ko` files named `want` among `modprobe --show-depends` of `modules` (the dom0 kernel's),
/// as `guest/<file>` → host path, in load order (the base initramfs has the others, e.g. usbcore).
fn dom0_modules(
    kver: &str,
    modules: &[&str],
    want: &[&str],
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for m in modules {
        let deps = util::output(Command::new("modprobe").args(["--show-depends", "-S", kver, m]))?;
        out.extend(
            module_files(&deps, want)
                .into_iter()
                .filter(|(n, _)| !out.iter().any(|(o, _)| o == n))
                .collect::<Vec<_>>(),
        );
    }
    if out.len() != want.len() {
        return Err(format!(
            "{} not all found for {kver} (built in, or compressed modules?): {}",
            want.join("/"),
            out.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(out)
}

/// The `insmod` lines of `modprobe --show-depends` output whose file is one of `want`.
fn module_files(deps: &str, want: &[&str]) -> Vec<(String, PathBuf)> {
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
            if want.contains(&name.as_str()) {
                out.push((format!("guest/{name}"), p));
            }
        }
    }
    out
}

/// The usbip peer for dom0: `usbip`/`usbipd` from Debian's `usbip` package at their paths, the
/// shared libraries they need that the base initramfs lacks (it has `xl`'s), `usb.ids`, and the
/// modules usbip-core, usbip-host and vhci-hcd. `Err(why)` when this host cannot provide them.
fn usbip_files(kver: &str) -> Result<Vec<(String, PathBuf)>, String> {
    match util::ensure_packages(&["usbip"])? {
        util::Prereq::Ready => {}
        util::Prereq::Unavailable(why) => return Err(why),
    }
    let mut out = dom0_modules(
        kver,
        &["usbip-host", "vhci-hcd"],
        &["usbip-core.ko", "usbip-host.ko", "vhci-hcd.ko"],
    )?;
    dom0_binaries(&["/usr/sbin/usbip", "/usr/sbin/usbipd"], &mut out)?;
    for ids in ["/usr/share/hwdata/usb.ids", "/usr/share/misc/usb.ids"] {
        let p = PathBuf::from(ids);
        if let Ok(real) = fs::canonicalize(&p) {
            out.push(("usr/share/hwdata/usb.ids".into(), real));
            break;
        }
    }
    Ok(out)
}

/// `bins` (host paths, shipped at the same paths) and the shared libraries they need that the base
/// initramfs lacks (it has `xl`'s), appended to `out`.
fn dom0_binaries(bins: &[&str], out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let have: Vec<PathBuf> = xen::ldd(&PathBuf::from(xen::XEN_BIN).join("xl"));
    for b in bins {
        let b = PathBuf::from(b);
        if !b.exists() {
            return Err(format!("{} is missing", b.display()));
        }
        for l in xen::ldd(&b) {
            let name = l
                .strip_prefix("/")
                .unwrap_or(&l)
                .to_string_lossy()
                .into_owned();
            if !have.contains(&l) && !out.iter().any(|(n, _)| *n == name) {
                // The archive path is ldd's; the file may be a symlink: ship its target's bytes.
                out.push((name, fs::canonicalize(&l).unwrap_or(l)));
            }
        }
        out.push((
            b.strip_prefix("/").unwrap().to_string_lossy().into_owned(),
            b,
        ));
    }
    Ok(())
}

/// The qusb peer for dom0: Debian's `qemu-system-xen` (`/usr/libexec/xen-qemu-system-i386`, the
/// device model libxl starts for `usbctrl=["type=qusb"]`) with its libraries, and the dom0 kernel as
/// the frontend domU's kernel. `Err(why)` when this host cannot provide them.
fn qusb_files(art: &xen::Artifacts) -> Result<Vec<(String, PathBuf)>, String> {
    match util::ensure_packages(&["qemu-system-xen"])? {
        util::Prereq::Ready => {}
        util::Prereq::Unavailable(why) => return Err(why),
    }
    let mut out = vec![("guest/vmlinuz".to_string(), art.vmlinuz.clone())];
    dom0_binaries(&["/usr/libexec/xen-qemu-system-i386"], &mut out)?;
    // libxl starts it with `-vnc none`, which still loads the keymap.
    let keymap = PathBuf::from("/usr/share/qemu/keymaps/en-us");
    if !keymap.exists() {
        return Err(format!("{} is missing", keymap.display()));
    }
    out.push(("usr/share/qemu/keymaps/en-us".into(), keymap));
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
    println!("==== bench: Xen tier PVUSB (usbdom vs dom0 owning the xHCI directly, usbip and qusb; TCG -smp 1, one boot) ====");
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
    let kver = match dom0_kver(&art) {
        Ok(k) => k,
        Err(e) => return r.fail(name, e),
    };
    let mut extra = match dom0_modules(&kver, &["xhci-pci"], &["xhci-hcd.ko", "xhci-pci.ko"]) {
        Ok(m) => m,
        Err(e) => return r.fail(name, e),
    };
    // usbmon, for the breakdown of a 4 KiB read (tests/xen/usbmon.sh): without it, no breakdown.
    match dom0_modules(&kver, &["usbmon"], &["usbmon.ko"]) {
        Ok(m) => extra.extend(m),
        Err(e) => println!("bench xen: no usbmon for dom0 ({e}): no breakdown of a read"),
    }
    // Peers this harness cannot run, with the evidence.
    let mut host_skips: Vec<(String, String)> = Vec::new();
    match usbip_files(&kver) {
        Ok(f) => extra.extend(f),
        Err(why) => host_skips.push(("usbip".into(), format!("not shipped to dom0: {why}"))),
    }
    match qusb_files(&art) {
        Ok(f) => {
            let bytes: u64 = f
                .iter()
                .filter_map(|(_, p)| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            println!(
                "bench xen: qusb peer ships {} files, {:.1} MiB (QEMU for Xen, its libraries, the domU kernel)",
                f.len(),
                bytes as f64 / 1048576.0
            );
            extra.extend(f);
        }
        Err(why) => host_skips.push(("qusb".into(), format!("not shipped to dom0: {why}"))),
    }
    // The kernel of the frontend domUs (qusb's, usbdom-domu's).
    if !extra.iter().any(|(d, _)| d == "guest/vmlinuz") {
        extra.push(("guest/vmlinuz".to_string(), art.vmlinuz.clone()));
    }
    match build_qd1(&dir) {
        Ok(b) => extra.push(("guest/qd1".to_string(), b)),
        Err(e) => return r.fail(name, format!("qd1: {e}")),
    }
    let b = Boot {
        art: &art,
        guest: &k.stripped,
        test: "bench",
        // The dom0 script's own bound (tests/xen/init), inside the QEMU timeout below.
        dom0_vars: vec![("timeout".into(), "1500".into())],
        controller: "qemu-xhci",
        devices: vec![],
        extra_files: extra,
        dir,
        name: "bench",
        monitor: None,
        actions: vec![],
        // Six modes of about 1-3 min each under TCG, plus the boot.
        timeout: Duration::from_secs(1600),
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
    let mut head = format!("  {:26}", "");
    for m in MODES {
        head.push_str(&format!(" {:>9}", m.column));
    }
    for m in &MODES[1..] {
        head.push_str(&format!(
            " {:>10}",
            format!("{}/{}", m.column, &MODES[0].column[..3])
        ));
    }
    println!("{head}");
    let rows = table(&o);
    for r in &rows {
        let mut line = format!("  {:26}", r.label);
        for v in &r.values {
            line.push_str(&format!(" {:>9}", fmt(*v)));
        }
        for v in &r.values[1..] {
            line.push_str(&format!(" {:>10}", fmt(ratio(*v, r.values[0]))));
        }
        println!("{line}");
    }
    for m in MODES {
        println!("  {}: {}", m.column, m.what);
    }
    print_breakdowns(&res.out.lines);
    println!("  block queue limits each frontend gave usb-storage:");
    for l in sg_queue_lines(&res.out.lines) {
        println!("    {l}");
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
    // Modes the script skipped (with its evidence) and peers this harness cannot run.
    let mut skipped: Vec<(String, String)> = o
        .skips
        .iter()
        .map(|(m, w)| {
            let key = MODES
                .iter()
                .find(|x| x.tag == m)
                .map_or(m.as_str(), |x| x.key);
            (key.to_string(), w.clone())
        })
        .collect();
    for (k, w) in host_skips {
        // The host's reason is the cause; the script's ("no usbipd in dom0") only its effect.
        skipped.retain(|(x, _)| *x != k);
        skipped.push((k, w));
    }
    for (k, w) in &skipped {
        println!("  skipped: {k}: {w}");
    }
    let meta = Meta {
        image_bytes: k.stripped_size,
        memory_mib: o.memory,
        date: util::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
            .map(|d| d.trim().to_string())
            .unwrap_or_default(),
        machine: machine(),
        skipped,
    };
    let jpath = util::target().join("bench/xen.json");
    match fs::create_dir_all(jpath.parent().unwrap())
        .and_then(|_| fs::write(&jpath, json(&o, &meta)))
    {
        Ok(()) => println!("  results: {}", jpath.display()),
        Err(e) => println!("  could not write {}: {e}", jpath.display()),
    }
    let mpath = util::target().join("bench/xen.md");
    match fs::write(&mpath, markdown(&o, &meta)) {
        Ok(()) => println!("  README table: {}", mpath.display()),
        Err(e) => println!("  could not write {}: {e}", mpath.display()),
    }
    let complete = rows.iter().filter(|r| r.every_mode).all(|r| {
        MODES
            .iter()
            .zip(&r.values)
            .all(|(m, v)| v.is_some() || o.skipped(m.tag).is_some())
    });
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
    fn table_has_every_mode_and_their_ratios() {
        let o = parse(&l(&[
            "BENCH-MEASURE direct-seq-mib-s 8",
            "BENCH-MEASURE usbdom-seq-mib-s 6",
            "BENCH-MEASURE usbmap-seq-mib-s 3",
            "BENCH-MEASURE usbdom-sg-seq-mib-s 12",
            "BENCH-MEASURE direct-lat-mean-us 1000",
            "BENCH-MEASURE usbdom-lat-mean-us 2500",
        ]));
        let t = table(&o);
        assert_eq!(t[0].values[..3], [Some(8.0), Some(6.0), Some(3.0)]);
        assert_eq!(ratio(t[0].values[1], t[0].values[0]), Some(0.75));
        assert_eq!(ratio(t[0].values[2], t[0].values[1]), Some(0.5));
        let mean = t.iter().find(|r| r.label == "QD1 4 KiB mean us").unwrap();
        assert_eq!(ratio(mean.values[1], mean.values[0]), Some(2.5));
        // A mode that produced nothing gives no ratio.
        assert_eq!(ratio(mean.values[2], mean.values[0]), None);
        let median = t.iter().find(|r| r.label == "QD1 4 KiB median us").unwrap();
        assert!(median.values.iter().all(Option::is_none));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert!(t.iter().all(|r| r.values.len() == MODES.len()));
    }

    #[test]
    fn cpu_per_gib_is_derived_from_the_sequential_read() {
        let o = parse(&l(&[
            "BENCH-MEASURE direct-seq-bytes 50331648",
            "BENCH-MEASURE direct-seq-cpu-s 0.12",
            "BENCH-MEASURE usbdom-seq-cpu-s 0.5",
            "BENCH-MEASURE usbmap-seq-bytes 0",
            "BENCH-MEASURE usbmap-seq-cpu-s 0.5",
        ]));
        // 48 MiB read with 0.12 s busy: 2.56 s per GiB.
        let v = o.value("direct", Measure::CpuPerGib("seq-cpu-s")).unwrap();
        assert!((v - 2.56).abs() < 1e-9, "{v}");
        // No byte count, or zero bytes: no value.
        assert_eq!(o.value("usbdom", Measure::CpuPerGib("seq-cpu-s")), None);
        assert_eq!(o.value("usbmap", Measure::CpuPerGib("seq-cpu-s")), None);
        // usbdom's own CPU time: its own measure.
        let o = parse(&l(&[
            "BENCH-MEASURE usbdom-seq-bytes 1073741824",
            "BENCH-MEASURE usbdom-seq-cpu-s 3",
            "BENCH-MEASURE usbdom-backend-seq-cpu-s 1.5",
        ]));
        assert_eq!(o.value("usbdom", BACKEND_CPU), Some(1.5));
        assert_eq!(o.value("direct", BACKEND_CPU), None);
        let t = table(&o);
        let backend = t
            .iter()
            .find(|r| r.label.starts_with("usbdom CPU"))
            .unwrap();
        assert!(!backend.every_mode);
        assert!(t.iter().filter(|r| r.every_mode).count() == ROWS.len() - 1);
    }

    #[test]
    fn skips_are_parsed_per_mode() {
        let o = parse(&l(&[
            "[ 3.0] BENCH-SKIP usbip: no /guest/usbipd: the host could not ship it",
            "BENCH-SKIP malformed",
        ]));
        assert_eq!(
            o.skipped("usbip"),
            Some("no /guest/usbipd: the host could not ship it")
        );
        assert_eq!(o.skips.len(), 1);
        assert_eq!(o.skipped("direct"), None);
    }

    /// A small JSON reader, enough to check that `json` writes valid JSON: returns the value's
    /// top-level object keys (in order) and the rest of the input.
    fn json_value(s: &str) -> Result<(Vec<String>, &str), String> {
        let s = s.trim_start();
        let (c, rest) = (s.chars().next().ok_or("eof")?, &s[1..]);
        match c {
            '{' => {
                let mut keys = Vec::new();
                let mut r = rest.trim_start();
                if let Some(x) = r.strip_prefix('}') {
                    return Ok((keys, x));
                }
                loop {
                    let (k, x) = json_string(r.trim_start())?;
                    keys.push(k);
                    let x = x.trim_start().strip_prefix(':').ok_or("no ':'")?;
                    let (_, x) = json_value(x)?;
                    let x = x.trim_start();
                    if let Some(x) = x.strip_prefix(',') {
                        r = x;
                    } else if let Some(x) = x.strip_prefix('}') {
                        return Ok((keys, x));
                    } else {
                        return Err(format!("expected , or }} at {x:.20}"));
                    }
                }
            }
            '"' => json_string(s).map(|(_, r)| (vec![], r)),
            'n' => s
                .strip_prefix("null")
                .map(|r| (vec![], r))
                .ok_or_else(|| "bad literal".into()),
            '-' | '0'..='9' => {
                let end = s
                    .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .unwrap_or(s.len());
                s[..end].parse::<f64>().map_err(|e| e.to_string())?;
                Ok((vec![], &s[end..]))
            }
            _ => Err(format!("unexpected {c}")),
        }
    }

    fn json_string(s: &str) -> Result<(String, &str), String> {
        let mut out = String::new();
        let mut it = s.strip_prefix('"').ok_or("no string")?.char_indices();
        while let Some((i, c)) = it.next() {
            match c {
                '"' => return Ok((out, &s[i + 2..])),
                '\\' => match it.next().ok_or("eof")?.1 {
                    'u' => {
                        let h: String = (0..4).filter_map(|_| it.next().map(|x| x.1)).collect();
                        out.push(
                            char::from_u32(u32::from_str_radix(&h, 16).map_err(|e| e.to_string())?)
                                .ok_or("bad \\u")?,
                        );
                    }
                    'n' => out.push('\n'),
                    e @ ('"' | '\\' | '/') => out.push(e),
                    e => return Err(format!("bad escape {e}")),
                },
                c if (c as u32) < 0x20 => return Err("control character in string".into()),
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }

    #[test]
    fn the_readme_table_has_every_mode_and_ratios_to_direct() {
        let o = parse(&l(&[
            "BENCH-MEASURE direct-seq-mib-s 200",
            "BENCH-MEASURE usbdom-sg-seq-mib-s 100",
            "BENCH-MEASURE usbdom-lat-median-us 2000",
            "BENCH-MEASURE direct-lat-median-us 500",
        ]));
        let meta = Meta {
            image_bytes: 519552,
            memory_mib: Some(8),
            date: "2026-12-04T17:00:00Z".into(),
            machine: "vm".into(),
            skipped: vec![("qusb".into(), "no qemu".into())],
        };
        let t = markdown(&o, &meta);
        let header = t.lines().find(|l| l.starts_with("| |")).unwrap();
        for md in MODES {
            assert!(header.contains(md.key), "{header}");
        }
        let seq = t
            .lines()
            .find(|l| l.starts_with("| sequential read"))
            .unwrap();
        assert!(
            seq.contains("| 200.0 |") && seq.contains("100.0 (0.50)"),
            "{seq}"
        );
        let lat = t
            .lines()
            .find(|l| l.starts_with("| QD1 4 KiB median"))
            .unwrap();
        assert!(lat.contains("2000.0 (4.00)"), "{lat}");
        assert!(t.contains("qusb: not measured: no qemu"), "{t}");
        assert!(t.starts_with("Run of 2026-12-04T17:00:00Z on vm; stripped image 519552"));
    }

    #[test]
    fn json_is_valid_and_has_every_key() {
        let o = parse(&l(&[
            "BENCH-MEASURE direct-seq-mib-s 224.5",
            "BENCH-MEASURE usbdom-seq-mib-s 10.25",
            "BENCH-MEASURE usbdom-lat-p90-us 2500",
        ]));
        let meta = Meta {
            image_bytes: 817152,
            memory_mib: Some(8),
            date: "2026-12-04T15:00:00Z".into(),
            machine: "box \"2 cores\"\n\\".into(),
            skipped: vec![("qusb".into(), "no qemu-system-xen\tin dom0".into())],
        };
        let j = json(&o, &meta);
        let (keys, rest) = json_value(&j).unwrap_or_else(|e| panic!("{e}\n{j}"));
        assert_eq!(rest.trim(), "", "{j}");
        assert_eq!(
            keys,
            [
                "seq_read_mib_s",
                "seq_write_mib_s",
                "qd1_4k_median_us",
                "qd1_4k_p90_us",
                "dom0_cpu_s_per_gib",
                "usbdom_cpu_s_per_gib",
                "image_bytes",
                "memory_mib",
                "date",
                "machine",
                "skipped"
            ]
        );
        // Each row object has every mode's key, the renamed ones included.
        let row = j
            .lines()
            .find(|l| l.contains("\"seq_read_mib_s\""))
            .unwrap();
        let (mkeys, _) = json_value(row.split_once(':').unwrap().1).unwrap();
        assert_eq!(mkeys, MODES.iter().map(|m| m.key).collect::<Vec<_>>());
        assert!(mkeys.contains(&"usbdom-dom0".to_string()));
        assert!(mkeys.contains(&"usbdom-dom0-map".to_string()));
        assert!(row.contains("\"direct\": 224.5"), "{row}");
        assert!(row.contains("\"usbdom-dom0\": 10.25"), "{row}");
        assert!(row.contains("\"usbdom-dom0-map\": null"), "{row}");
        assert!(j.contains("\"skipped\": {\"qusb\": \"no qemu-system-xen\\u0009in dom0\"}"));
        // Nothing measured and no memory: still valid.
        let empty = json(
            &Outcome::default(),
            &Meta {
                memory_mib: None,
                skipped: vec![],
                ..meta
            },
        );
        let (_, rest) = json_value(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
        assert_eq!(rest.trim(), "");
        assert!(empty.contains("\"memory_mib\": null"));
        assert_eq!(json_num(Some(f64::NAN)), "null");
    }

    #[test]
    fn module_files_are_the_wanted_insmod_lines_in_order() {
        let deps = "insmod /lib/modules/6.1.0-57-amd64/kernel/drivers/usb/core/usbcore.ko \n\
                    builtin usb_common\n\
                    insmod /lib/modules/6.1.0-57-amd64/kernel/drivers/usb/usbip/usbip-core.ko \n\
                    insmod /lib/modules/6.1.0-57-amd64/kernel/drivers/usb/usbip/vhci-hcd.ko \n";
        let f = module_files(deps, &["vhci-hcd.ko", "usbip-core.ko"]);
        assert_eq!(
            f.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["guest/usbip-core.ko", "guest/vhci-hcd.ko"]
        );
        assert_eq!(
            f[1].1,
            PathBuf::from("/lib/modules/6.1.0-57-amd64/kernel/drivers/usb/usbip/vhci-hcd.ko")
        );
        assert!(module_files("modprobe: FATAL: Module x not found", &["x.ko"]).is_empty());
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
    fn a_breakdown_per_mode_from_its_qd1_phase() {
        let lines = l(&[
            "XT: phase direct: qd1 4k traced",
            "XT: usbmon: a1 100 S Bo:1:002:2 -115 31 = 55534243",
            "XT: usbmon: a1 150 C Bo:1:002:2 0 31 >",
            "XT: usbmon: a2 160 S Bi:1:002:1 -115 4096 <",
            "XT: usbmon: a2 300 C Bi:1:002:1 0 4096 =",
            "XT: usbmon: a3 310 S Bi:1:002:1 -115 13 <",
            "XT: usbmon: a3 350 C Bi:1:002:1 0 13 =",
            "XT: phase direct: sha256 after",
            "XT: phase direct: done",
            "XT: phase usbdom: qd1 4k traced",
            "XT: usbmon: b1 1000 S Bo:3:002:2 -115 31 = 55534243",
            "XT: usbmon: b1 1600 C Bo:3:002:2 0 31 >",
            "XT: usbmon: b2 1700 S Bi:3:002:1 -115 4096 <",
            "XT: usbmon: b2 2500 C Bi:3:002:1 0 4096 =",
            "XT: usbmon: b3 2600 S Bi:3:002:1 -115 13 <",
            "XT: usbmon: b3 3200 C Bi:3:002:1 0 13 =",
            "U| [ 40.1] INFO  backend: urb trace: frontend 0 id 1 ep 0x02 len 31 actual 31 ring@5 us, ring->submit 100 us, submit->done 50 us, done->response 50 us",
            "U| [ 40.1] INFO  backend: urb trace: frontend 0 id 2 ep 0x81 len 4096 actual 4096 ring@6 us, ring->submit 100 us, submit->done 200 us, done->response 100 us",
            "U| [ 40.1] INFO  backend: urb trace: frontend 0 id 3 ep 0x81 len 13 actual 13 ring@7 us, ring->submit 100 us, submit->done 50 us, done->response 50 us",
            "XT: phase usbdom: done",
        ]);
        let b = breakdowns(&lines);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, "direct");
        assert!(b[0].1[1].trim_end().ends_with("50"), "{:?}", b[0].1);
        assert_eq!(b[1].0, "usbdom");
        // CBW: 600 us at the frontend, 200 in usbdom, 400 outside.
        assert!(b[1].1[1].ends_with("400"), "{:?}", b[1].1);
        assert!(b[1].1[6].ends_with("2200"), "{:?}", b[1].1);
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
