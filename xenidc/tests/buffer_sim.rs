//! Remote buffers and the mapper/copier against the simulated hypervisor.

use xenidc::abi::grant::GntStatus;
use xenidc::abi::usbif::RequestSegment;
use xenidc::abi::{DomId, GrantRef};
use xenidc::buffer::{BufferError, Direction, Mapper, RemoteBuffer};
use xenidc::hypervisor::{Hypervisor, LocalPage};
use xenidc::shm::{HostMem, SharedMem};
use xenidc::sim::{Sim, SimDomain};

const FE: DomId = DomId(2);
const BE: DomId = DomId(1);

fn seg(gref: GrantRef, offset: u16, length: u16) -> RequestSegment {
    RequestSegment {
        gref,
        offset,
        length,
    }
}

/// The frontend grants `n` pages, page i filled with byte (i + 1).
fn granted(fe: &mut SimDomain, n: usize, readonly: bool) -> Vec<(LocalPage<HostMem>, GrantRef)> {
    (0..n)
        .map(|i| {
            let p = fe.alloc_page().unwrap();
            p.mem.fill(0, 4096, i as u8 + 1).unwrap();
            let g = fe.grant_access(p.frame, BE, readonly).unwrap();
            (p, g)
        })
        .collect()
}

#[test]
fn validation_rules() {
    let g = GrantRef(10);
    assert!(RemoteBuffer::new(FE, Direction::ToDevice, &[seg(g, 4000, 96)], 96).is_ok());
    assert_eq!(
        RemoteBuffer::new(FE, Direction::ToDevice, &[seg(g, 4000, 97)], 97),
        Err(BufferError::SegmentCrossesPage {
            index: 0,
            offset: 4000,
            length: 97
        })
    );
    assert_eq!(
        RemoteBuffer::new(FE, Direction::ToDevice, &[seg(g, 0, 10), seg(g, 0, 10)], 21),
        Err(BufferError::LengthMismatch {
            declared: 21,
            sum: 20
        })
    );
    let many = vec![seg(g, 0, 1); 17];
    assert_eq!(
        RemoteBuffer::new(FE, Direction::ToDevice, &many, 17),
        Err(BufferError::TooManySegments { count: 17, max: 16 })
    );
    let e = RemoteBuffer::new(FE, Direction::ToDevice, &many[..16], 16).unwrap();
    assert_eq!(e.len(), 16);
    assert!(BufferError::TooManySegments { count: 17, max: 16 }.is_peer_error());
}

#[test]
fn map_gives_bus_addresses_and_cpu_access_across_pieces() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 3, false);
    let segs = [
        seg(pages[0].1, 4090, 6),
        seg(pages[1].1, 0, 4096),
        seg(pages[2].1, 100, 10),
    ];
    let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 4112).unwrap();
    let mut mapper = Mapper::new(&mut be, FE, 16, 0).unwrap();
    let lb = mapper.map(&mut be, &rb).unwrap();
    assert!(lb.is_zero_copy());
    let mut bus = Vec::new();
    mapper
        .for_each_bus_segment(&lb, |a, l| bus.push((a, l)))
        .unwrap();
    assert_eq!(
        bus,
        vec![
            ((pages[0].0.frame << 12) + 4090, 6),
            (pages[1].0.frame << 12, 4096),
            ((pages[2].0.frame << 12) + 100, 10)
        ]
    );
    // Read across the first boundary.
    let mut b = [0u8; 8];
    mapper.read(&lb, 2, &mut b).unwrap();
    assert_eq!(b, [1, 1, 1, 1, 2, 2, 2, 2]);
    // Write across the second boundary lands in the frontend's pages.
    mapper.write(&lb, 4100, &[9; 8]).unwrap();
    assert_eq!(pages[1].0.mem.read_u8(4095).unwrap(), 9);
    assert_eq!(pages[1].0.mem.read_u8(4093).unwrap(), 2);
    assert_eq!(pages[2].0.mem.read_u32(100).unwrap(), 0x0909_0909);
    assert_eq!(pages[2].0.mem.read_u8(105).unwrap(), 9);
    assert_eq!(pages[2].0.mem.read_u8(106).unwrap(), 3);
    assert!(matches!(
        mapper.write(&lb, 4110, &[0; 3]),
        Err(BufferError::OutOfRange { .. })
    ));
    assert_eq!(be.stats().foreign_maps, 3);
    assert_eq!(mapper.mapped_now(), 3);
    mapper.release(&mut be, lb).unwrap();
    assert_eq!(be.stats().foreign_maps, 0);
    assert_eq!(mapper.mapped_now(), 0);
    for (_, g) in &pages {
        fe.end_access(*g).unwrap();
    }
}

