//! Fuzz target: the backend ring consumer over hostile page contents and index sequences.
//!
//! A usbif urb ring page is filled with fuzzed bytes; then a fuzzed sequence of peer actions
//! (writing `req_prod`, `rsp_event`, raw slot bytes) is interleaved with backend actions
//! (consume, validate each request into a remote buffer, respond, publish, final check). The
//! backend must never panic, never have more requests in flight than the ring holds, and answer
//! exactly the requests it consumed. A reported protocol error ends the run, as it ends the
//! connection in a real backend.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xenidc::abi::ring::{ENTRIES_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET};
use xenidc::abi::usbif::{UrbRequest, UrbResponse, UsbifStatus};
use xenidc::abi::DomId;
use xenidc::buffer::{Direction, RemoteBuffer};
use xenidc::ring::BackRing;
use xenidc::shm::{HostMem, SharedMem};

#[derive(Arbitrary, Debug)]
enum Step {
    /// The peer writes an arbitrary `req_prod`.
    SetReqProd(u32),
    /// The peer advances `req_prod` by a small amount (the plausible case).
    BumpReqProd(u8),
    /// The peer writes `rsp_event`.
    SetRspEvent(u32),
    /// The peer scribbles into the entry area.
    Scribble {
        offset: u16,
        bytes: Vec<u8>,
    },
    /// The backend consumes up to n requests.
    Consume(u8),
    /// The backend answers up to n consumed requests.
    Respond(u8),
    Publish,
    FinalCheck,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rsp_prod_at_attach: u32,
    page: Vec<u8>,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let page = HostMem::page();
    let n = input.page.len().min(4096);
    page.write_bytes(0, &input.page[..n]).unwrap();
    page.write_u32(RSP_PROD_OFFSET, input.rsp_prod_at_attach)
        .unwrap();
    let mut back = BackRing::<HostMem, UrbRequest, UrbResponse>::attach(page.clone()).unwrap();
    let size = back.size();
    assert_eq!(size, 16);
    let mut unanswered: u32 = 0;
    for step in input.steps.into_iter().take(2000) {
        match step {
            Step::SetReqProd(v) => page.write_u32(REQ_PROD_OFFSET, v).unwrap(),
            Step::BumpReqProd(d) => {
                let v = page.read_u32(REQ_PROD_OFFSET).unwrap();
                page.write_u32(REQ_PROD_OFFSET, v.wrapping_add(d as u32 % 20))
                    .unwrap();
            }
            Step::SetRspEvent(v) => page.write_u32(RSP_EVENT_OFFSET, v).unwrap(),
            Step::Scribble { offset, bytes } => {
                let off = ENTRIES_OFFSET + offset as usize % (4096 - ENTRIES_OFFSET);
                let len = bytes.len().min(4096 - off);
                page.write_bytes(off, &bytes[..len]).unwrap();
            }
            Step::Consume(k) => {
                for _ in 0..k {
                    match back.next_request() {
                        Ok(Some(req)) => {
                            unanswered += 1;
                            // Validate as a backend would; any outcome is fine, no panic.
                            let nsegs = (req.nr_buffer_segs as usize).min(req.seg.len());
                            let dir = if req.pipe.is_in() {
                                Direction::FromDevice
                            } else {
                                Direction::ToDevice
                            };
                            let _ = RemoteBuffer::new(
                                DomId(1),
                                dir,
                                &req.seg[..nsegs],
                                req.buffer_length as u32,
                            );
                        }
                        Ok(None) => break,
                        Err(e) => {
                            assert!(e.is_peer_error(), "{e:?}");
                            return;
                        }
                    }
                }
            }
            Step::Respond(k) => {
                for _ in 0..k {
                    if unanswered == 0 {
                        assert!(back.push_response(&UrbResponse::default()).is_err());
                        break;
                    }
                    let rsp = UrbResponse {
                        status: UsbifStatus::OK,
                        ..Default::default()
                    };
                    back.push_response(&rsp).unwrap();
                    unanswered -= 1;
                }
            }
            Step::Publish => {
                let _ = back.publish_responses().unwrap();
            }
            Step::FinalCheck => {
                if let Err(e) = back.final_check_for_requests() {
                    assert!(e.is_peer_error());
                    return;
                }
            }
        }
        assert_eq!(back.in_flight(), unanswered);
        assert!(back.in_flight() <= size);
    }
});
