//! Fuzz target: the xenstore message parser and everything that consumes parsed messages.
//!
//! The input is a byte stream as a xenstore peer could send it. It goes, in chunks whose size the
//! first byte chooses, through
//! 1. the streaming [`Decoder`] and every payload parser (watch events, error names, strings,
//!    paths, permissions, directory / permission / transaction-id replies);
//! 2. a [`Client`] with requests in flight, as the server's replies and watch events;
//! 3. the simulated [`Server`], as requests from an unprivileged domain and from dom0.
//!
//! None of them may panic, and the bounds they promise must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenidc::xenstore::client::{
    parse_directory, parse_perms, parse_tx_id, Client, Request, Transport, TransportError,
    MAX_IN_FLIGHT, MAX_QUEUED_EVENTS,
};
use xenidc::xenstore::server::Server;
use xenidc::xenstore::wire::{
    self, check_path, exact_strings, parse_watch_event, Decoder, Errno, Perm, TxId, PAYLOAD_MAX,
};

/// Hands the fuzz input to the client as if the server sent it.
struct Replay {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl Transport for Replay {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        Ok(bytes.len())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn parse_everything(payload: &[u8]) {
    assert!(payload.len() <= PAYLOAD_MAX);
    let _ = parse_watch_event(payload);
    let _ = Errno::from_wire(payload);
    let _ = exact_strings::<2>(payload);
    let _ = parse_directory(payload);
    let _ = parse_perms(payload);
    let _ = parse_tx_id(payload);
    if let Ok(strings) = wire::strings(payload) {
        for s in strings {
            let _ = check_path(s);
            let _ = Perm::parse(s);
            let _ = wire::parse_u32(s);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;

    // 1. Decoder and payload parsers.
    let mut dec = Decoder::new();
    'stream: for piece in body.chunks(chunk) {
        let mut input = piece;
        while !input.is_empty() {
            match dec.decode(&mut input) {
                Ok(Some(frame)) => {
                    assert_eq!(frame.payload.len(), frame.header.len as usize);
                    parse_everything(frame.payload);
                }
                Ok(None) => {}
                Err(_) => {
                    assert!(dec.has_failed());
                    break 'stream;
                }
            }
        }
    }

    // 2. Client reply handling, with requests (req_id 1..=5) in flight.
    let mut client = Client::new(Replay {
        data: body.to_vec(),
        pos: 0,
        chunk,
    });
    let ids: Vec<_> = [
        Request::Read("/a"),
        Request::Directory("/b"),
        Request::GetPerms("c"),
        Request::TransactionStart,
        Request::Watch("/w", "tok"),
    ]
    .into_iter()
    .filter_map(|r| client.submit(TxId::NONE, r).ok())
    .collect();
    let _ = client.poll();
    assert!(client.in_flight() <= MAX_IN_FLIGHT);
    for id in ids {
        if let Some(Ok(payload)) = client.take_reply(id) {
            parse_everything(&payload);
        }
    }
    let mut events = 0;
    while client.next_event().is_some() {
        events += 1;
    }
    assert!(events <= MAX_QUEUED_EVENTS);
    let _ = client.take_events_lost();

    // 3. The simulated server, as requests from domain 5 and from dom0.
    let mut server = Server::new();
    server.add_domain(5);
    server.add_domain(6);
    for domid in [5, 0] {
        let conn = server.connect(domid);
        for piece in body.chunks(chunk) {
            if server.feed(conn, piece).is_err() {
                assert!(!server.is_alive(conn));
                break;
            }
        }
        let out = server.take_output(conn);
        // Everything the server sends must decode cleanly.
        let mut d = Decoder::new();
        let mut input = &out[..];
        while !input.is_empty() {
            match d.decode(&mut input) {
                Ok(Some(f)) => parse_everything(f.payload),
                Ok(None) => panic!("server output ends in a partial message"),
                Err(e) => panic!("server sent an undecodable message: {e}"),
            }
        }
    }
});