#[test]
fn read_only_grants_map_read_only_and_refuse_writes() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 1, true);
    let segs = [seg(pages[0].1, 0, 64)];
    let mut mapper = Mapper::new(&mut be, FE, 16, 0).unwrap();
    // A frontend that granted read-only but sent an IN request: the writable map fails.
    let rb_in = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 64).unwrap();
    assert_eq!(
        mapper.map(&mut be, &rb_in).unwrap_err(),
        BufferError::Grant {
            index: 0,
            gref: pages[0].1,
            status: GntStatus::GENERAL_ERROR
        }
    );
    let rb = RemoteBuffer::new(FE, Direction::ToDevice, &segs, 64).unwrap();
    let lb = mapper.map(&mut be, &rb).unwrap();
    assert!(matches!(
        mapper.write(&lb, 0, &[0]),
        Err(BufferError::Shm(_))
    ));
    mapper.release(&mut be, lb).unwrap();
}

#[test]
fn failed_map_leaves_nothing_mapped() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 2, false);
    let segs = [
        seg(pages[0].1, 0, 1),
        seg(pages[1].1, 0, 1),
        seg(GrantRef(1500), 0, 1),
    ];
    let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 3).unwrap();
    let mut mapper = Mapper::new(&mut be, FE, 16, 0).unwrap();
    let e = mapper.map(&mut be, &rb).unwrap_err();
    assert!(matches!(e, BufferError::Grant { index: 2, .. }));
    assert!(e.is_peer_error());
    assert_eq!(be.stats().foreign_maps, 0);
    assert_eq!(mapper.mapped_now(), 0);
}

#[test]
fn reserved_slots_run_out_as_an_error_not_a_panic() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 3, false);
    let segs: Vec<_> = pages.iter().map(|(_, g)| seg(*g, 0, 8)).collect();
    let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 24).unwrap();
    let mut mapper = Mapper::new(&mut be, FE, 4, 2).unwrap();
    let a = mapper.map(&mut be, &rb).unwrap();
    assert_eq!(
        mapper.map(&mut be, &rb).unwrap_err(),
        BufferError::NoResources { needed: 3, free: 1 }
    );
    assert_eq!(
        mapper.bounce(&rb).unwrap_err(),
        BufferError::NoResources { needed: 3, free: 2 }
    );
    mapper.release(&mut be, a).unwrap();
    assert_eq!(mapper.teardown(&mut be), 0);
    assert_eq!(be.stats().pages, 0, "bounce pages freed");
}

/// A frontend's 116-byte IN buffer over two granted pages (20 bytes at offset 10 of the first,
/// 96 at offset 4000 of the second), bounced by a backend mapper with 4 bounce pages. The `Sim`
/// is returned to keep the domains alive.
#[allow(clippy::type_complexity)]
fn bounced_two_pieces() -> (
    Sim,
    SimDomain,
    SimDomain,
    Vec<(LocalPage<HostMem>, GrantRef)>,
    Mapper<SimDomain>,
    xenidc::buffer::LocalBuffer,
) {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 2, false);
    let segs = [seg(pages[0].1, 10, 20), seg(pages[1].1, 4000, 96)];
    let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 116).unwrap();
    let mut mapper = Mapper::new(&mut be, FE, 0, 4).unwrap();
    let lb = mapper.bounce(&rb).unwrap();
    (sim, be, fe, pages, mapper, lb)
}

#[test]
fn bounce_copies_in_and_out_with_grant_copy() {
    let (_sim, mut be, mut fe, pages, mut mapper, lb) = bounced_two_pieces();
    assert!(!lb.is_zero_copy());
    mapper.copy_in(&mut be, &lb).unwrap();
    let mut b = [0u8; 4];
    mapper.read(&lb, 18, &mut b).unwrap();
    assert_eq!(b, [1, 1, 2, 2]);
    mapper.write(&lb, 0, &[0xaa; 116]).unwrap();
    // Not visible to the frontend until copied out.
    assert_eq!(pages[0].0.mem.read_u8(10).unwrap(), 1);
    mapper.copy_out(&mut be, &lb).unwrap();
    assert_eq!(pages[0].0.mem.read_u8(10).unwrap(), 0xaa);
    assert_eq!(pages[0].0.mem.read_u8(30).unwrap(), 1);
    assert_eq!(pages[1].0.mem.read_u8(4095).unwrap(), 0xaa);
    assert_eq!(be.stats().foreign_maps, 0, "bouncing maps nothing");
    // Bus addresses are our bounce pages, at the same in-page offsets.
    let mut bus = Vec::new();
    mapper
        .for_each_bus_segment(&lb, |a, l| bus.push((a & 0xfff, l)))
        .unwrap();
    assert_eq!(bus, vec![(10, 20), (4000, 96)]);
    // A revoked grant makes the copy fail with the grant status.
    fe.end_access(pages[1].1).unwrap();
    assert!(matches!(
        mapper.copy_out(&mut be, &lb),
        Err(BufferError::Grant { index: 1, .. })
    ));
    mapper.release(&mut be, lb).unwrap();
    assert_eq!(mapper.bounce_in_use(), 0);
}

