//! Micro-benchmark entry points for `cargo xtask bench`: the per-request cost of the backend's
//! ring work — consume (copy the request out once), validate, respond, publish — over a
//! [`HostMem`] page, with no hypervisor in the loop.
//!
//! Call [`ring_backend`] (backend side only: the "frontend" just advances `req_prod` over
//! pre-filled slots) or [`ring_roundtrip`] (a real front ring produces and consumes too), time it,
//! and divide by `n`. `examples/bench_ring.rs` wraps both for timing and for
//! `valgrind --tool=callgrind`.

use crate::abi::ring::{ENTRIES_OFFSET, REQ_PROD_OFFSET};
use crate::abi::usbif::{
    PipeType, RequestSegment, UrbRequest, UrbResponse, UsbifPipe, UsbifStatus, MAX_PORTNR,
};
use crate::abi::{DomId, GrantRef};
use crate::buffer::{Direction, RemoteBuffer};
use crate::ring::{BackRing, FrontRing};
use crate::shm::{HostMem, SharedMem};

/// What a benchmark run did (returned so the work cannot be optimised away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BenchResult {
    /// Requests consumed and answered.
    pub requests: u64,
    /// Requests that failed validation (answered with an error status).
    pub rejected: u64,
    /// Sum of the answered ids and lengths.
    pub checksum: u64,
}

fn sample_request(i: u16) -> UrbRequest {
    let mut r = UrbRequest {
        id: i % 16,
        nr_buffer_segs: 1,
        pipe: UsbifPipe::new(
            1 + (i as u32 % 8),
            2,
            1,
            PipeType::BULK,
            i.is_multiple_of(2),
        ),
        buffer_length: 512,
        ..Default::default()
    };
    r.seg[0] = RequestSegment {
        gref: GrantRef(100 + i as u32),
        offset: 0,
        length: 512,
    };
    r
}

/// Validate a request the way a backend does before acting on it; builds the response.
#[inline]
fn validate_and_answer(req: &UrbRequest, res: &mut BenchResult) -> UrbResponse {
    let mut rsp = UrbResponse {
        id: req.id,
        ..Default::default()
    };
    let nsegs = req.nr_buffer_segs as usize;
    let port = req.pipe.port();
    let valid_hdr = req.id < 16 && nsegs <= req.seg.len() && (1..=MAX_PORTNR).contains(&port);
    let dir = if req.pipe.is_in() {
        Direction::FromDevice
    } else {
        Direction::ToDevice
    };
    let rb = if valid_hdr {
        RemoteBuffer::new(DomId(1), dir, &req.seg[..nsegs], req.buffer_length as u32).ok()
    } else {
        None
    };
    match rb {
        Some(rb) => rsp.actual_length = rb.len() as i32,
        None => {
            rsp.status = UsbifStatus::INVAL;
            res.rejected += 1;
        }
    }
    res.checksum = res
        .checksum
        .wrapping_add(rsp.id as u64 + rsp.actual_length as u64);
    rsp
}

/// Backend only: `n` requests consumed, validated and answered in batches of 16, the frontend
/// reduced to restoring the 16 request slots from a template (one 2368-byte copy per batch, since
/// responses overwrite the slots) and advancing `req_prod`.
pub fn ring_backend(n: u64) -> BenchResult {
    let page = HostMem::page();
    let mut front = FrontRing::<HostMem, UrbRequest, UrbResponse>::init(page.clone())
        .expect("a page holds a usbif ring");
    for i in 0..16 {
        front
            .push_request(&sample_request(i))
            .expect("ring has 16 slots");
    }
    let mut back = BackRing::<HostMem, UrbRequest, UrbResponse>::attach(page.clone())
        .expect("a page holds a usbif ring");
    let mut template = [0u8; 16 * 148];
    let _ = page.read_bytes(ENTRIES_OFFSET, &mut template);
    let mut res = BenchResult::default();
    let mut prod = 0u32;
    while res.requests < n {
        let batch = core::cmp::min(16, n - res.requests) as u32;
        let _ = page.write_bytes(ENTRIES_OFFSET, &template);
        prod = prod.wrapping_add(batch);
        let _ = page.store_u32_release(REQ_PROD_OFFSET, prod);
        loop {
            match back.next_request() {
                Ok(Some(req)) => {
                    let rsp = validate_and_answer(&req, &mut res);
                    let _ = back.push_response(&rsp);
                    res.requests += 1;
                }
                Ok(None) => break,
                Err(_) => return res,
            }
        }
        let _ = back.publish_responses();
        let _ = back.final_check_for_requests();
    }
    res
}

/// Both ends: a front ring pushes `n` requests (16 at a time), the back end consumes, validates
/// and answers them, the front consumes the responses.
pub fn ring_roundtrip(n: u64) -> BenchResult {
    let page = HostMem::page();
    let mut front = FrontRing::<HostMem, UrbRequest, UrbResponse>::init(page.clone())
        .expect("a page holds a usbif ring");
    let mut back = BackRing::<HostMem, UrbRequest, UrbResponse>::attach(page)
        .expect("a page holds a usbif ring");
    let mut res = BenchResult::default();
    let mut sent = 0u64;
    let mut got = 0u64;
    while got < n {
        while sent < n && front.free_requests() > 0 {
            let _ = front.push_request(&sample_request(sent as u16));
            sent += 1;
        }
        let _ = front.publish_requests();
        while let Ok(Some(req)) = back.next_request() {
            let rsp = validate_and_answer(&req, &mut res);
            let _ = back.push_response(&rsp);
            res.requests += 1;
        }
        let _ = back.publish_responses();
        while let Ok(Some(_)) = front.next_response() {
            got += 1;
        }
        let _ = front.final_check_for_responses();
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_do_the_work_they_claim() {
        let a = ring_backend(1000);
        assert_eq!((a.requests, a.rejected), (1000, 0));
        // 1000 requests: ids cycle 0..16, every one 512 bytes.
        let ids: u64 = (0..1000u64).map(|i| i % 16).sum();
        assert_eq!(a.checksum, ids + 512 * 1000);
        let b = ring_roundtrip(1000);
        assert_eq!(b, a);
        assert_eq!(ring_backend(5).requests, 5);
    }
}
