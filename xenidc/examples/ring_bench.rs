//! Ring micro-benchmark for `cargo xtask bench` (see `xenidc::bench`).
//!
//! Usage: `ring_bench [backend|roundtrip] [N]` (defaults: backend, 1000000). Prints one line:
//! `ring_bench <mode> requests=<N> total_ns=<T> ns_per_request=<T/N> checksum=<C>`.
//! For instruction counts run it under `valgrind --tool=callgrind` with a smaller N and divide
//! the total instructions (minus a run with N=0 for the fixed cost) by N.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "backend".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let f: fn(u64) -> xenidc::bench::BenchResult = match mode.as_str() {
        "backend" => xenidc::bench::ring_backend,
        "roundtrip" => xenidc::bench::ring_roundtrip,
        other => {
            eprintln!("unknown mode {other:?}: use backend or roundtrip");
            std::process::exit(2);
        }
    };
    let t = Instant::now();
    let r = std::hint::black_box(f(std::hint::black_box(n)));
    let ns = t.elapsed().as_nanos();
    let per = if n > 0 { ns as f64 / n as f64 } else { 0.0 };
    println!(
        "ring_bench {mode} requests={} total_ns={ns} ns_per_request={per:.1} checksum={}",
        r.requests, r.checksum
    );
}
