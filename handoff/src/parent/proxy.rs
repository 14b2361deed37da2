//! The PROXY protocol, receiving side: a [`Handshake`] that reads the header an L4 load
//! balancer (HAProxy's `send-proxy` / `send-proxy-v2`, AWS NLB, ...) puts in front of the
//! client's bytes, and hands the connection over with the client's address as its peer.
//!
//! Parsing is the `ppp` crate's (versions 1 and 2, as HAProxy's specification writes them);
//! this module decides what a header means for a connection:
//!
//! - **Only from trusted networks.** A connection from a configured network must start with a
//!   header (presence is never guessed: a client that reaches the server around the balancer
//!   gets no say about its own address). From anywhere else a header is refused, and a
//!   connection without one is served as a direct client.
//! - `PROXY` (v2) and `TCP4`/`TCP6` (v1): the worker sees the source address as the peer.
//! - `LOCAL` (v2, what health checks send, possibly with TLVs) and `UNKNOWN` (v1): the
//!   connection is the balancer's own; the peer stays the balancer's address.
//! - The header is consumed exactly: bytes that came after it in the same read (TLVs followed by
//!   data, a request sent with the header) are the worker's prelude. Zero-length TLVs are valid;
//!   TLVs that run past the header's length refuse the connection, and so does a binary header
//!   that says it is longer than 16 KiB, as soon as its length arrives.
//! - Whatever follows can be read by another handshake ([`ProxyProtocol::then`]), which sees
//!   the stream after the header and the client's address as the peer: a TLS ClientHello
//!   behind a balancer, say.
//!
//! A worker that speaks protocol version 2 also receives, with each proxied connection, the
//! balancer's own address ([`Incoming::proxied_by`](crate::Incoming::proxied_by)), the address
//! the client connected to ([`Incoming::destination`](crate::Incoming::destination)) and the v2
//! header's TLVs ([`Incoming::proxy_tlvs`](crate::Incoming::proxy_tlvs); up to 2 KiB of them);
//! a version 1 worker sees the client's address as its peer and no more.

use std::net::{IpAddr, SocketAddr};

use baton_transport::Address;
use ppp::{v1, v2, PartialResult};

use super::handshake::{Handshake, Peer, Reject, Route, Step};
use crate::record::{ext, Ext};

/// Which versions of the header a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
    /// Either.
    Both,
}

/// The PROXY protocol as a [`Handshake`]: see the module docs.
pub struct ProxyProtocol {
    versions: Versions,
    trusted: Vec<ipnet::IpNet>,
    then: Option<Box<dyn Handshake>>,
    /// The header, once read: its length, the peer it gives, and what the worker may learn.
    header: Option<Header>,
}

impl std::fmt::Debug for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyProtocol").field("versions", &self.versions).field("trusted", &self.trusted).finish()
    }
}

/// Why a trusted-networks list could not be read.
#[derive(Debug)]
pub struct BadNetwork(pub String);

impl std::fmt::Display for BadNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a network (address/prefix): {:?}", self.0)
    }
}

impl std::error::Error for BadNetwork {}

/// What a header said.
#[derive(Clone)]
struct Header {
    len: usize,
    /// The client, when the header names one.
    client: Option<Address>,
    destination: Option<Address>,
    tlvs: Vec<u8>,
}

/// Most TLV bytes passed on to the worker.
const MAX_TLVS: usize = 2048;

