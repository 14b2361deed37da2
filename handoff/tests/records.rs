//! The wire format and the channel against hostile input: random and mutated bytes never panic
//! the decoder; a worker given garbage, truncated, oversized, wrong-version records, or records
//! with more descriptors than they declare, rejects them, keeps serving, and leaks nothing.
//! Also the credential check on named channels.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use baton_handoff::record::{self, DecodeError, Item, Kind, Load, Reason, Record};
use baton_handoff::{bootstrap, ChannelListener, Endpoint, PeerCheck, RecvBuf};
use baton_transport::Address;
use common::{fd_count, handoff, spare_socket, wait_until, HandParent};

/// xorshift64*: reproducible pseudo-random input without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn random_addr(rng: &mut Rng) -> Address {
    match rng.below(4) {
        0 => Address::Unix(None),
        1 => Address::Inet(SocketAddr::from(([127, 0, 0, rng.below(255) as u8], rng.below(65536) as u16))),
        2 => Address::Inet(SocketAddr::V6(std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::from(rng.next() as u128),
            rng.below(65536) as u16,
            0,
            rng.below(4) as u32,
        ))),
        _ => Address::Unix(Some(format!("/tmp/s{}", rng.below(1_000_000)).into())),
    }
}

fn random_items(rng: &mut Rng) -> Vec<Item> {
    (0..1 + rng.below(8))
        .map(|_| Item {
            id: rng.next(),
            kind: if rng.below(2) == 0 { Kind::Connection } else { Kind::Listener },
            tag: rng.next() as u32,
            peer: random_addr(rng),
            local: random_addr(rng),
            key: if rng.below(2) == 0 {
                None
            } else {
                let n = rng.below(40);
                Some(rng.bytes(n))
            },
            prelude: {
                let n = rng.below(300);
                rng.bytes(n)
            },
            ext: Vec::new(),
        })
        .collect()
}

fn random_record(rng: &mut Rng) -> Record {
    let ids = |rng: &mut Rng| (0..1 + rng.below(20)).map(|_| rng.next()).collect::<Vec<u64>>();
    match rng.below(13) {
        0 => Record::Hello { worker: rng.next() as u32 },
        1 => Record::Handoff(random_items(rng)),
        2 => Record::Drain { deadline_ms: rng.next() as u32 },
        3 => Record::Stop,
        4 => Record::Ready { pid: rng.next() as u32 },
        5 => Record::Adopted(ids(rng)),
        6 => Record::Rejected(ids(rng).into_iter().map(|id| (id, Reason::Busy)).collect()),
        7 => Record::Closed(ids(rng)),
        8 => Record::Load(Load { open: rng.next() as u32, queued: rng.next() as u32, busy: rng.next() as u32 }),
        9 => Record::Take,
        10 => Record::Serving,
        11 => Record::Released,
        _ => Record::Return(random_items(rng)),
    }
}

#[test]
fn every_record_round_trips_through_encode_and_decode() {
    let mut rng = Rng(0x5eed);
    for _ in 0..5_000 {
        let rec = random_record(&mut rng);
        let mut bytes = Vec::new();
        record::encode(&rec, &mut bytes);
        assert_eq!(bytes.len(), record::encoded_len(&rec));
        assert_eq!(record::decode(&bytes), Ok(rec));
    }
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = Rng(0xbad5eed);
    for _ in 0..50_000 {
        let n = rng.below(200);
        let mut bytes = rng.bytes(n);
        if n >= 4 && rng.below(2) == 0 {
            // Often a valid header start, so the body parsers get exercised too.
            bytes[0..3].copy_from_slice(&[b'B', b'T', record::VERSION]);
        }
        let _ = record::decode(&bytes);
    }
}

#[test]
fn mutated_records_decode_to_an_error_or_to_a_record_that_encodes_back_the_same() {
    let mut rng = Rng(0xfeed);
    for _ in 0..20_000 {
        let rec = random_record(&mut rng);
        let mut bytes = Vec::new();
        record::encode(&rec, &mut bytes);
        match rng.below(4) {
            0 => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => bytes.truncate(rng.below(bytes.len())),
            2 => {
                let i = rng.below(bytes.len() + 1);
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                bytes.splice(i..i, extra);
            }
            _ => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
        }
        if let Ok(decoded) = record::decode(&bytes) {
            let mut again = Vec::new();
            record::encode(&decoded, &mut again);
            // A HANDOFF's declared descriptor count is checked by the channel against the items
            // and what arrived (see `a_handoff_whose_descriptor_field_lies_is_rejected_by_id`);
            // everything else must be exactly what the bytes said.
            if matches!(decoded, Record::Handoff(_) | Record::Return(_)) {
                again[6..8].copy_from_slice(&bytes[6..8]);
            }
            assert_eq!(again, bytes, "a decoded record is exactly what the bytes said");
        }
    }
}

