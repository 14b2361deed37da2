//! TLS routed by server name: a [`Handshake`] that reads a client's ClientHello, routes the
//! connection to the worker group that serves the name it asks for, and hands the socket over
//! with the ClientHello as its prelude. The worker completes the TLS handshake itself (with
//! `rustls`'s `ServerConnection`, say: feed it the prelude first), and the parent never holds a
//! key or sees a byte of the session.
//!
//! No proxy does this today: nginx's `ssl_preread` and HAProxy's SNI routing read the
//! ClientHello too, but then copy the bytes for the connection's whole life. Here the parent
//! reads the first record (or the first few, for a ClientHello split over records or
//! segments) and gets out of the way.
//!
//! Names match without regard to case; `*.example.com` matches one label in front of
//! `example.com` (`a.example.com`, not `example.com` nor `a.b.example.com`); an exact name wins
//! over a wildcard. A ClientHello without a server name, or with one no route names, goes to
//! the default group if there is one ([`ServerName::otherwise`]), else is refused with a TLS
//! `unrecognized_name` alert. Bytes that are not a TLS handshake are refused.
//!
//! **Encrypted Client Hello** (ECH): a client that uses it sends the real name encrypted, in an
//! inner ClientHello only the server's ECH key opens; the outer ClientHello, which is all a
//! router sees, names the *client-facing* server. So with ECH every connection routes by that
//! outer name (one group holds the ECH key and serves them all, or decrypts and forwards), and
//! routing to tenants by their own names is no longer possible at this layer. This router does
//! not decrypt ECH.
//!
//! Parsing is the `tls-parser` crate's (records, the ClientHello, its extensions); this module
//! reassembles a handshake message split over several records.

use std::sync::Arc;

use tls_parser::{parse_tls_extensions, parse_tls_message_handshake, parse_tls_raw_record, TlsExtension, TlsMessage};
use tls_parser::{TlsMessageHandshake, TlsRecordType};

use super::handshake::{Handshake, Peer, Reject, Route, Step};

/// A TLS `unrecognized_name` alert (fatal), the answer to a name nobody serves.
pub const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x70];

/// Routes TLS connections by server name to worker groups: see the module docs.
#[derive(Clone, Debug, Default)]
pub struct ServerName {
    routes: Arc<Vec<(String, String)>>,
    default: Option<String>,
}

impl ServerName {
    /// No routes yet.
    pub fn new() -> ServerName {
        ServerName::default()
    }

    /// Connections asking for `name` (exact, or `*.domain`) go to worker group `group`.
    pub fn route(mut self, name: &str, group: &str) -> ServerName {
        Arc::make_mut(&mut self.routes).push((name.to_ascii_lowercase(), group.to_string()));
        self
    }

    /// Connections with no server name, or one no route names, go to `group`.
    pub fn otherwise(mut self, group: &str) -> ServerName {
        self.default = Some(group.to_string());
        self
    }

    /// The group for `name`.
    pub fn group_for(&self, name: Option<&str>) -> Option<&str> {
        let found = name.filter(|n| !n.starts_with('*') && !n.starts_with('.')).and_then(|name| {
            let name = name.to_ascii_lowercase();
            let exact = self.routes.iter().find(|(n, _)| *n == name);
            exact
                .or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.routes.iter().find(|(n, _)| n.strip_prefix("*.") == Some(parent))
                })
                .map(|(_, g)| g.as_str())
        });
        found.or(self.default.as_deref())
    }
}

/// What the first bytes of a connection say about its TLS server name.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not all of the ClientHello has arrived.
    Incomplete,
    /// A ClientHello, with the server name it asks for, if any.
    Name(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

/// Reads the server name from the ClientHello at the start of `read`, reassembling a
/// handshake message split over several records.
pub fn client_hello(read: &[u8]) -> Hello {
    let mut message = Vec::new();
    let mut rest = read;
    loop {
        match parse_tls_raw_record(rest) {
            Ok((after, record)) => {
                if record.hdr.record_type != TlsRecordType::Handshake {
                    return Hello::NotTls;
                }
                message.extend_from_slice(record.data);
                rest = after;
            }
            Err(tls_parser::nom::Err::Incomplete(_)) => {
                // A partial record: as long as what there is looks like TLS, wait for more.
                let looks_like_tls = byte_is(rest.first(), 0x16) && byte_is(rest.get(1), 0x03);
                return if looks_like_tls { Hello::Incomplete } else { Hello::NotTls };
            }
            Err(_) => return Hello::NotTls,
        }
        if message.len() >= 4 {
            let len = 4 + (usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]));
            if message.len() >= len {
                return name_in(&message[..len]);
            }
        }
        if rest.is_empty() {
            return Hello::Incomplete;
        }
    }
}