#[test]
fn buffers_of_another_connection_are_refused() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = sim.add_domain(FE);
    let pages = granted(&mut fe, 1, false);
    let rb = RemoteBuffer::new(FE, Direction::FromDevice, &[seg(pages[0].1, 0, 4)], 4).unwrap();
    let mut m1 = Mapper::new(&mut be, FE, 2, 0).unwrap();
    let mut m2 = Mapper::new(&mut be, FE, 2, 0).unwrap();
    let lb = m1.map(&mut be, &rb).unwrap();
    assert_eq!(m2.read(&lb, 0, &mut [0; 4]), Err(BufferError::WrongMapper));
    assert_eq!(m2.release(&mut be, lb), Err(BufferError::WrongMapper));
    assert_eq!(
        m1.teardown(&mut be),
        1,
        "the teardown unmapped the orphaned mapping"
    );
    assert_eq!(be.stats().foreign_maps, 0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Validation accepts exactly the lists a model accepts, and never panics.
        #[test]
        fn validation_matches_the_model(
            segs in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u16>()), 0..20),
            declared in any::<u32>(),
            use_sum in any::<bool>(),
        ) {
            let segs: Vec<_> = segs.into_iter().map(|(g, o, l)| seg(GrantRef(g), o, l)).collect();
            let sum: u64 = segs.iter().map(|s| s.length as u64).sum();
            let declared = if use_sum { sum as u32 } else { declared };
            let ok = segs.len() <= 16
                && segs.iter().all(|s| s.offset as usize + s.length as usize <= 4096)
                && sum == declared as u64;
            let r = RemoteBuffer::new(FE, Direction::ToDevice, &segs, declared);
            prop_assert_eq!(r.is_ok(), ok);
            if let Err(e) = r {
                prop_assert!(e.is_peer_error());
            }
        }
    }
}

/// A short IN transfer copies back only what it delivered: the peer's bytes past `actual` stay
/// as they were (nothing of an earlier transfer left in the bounce pages reaches it), over a
/// piece boundary too, and an empty transfer makes no copy.
#[test]
fn copy_out_many_copies_only_the_delivered_bytes() {
    let (_sim, mut be, _fe, pages, mut mapper, lb) = bounced_two_pieces();
    // Stale bytes of an "earlier transfer" fill the bounce pages; this one delivered 25.
    mapper.write(&lb, 0, &[0x55; 116]).unwrap();
    mapper.write(&lb, 0, &[0xaa; 25]).unwrap();
    let copies = be.stats().copies_total;
    let r = mapper.copy_out_many(&mut be, &[(&lb, 25)]);
    assert!(matches!(r[..], [Ok(())]), "{r:?}");
    assert_eq!(be.stats().copies_total, copies + 2, "two pieces, one call");
    assert_eq!(pages[0].0.mem.read_u8(29).unwrap(), 0xaa);
    assert_eq!(pages[1].0.mem.read_u8(4000).unwrap(), 0xaa);
    assert_eq!(pages[1].0.mem.read_u8(4004).unwrap(), 0xaa);
    assert_eq!(
        pages[1].0.mem.read_u8(4005).unwrap(),
        2,
        "past actual: untouched"
    );
    assert_eq!(pages[1].0.mem.read_u8(4095).unwrap(), 2);
    let r = mapper.copy_out_many(&mut be, &[(&lb, 0)]);
    assert!(matches!(r[..], [Ok(())]), "{r:?}");
    assert_eq!(
        be.stats().copies_total,
        copies + 2,
        "nothing delivered, nothing copied"
    );
    mapper.release(&mut be, lb).unwrap();
}