/// The signatures a header starts with.
/// The longest binary header accepted, TLVs included: HAProxy's own buffers (16 KiB by default)
/// bound what it sends. A header that says it is longer is refused as soon as its length is
/// read, rather than waited for until the handshake times out.
const MAX_V2: usize = 16 * 1024;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_PREFIX: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyProtocol {
    /// Accepts headers of `versions` from the networks `trusted` (`"10.0.0.0/8"`,
    /// `"::1/128"`; a bare address is a /32 or /128).
    ///
    /// # Errors
    ///
    /// [`BadNetwork`] for an entry that is not a network.
    pub fn new<S: AsRef<str>>(versions: Versions, trusted: &[S]) -> Result<ProxyProtocol, BadNetwork> {
        let trusted = trusted
            .iter()
            .map(|t| {
                let t = t.as_ref().trim();
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| BadNetwork(t.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(ProxyProtocol { versions, trusted, then: None, header: None })
    }

    /// Reads the stream after the header with `next` (which decides the route; its `consume`
    /// counts from the end of the header).
    pub fn then(mut self, next: impl Handshake) -> ProxyProtocol {
        self.then = Some(Box::new(next));
        self
    }

    fn trusts(&self, peer: &Address) -> bool {
        match peer {
            // A dual-stack listener sees an IPv4 balancer as ::ffff:a.b.c.d.
            Address::Inet(a) => self.trusted.iter().any(|n| n.contains(&a.ip().to_canonical())),
            Address::Unix(_) => false,
        }
    }

    /// The header at the start of `read`: `Ok(None)` while incomplete.
    fn parse(&self, read: &[u8]) -> Result<Option<Header>, &'static str> {
        let v2_ok = matches!(self.versions, Versions::V2 | Versions::Both);
        let v1_ok = matches!(self.versions, Versions::V1 | Versions::Both);
        let inet = |ip: std::net::IpAddr, port: u16| Some(Address::Inet(SocketAddr::new(ip, port)));
        if v2_ok && starts(read, V2_PREFIX) {
            // Bytes 14 and 15: the length of what follows the 16-byte fixed part.
            if let [_, _, _, _, _, _, _, _, _, _, _, _, _, _, hi, lo, ..] = *read {
                if 16 + usize::from(u16::from_be_bytes([hi, lo])) > MAX_V2 {
                    return Err("proxy header too long");
                }
            }
            return match v2::Header::try_from(read) {
                Ok(h) => {
                    if h.tlvs().any(|t| t.is_err()) {
                        return Err("bad proxy header TLVs");
                    }
                    let (client, destination) = match (h.command, h.addresses) {
                        (v2::Command::Local, _) => (None, None),
                        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => (
                            inet(a.source_address.into(), a.source_port),
                            inet(a.destination_address.into(), a.destination_port),
                        ),
                        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => (
                            inet(a.source_address.into(), a.source_port),
                            inet(a.destination_address.into(), a.destination_port),
                        ),
                        (v2::Command::Proxy, _) => (None, None),
                    };
                    let tlvs = if h.tlv_bytes().len() <= MAX_TLVS { h.tlv_bytes().to_vec() } else { Vec::new() };
                    Ok(Some(Header { len: h.len(), client, destination, tlvs }))
                }
                Err(e) if e.is_incomplete() => Ok(None),
                Err(_) => Err("bad proxy header"),
            };
        }
        if v1_ok && starts(read, V1_PREFIX) {
            return match v1::Header::try_from(read) {
                Ok(h) => {
                    let (client, destination) = match h.addresses {
                        v1::Addresses::Tcp4(a) => (
                            inet(a.source_address.into(), a.source_port),
                            inet(a.destination_address.into(), a.destination_port),
                        ),
                        v1::Addresses::Tcp6(a) => (
                            inet(a.source_address.into(), a.source_port),
                            inet(a.destination_address.into(), a.destination_port),
                        ),
                        v1::Addresses::Unknown => (None, None),
                    };
                    Ok(Some(Header { len: h.header.len(), client, destination, tlvs: Vec::new() }))
                }
                // The text header is at most 107 bytes: anything longer without its end is bad.
                Err(e) if e.is_incomplete() && read.len() < 108 => Ok(None),
                Err(_) => Err("bad proxy header"),
            };
        }
        Err("no proxy header")
    }
}

/// `read` is `prefix`'s start, or starts with it: nothing rules the prefix out yet.
fn starts(read: &[u8], prefix: &[u8]) -> bool {
    let n = read.len().min(prefix.len());
    read[..n] == prefix[..n]
}

impl Handshake for ProxyProtocol {
    fn step(&mut self, read: &[u8], peer: Peer<'_>) -> Step {
        let header = match self.header.clone() {
            Some(h) => h,
            None if self.trusts(peer.addr) => match self.parse(read) {
                Ok(Some(h)) => {
                    self.header = Some(h.clone());
                    h
                }
                Ok(None) => return Step::More,
                Err(reason) => return Step::Reject(Reject::silently(reason)),
            },
            None => {
                // Not from a balancer: a header here is someone claiming an address.
                let could_be = |p: &[u8]| starts(read, p) && !read.is_empty();
                if could_be(V1_PREFIX) || could_be(V2_PREFIX) {
                    if read.len() < V1_PREFIX.len().min(V2_PREFIX.len()) {
                        return Step::More;
                    }
                    return Step::Reject(Reject::silently("proxy header from an untrusted peer"));
                }
                let direct = Header { len: 0, client: None, destination: None, tlvs: Vec::new() };
                self.header = Some(direct.clone());
                direct
            }
        };
        let client = header.client.clone().unwrap_or_else(|| peer.addr.clone());
        let mut route = match self.then.as_mut() {
            None => Route { consume: 0, ..Route::default() },
            Some(next) => match next.step(&read[header.len..], Peer { addr: &client, local: peer.local }) {
                Step::Route(r) => r,
                other => return other,
            },
        };
        route.consume += header.len;
        if route.peer.is_none() {
            route.peer = header.client.clone();
        }
        if header.client.is_some() {
            route.extensions.push(Ext::address(ext::PROXIED_BY, peer.addr));
            if let Some(d) = &header.destination {
                route.extensions.push(Ext::address(ext::DESTINATION, d));
            }
        }
        if !header.tlvs.is_empty() {
            route.extensions.push(Ext { kind: ext::PROXY_TLVS, value: header.tlvs.clone() });
        }
        Step::Route(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::Inet(s.parse().unwrap())
    }

    fn run(p: &mut ProxyProtocol, pieces: &[&[u8]], from: &str) -> Step {
        let (peer, local) = (addr(from), addr("127.0.0.1:8080"));
        let mut read = Vec::new();
        for piece in pieces {
            read.extend_from_slice(piece);
            match p.step(&read, Peer { addr: &peer, local: &local }) {
                Step::More => continue,
                done => return done,
            }
        }
        Step::More
    }

    fn trusted(v: Versions) -> ProxyProtocol {
        ProxyProtocol::new(v, &["127.0.0.0/8"]).unwrap()
    }

    fn route(step: Step) -> Route {
        match step {
            Step::Route(r) => r,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    /// 192.0.2.7:4000 → 198.51.100.1:443.
    const V4: [u8; 12] = [192, 0, 2, 7, 198, 51, 100, 1, 0x0f, 0xa0, 0x01, 0xbb];

    #[test]
    fn a_v1_header_gives_the_client_address_and_is_consumed() {
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 443\r\n";
        let mut input = header.to_vec();
        input.extend_from_slice(b"\x16\x03\x01\xff\xfe binary, as a TLS ClientHello is");
        let r = route(run(&mut trusted(Versions::V1), &[&input], "127.0.0.1:9"));
        assert_eq!(r.consume, header.len());
        assert_eq!(r.peer, Some(addr("192.0.2.7:4000")));
    }

    #[test]
    fn a_v1_header_split_over_reads_waits_for_its_end() {
        let r = route(run(
            &mut trusted(Versions::Both),
            &[b"PRO", b"XY TCP6 2001:db8::1 2001:db8::2 ", b"5 6\r\nx"],
            "127.0.0.1:9",
        ));
        assert_eq!(r.peer, Some(addr("[2001:db8::1]:5")));
        assert_eq!(r.consume, "PROXY TCP6 2001:db8::1 2001:db8::2 5 6\r\n".len());
    }

    #[test]
    fn v1_unknown_keeps_the_connections_own_address() {
        let r = route(run(&mut trusted(Versions::V1), &[b"PROXY UNKNOWN\r\n"], "127.0.0.1:9"));
        assert_eq!((r.consume, r.peer), (15, None));
    }

    #[test]
    fn a_v2_header_with_tlvs_then_data_in_one_read() {
        let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]; // ALPN "h2", a zero-length NOOP
        let mut input = v2(1, 0x11, &V4, &tlvs);
        let len = input.len();
        input.extend_from_slice(b"\x16\x03\x01 TLS follows");
        let r = route(run(&mut trusted(Versions::V2), &[&input], "127.0.0.1:9"));
        assert_eq!(r.consume, len, "exactly the header");
        assert_eq!(r.peer, Some(addr("192.0.2.7:4000")));
    }

    #[test]
    fn a_worker_that_speaks_version_2_learns_the_balancer_the_destination_and_the_tlvs() {
        let tlvs = [0x01, 0x00, 0x02, b'h', b'2'];
        let input = v2(1, 0x11, &V4, &tlvs);
        let r = route(run(&mut trusted(Versions::V2), &[&input], "127.0.0.1:9"));
        let find = |k| r.extensions.iter().find(|e| e.kind == k).cloned();
        assert_eq!(find(ext::PROXIED_BY).and_then(|e| e.as_address()), Some(addr("127.0.0.1:9")));
        assert_eq!(find(ext::DESTINATION).and_then(|e| e.as_address()), Some(addr("198.51.100.1:443")));
        assert_eq!(find(ext::PROXY_TLVS).map(|e| e.value), Some(tlvs.to_vec()));
        // Directly, no extension.
        let r = route(run(&mut trusted(Versions::V2), &[b"GET /"], "10.0.0.1:9"));
        assert!(r.extensions.is_empty());
    }

    #[test]
    fn a_v2_local_command_with_tlvs_is_the_balancers_own_connection() {
        let input = v2(0, 0x00, &[], &[0x04, 0x00, 0x01, 0x00]);
        let r = route(run(&mut trusted(Versions::Both), &[&input[..7], &input[7..]], "127.0.0.1:9"));
        assert_eq!((r.consume, r.peer), (input.len(), None));
    }

    #[test]
    fn tlvs_running_past_the_header_are_refused() {
        let input = v2(1, 0x11, &V4, &[0x01, 0x00, 0x09, b'x']);
        assert!(matches!(run(&mut trusted(Versions::V2), &[&input], "127.0.0.1:9"), Step::Reject(_)));
    }

    /// It was waited for until the handshake timed out (10 s in `prefork`).
    #[test]
    fn a_v2_header_that_claims_more_than_a_balancer_sends_is_refused_at_once() {
        let mut fixed = V2_PREFIX.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(run(&mut trusted(Versions::V2), &[&fixed], "127.0.0.1:9"), Step::Reject(_)));
        // The longest accepted length still waits for its bytes.
        let mut longest = V2_PREFIX.to_vec();
        longest.extend_from_slice(&[0x21, 0x11]);
        longest.extend_from_slice(&((MAX_V2 - 16) as u16).to_be_bytes());
        assert!(matches!(run(&mut trusted(Versions::V2), &[&longest], "127.0.0.1:9"), Step::More));
    }

    #[test]
    fn a_trusted_peer_must_send_a_header_and_the_right_version() {
        assert!(matches!(run(&mut trusted(Versions::Both), &[b"GET / HTTP/1.1\r\n"], "127.0.0.1:9"), Step::Reject(_)));
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 443\r\n";
        assert!(matches!(run(&mut trusted(Versions::V2), &[v1], "127.0.0.1:9"), Step::Reject(_)));
        assert!(matches!(run(&mut trusted(Versions::V1), &[&v2(1, 0x11, &V4, &[])], "127.0.0.1:9"), Step::Reject(_)));
        let endless = [b'P', b'R', b'O', b'X', b'Y', b' '].iter().copied().chain(std::iter::repeat_n(b'1', 200));
        assert!(matches!(
            run(&mut trusted(Versions::V1), &[&endless.collect::<Vec<u8>>()], "127.0.0.1:9"),
            Step::Reject(_)
        ));
    }

    #[test]
    fn an_untrusted_peer_may_not_claim_an_address_but_is_served_directly() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 443\r\n";
        assert!(matches!(run(&mut trusted(Versions::Both), &[v1], "10.0.0.1:9"), Step::Reject(_)));
        assert!(matches!(run(&mut trusted(Versions::Both), &[&v2(1, 0x11, &V4, &[])], "10.0.0.1:9"), Step::Reject(_)));
        let r = route(run(&mut trusted(Versions::Both), &[b"GET / HTTP/1.1\r\n"], "10.0.0.1:9"));
        assert_eq!((r.consume, r.peer), (0, None));
    }

    #[test]
    fn the_next_handshake_reads_after_the_header_with_the_clients_address() {
        let next = |read: &[u8], peer: Peer<'_>| {
            assert_eq!(peer.addr, &addr("192.0.2.7:4000"));
            match read.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    Step::Route(Route { consume: end + 1, key: Some(read[..end].to_vec()), ..Route::default() })
                }
                None => Step::More,
            }
        };
        let mut p = trusted(Versions::V1).then(next);
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 443\r\n";
        let r = route(run(&mut p, &[header, b"ke", b"y\nrest"], "127.0.0.1:9"));
        assert_eq!(r.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r.consume, header.len() + 4);
        assert_eq!(r.peer, Some(addr("192.0.2.7:4000")));
    }

    #[test]
    fn an_ipv4_balancer_seen_through_a_dual_stack_listener_is_trusted() {
        // Regression (review): `[::]` listeners report IPv4 peers as ::ffff:a.b.c.d.
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 443\r\n";
        let r = route(run(&mut trusted(Versions::V1), &[header], "[::ffff:127.0.0.1]:9"));
        assert_eq!(r.peer, Some(addr("192.0.2.7:4000")));
    }

    #[test]
    fn networks_are_checked() {
        assert!(ProxyProtocol::new(Versions::Both, &["10.0.0.0/33"]).is_err());
        assert!(ProxyProtocol::new(Versions::Both, &["::1", "10.1.0.0/16"]).is_ok());
    }
}
