//! Ring micro-benchmark (`xenidc::bench`), following the `cargo xtask bench` contract:
//!
//! - `bench_ring list` prints the variants, baseline first: `backend` (consume + validate +
//!   respond, the frontend reduced to refilling slots) and `roundtrip` (a real front ring too);
//! - `bench_ring <variant> <N>` runs N requests and prints
//!   `bench_ring <variant> requests=<N> total_ns=<T> ns_per_request=<T/N> checksum=<C>`.
//!
//! For instruction counts run it under `valgrind --tool=callgrind` at two N and divide the
//! difference by the difference in N (xtask does this).

use std::time::Instant;

const VARIANTS: [&str; 2] = ["backend", "roundtrip"];

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "backend".into());
    if mode == "list" {
        for v in VARIANTS {
            println!("{v}");
        }
        return;
    }
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let f: fn(u64) -> xenidc::bench::BenchResult = match mode.as_str() {
        "backend" => xenidc::bench::ring_backend,
        "roundtrip" => xenidc::bench::ring_roundtrip,
        other => {
            eprintln!("unknown variant {other:?}: use one of {VARIANTS:?} or list");
            std::process::exit(2);
        }
    };
    let t = Instant::now();
    let r = std::hint::black_box(f(std::hint::black_box(n)));
    let ns = t.elapsed().as_nanos();
    let per = if n > 0 { ns as f64 / n as f64 } else { 0.0 };
    println!(
        "bench_ring {mode} requests={} total_ns={ns} ns_per_request={per:.1} checksum={}",
        r.requests, r.checksum
    );
}