#[test]
fn the_decoder_names_what_is_wrong() {
    let mut hello = Vec::new();
    record::encode(&Record::Hello { worker: 3 }, &mut hello);
    assert_eq!(record::decode(&hello[..5]), Err(DecodeError::TooShort));
    let mut bad = hello.clone();
    bad[0] = b'X';
    assert_eq!(record::decode(&bad), Err(DecodeError::BadMagic));
    let mut bad = hello.clone();
    bad[2] = 9;
    assert_eq!(record::decode(&bad), Err(DecodeError::UnsupportedVersion(9)));
    let mut bad = hello.clone();
    bad[3] = 0x7f;
    assert_eq!(record::decode(&bad), Err(DecodeError::UnknownType(0x7f)));
    assert_eq!(record::decode(&hello[..10]), Err(DecodeError::Truncated));
    let mut bad = hello.clone();
    bad.push(0);
    assert_eq!(record::decode(&bad), Err(DecodeError::TrailingBytes));
    assert_eq!(record::decode(&vec![0; record::MAX_RECORD + 1]), Err(DecodeError::Oversized));
}

#[test]
fn a_worker_rejects_hostile_records_keeps_serving_and_leaks_nothing() {
    let mut p = HandParent::start();
    p.check_still_serving(1);
    let before = fd_count(None);
    let (a, b) = spare_socket();
    let fds = [b.as_fd()];

    // Garbage with a descriptor attached.
    p.ours.send_bytes(b"\x00\x01garbage that is no record", &fds).unwrap();
    // Wrong version.
    let mut bytes = Vec::new();
    record::encode(&handoff(50, "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()), &mut bytes);
    let mut wrong = bytes.clone();
    wrong[2] = 99;
    p.ours.send_bytes(&wrong, &fds).unwrap();
    // Truncated body.
    p.ours.send_bytes(&bytes[..bytes.len() - 3], &fds).unwrap();
    // Oversized.
    let mut huge = bytes.clone();
    huge.resize(record::MAX_RECORD + 100, 0);
    p.ours.send_bytes(&huge, &fds).unwrap();
    // More descriptors than declared: the items are named, so they are rejected by id.
    let (c, d) = spare_socket();
    p.ours.send_bytes(&bytes, &[b.as_fd(), d.as_fd()]).unwrap();
    assert_eq!(p.recv_until(|r| matches!(r, Record::Rejected(_))), Record::Rejected(vec![(50, Reason::Malformed)]));
    // A worker's record sent to a worker.
    p.send(&Record::Adopted(vec![1]), &[]);
    // An empty packet (SEQPACKET allows it): not the end of the channel.
    p.ours.send_bytes(b"", &[]).unwrap();

    p.check_still_serving(2);
    drop((a, b, c, d));
    wait_until("descriptors back to baseline", || fd_count(None) <= before);
    p.worker.stop();
}

#[test]
fn a_handoff_whose_descriptor_field_lies_is_rejected_by_id() {
    let mut p = HandParent::start();
    let before = fd_count(None);
    let (a, b) = spare_socket();
    let mut bytes = Vec::new();
    record::encode(&handoff(7, "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()), &mut bytes);
    bytes[6] = 2; // declares two descriptors for one item
    p.ours.send_bytes(&bytes, &[b.as_fd()]).unwrap();
    assert_eq!(p.recv_until(|r| matches!(r, Record::Rejected(_))), Record::Rejected(vec![(7, Reason::Malformed)]));
    drop((a, b));
    wait_until("descriptors back to baseline", || fd_count(None) <= before);
    p.check_still_serving(8);
    p.worker.stop();
}

#[test]
fn the_worker_treats_end_of_channel_as_its_parent_gone() {
    let p = HandParent::start();
    drop(p.ours);
    assert_eq!(p.worker.worker.wait_timeout(common::WAIT), Some(baton_handoff::WorkerExit::ParentGone));
    p.worker.stop();
}

fn endpoints() -> Vec<Endpoint> {
    let pid = std::process::id();
    vec![
        Endpoint::Path(std::env::temp_dir().join(format!("baton-cred-{pid}.sock"))),
        Endpoint::Abstract(format!("baton-cred-{pid}").into_bytes()),
    ]
}

#[test]
fn a_peer_with_the_wrong_uid_is_refused_on_path_and_abstract_channels() {
    let me = rustix::process::geteuid().as_raw();
    for endpoint in endpoints() {
        // The parent expects another user: our own connection is refused on accept.
        let strict = ChannelListener::bind(&endpoint, PeerCheck::Uid(me + 1)).unwrap();
        let _worker_end = bootstrap::connect(&endpoint, PeerCheck::SameUid).unwrap();
        let err = strict.accept().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{endpoint:?}: {err}");
        drop(strict);

        // The worker expects another user: it refuses the parent.
        let open = ChannelListener::bind(&endpoint, PeerCheck::SameUid).unwrap();
        let err = bootstrap::connect(&endpoint, PeerCheck::Uid(me + 1)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{endpoint:?}: {err}");

        // Matching credentials work.
        let worker_end = bootstrap::connect(&endpoint, PeerCheck::SameUid).unwrap();
        let _ = open.accept(); // the refused one, already closed by the worker
        let parent_end = loop {
            match open.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
        };
        parent_end.send(&Record::Stop, &[], &mut Vec::new()).unwrap();
        let mut buf = RecvBuf::default();
        assert_eq!(worker_end.recv(&mut buf).unwrap().0, Record::Stop);
        drop(open);
        if let Endpoint::Path(p) = &endpoint {
            assert!(!p.exists(), "the socket file is removed with the listener");
        }
    }
}

#[test]
fn a_socket_path_is_private_replaces_stale_files_and_never_clobbers_others() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("baton-stale-{}.sock", std::process::id()));
    let endpoint = Endpoint::Path(path.clone());
    let l = ChannelListener::bind(&endpoint, PeerCheck::SameUid).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let err = ChannelListener::bind(&endpoint, PeerCheck::SameUid).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "a live listener is not replaced");
    drop(l);
    // Leave a stale socket file behind, as a crashed process would (std does not unlink).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = ChannelListener::bind(&endpoint, PeerCheck::SameUid).expect("a stale file is replaced");
    drop(l);
    assert!(!path.exists());
    // A file that is not a socket is never removed.
    std::fs::File::create(&path).unwrap().write_all(b"precious").unwrap();
    let err = ChannelListener::bind(&endpoint, PeerCheck::SameUid).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_inherited_descriptor_that_is_not_a_channel_is_refused_without_closing_it() {
    let (a, _b) = spare_socket();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&a);
    // SAFETY: on error the function does not take ownership; we keep `a` and check it is open.
    let err = unsafe { bootstrap::inherited(raw) }.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(rustix::io::fcntl_getfd(a.as_fd()).is_ok(), "still open");
    // SAFETY: as above; a closed number is reported, not adopted.
    let err = unsafe { bootstrap::inherited(100_000) }.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

// ----- version 2: items with extensions ------------------------------------------------------

fn proxied_item() -> Item {
    let balancer = Address::Inet("10.0.0.5:40001".parse().unwrap());
    Item {
        id: 9,
        kind: Kind::Connection,
        tag: 0,
        peer: Address::Inet("192.0.2.7:4000".parse().unwrap()),
        local: Address::Inet("127.0.0.1:8080".parse().unwrap()),
        key: None,
        prelude: b"GET".to_vec(),
        ext: vec![
            record::Ext::address(record::ext::PROXIED_BY, &balancer),
            record::Ext { kind: record::ext::PROXY_TLVS, value: vec![0x01, 0x00, 0x02, b'h', b'2'] },
            record::Ext { kind: 200, value: Vec::new() }, // a kind this side does not know
        ],
    }
}

#[test]
fn a_version_2_item_carries_its_extensions_and_unknown_kinds_survive() {
    let r = Record::Handoff(vec![proxied_item()]);
    let mut bytes = Vec::new();
    record::encode_as(&r, record::VERSION_2, &mut bytes);
    assert_eq!(bytes[2], 2);
    assert_eq!(bytes.len(), record::HEADER_LEN + record::item_len_as(&proxied_item(), record::VERSION_2));
    assert_eq!(record::decode(&bytes), Ok(r));
    let Record::Handoff(items) = record::decode(&bytes).unwrap() else { unreachable!() };
    assert_eq!(items[0].ext[0].as_address(), Some(Address::Inet("10.0.0.5:40001".parse().unwrap())));
}

#[test]
fn version_1_leaves_extensions_out_and_is_what_it_always_was() {
    let with = Record::Handoff(vec![proxied_item()]);
    let without = Record::Handoff(vec![Item { ext: Vec::new(), ..proxied_item() }]);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    record::encode(&with, &mut a);
    record::encode(&without, &mut b);
    assert_eq!(a, b, "a version 1 peer gets the record it always got");
    assert_eq!(record::decode(&a), Ok(without));
}

#[test]
fn malformed_extension_blocks_and_versions_in_version_1_are_refused() {
    let mut bytes = Vec::new();
    record::encode_as(&Record::Handoff(vec![proxied_item()]), record::VERSION_2, &mut bytes);
    // An extension that runs past its block, and a block that runs past the record.
    let mut cut = bytes.clone();
    cut.truncate(cut.len() - 1);
    assert!(record::decode(&cut).is_err());
    let ext_len_at = bytes.len() - 2 - (3 + 7) - (3 + 5) - 3; // the block's u16 length
    let mut long = bytes.clone();
    long[ext_len_at] = long[ext_len_at].wrapping_add(1);
    assert!(record::decode(&long).is_err());
    // VERSIONS exists only in version 2.
    let mut v = Vec::new();
    record::encode_as(&Record::Versions(vec![1, 2]), record::VERSION_2, &mut v);
    assert_eq!(record::decode(&v), Ok(Record::Versions(vec![1, 2])));
    v[2] = 1;
    assert!(record::decode(&v).is_err());
}