fn name_in(message: &[u8]) -> Hello {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) = parse_tls_message_handshake(message)
    else {
        return Hello::NotTls;
    };
    let Some(ext) = hello.ext else { return Hello::Name(None) };
    let Ok((_, extensions)) = parse_tls_extensions(ext) else { return Hello::NotTls };
    let name = extensions.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(kind, _)| kind.0 == 0) // host_name
            .and_then(|(_, n)| std::str::from_utf8(n).ok())
            .map(str::to_string),
        _ => None,
    });
    Hello::Name(name)
}

/// `byte` is `b`, or not there yet.
fn byte_is(byte: Option<&u8>, b: u8) -> bool {
    byte.is_none_or(|&x| x == b)
}

impl Handshake for ServerName {
    fn step(&mut self, read: &[u8], _peer: Peer<'_>) -> Step {
        match client_hello(read) {
            Hello::Incomplete => Step::More,
            Hello::NotTls => Step::Reject(Reject::silently("not a TLS ClientHello")),
            Hello::Name(name) => match self.group_for(name.as_deref()) {
                Some(group) => Step::Route(Route {
                    // Names are case-insensitive: one name, one key.
                    key: name.map(|n| n.to_ascii_lowercase().into_bytes()),
                    group: Some(group.to_string()),
                    ..Route::default()
                }),
                None => Step::Reject(Reject { reason: "unknown server name", answer: UNRECOGNIZED_NAME.to_vec() }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2-style ClientHello (one cipher suite), naming `name` if given.
    pub(crate) fn hello(name: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = name {
            let n = name.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0x00, 0x00]); // server_name
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0); // host_name
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut message = vec![0x01]; // client_hello
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        records(&message, usize::MAX)
    }

    /// `message` in handshake records of at most `size` bytes each.
    fn records(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(size.min(16_384)) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_client_hello() {
        assert_eq!(client_hello(&hello(Some("a.example"))), Hello::Name(Some("a.example".into())));
        assert_eq!(client_hello(&hello(None)), Hello::Name(None));
    }

    #[test]
    fn a_client_hello_in_pieces_waits_then_reads_the_name() {
        let whole = hello(Some("b.example"));
        for cut in [1, 5, 9, whole.len() - 1] {
            assert_eq!(client_hello(&whole[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        // Split over several records, too.
        let message = &whole[5..];
        let split = records(message, 10);
        assert_eq!(client_hello(&split), Hello::Name(Some("b.example".into())));
        assert_eq!(client_hello(&split[..split.len() - 3]), Hello::Incomplete);
    }

    #[test]
    fn bytes_that_are_not_tls_are_refused() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]), Hello::NotTls, "application data");
    }

    #[test]
    fn names_route_exactly_then_by_wildcard_then_by_default() {
        let r = ServerName::new().route("a.example", "a").route("*.b.example", "b").route("x.b.example", "x");
        assert_eq!(r.group_for(Some("A.Example")), Some("a"));
        assert_eq!(r.group_for(Some("y.b.example")), Some("b"));
        assert_eq!(r.group_for(Some("x.b.example")), Some("x"), "exact wins");
        assert_eq!(r.group_for(Some("b.example")), None, "a wildcard needs a label");
        assert_eq!(r.group_for(Some("z.y.b.example")), None, "one label only");
        assert_eq!(r.group_for(Some(".b.example")), None, "an empty label is no label");
        assert_eq!(r.group_for(Some("*.b.example")), None, "a client cannot name the wildcard itself");
        assert_eq!(r.group_for(None), None);
        let r = r.otherwise("default");
        assert_eq!(r.group_for(Some("nobody.example")), Some("default"));
        assert_eq!(r.group_for(None), Some("default"));
    }

    #[test]
    fn the_handshake_routes_with_the_client_hello_as_prelude_or_says_unrecognized_name() {
        let peer = baton_transport::Address::Unix(None);
        let p = || Peer { addr: &peer, local: &peer };
        let mut r = ServerName::new().route("a.example", "a");
        match r.step(&hello(Some("a.example")), p()) {
            Step::Route(route) => {
                assert_eq!(route.group.as_deref(), Some("a"));
                assert_eq!(route.consume, 0, "the worker's TLS library reads the ClientHello");
                assert_eq!(route.key.as_deref(), Some(&b"a.example"[..]));
            }
            other => panic!("{other:?}"),
        }
        match r.step(&hello(Some("c.example")), p()) {
            Step::Reject(reject) => assert_eq!(reject.answer, UNRECOGNIZED_NAME),
            other => panic!("{other:?}"),
        }
    }
}
