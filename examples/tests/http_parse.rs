//! The example server's request-head parser against RFC 9112's rules, through the public API
//! of `baton_examples::http`: each test is named after the rule it guards. The smuggling cases
//! and the head deadline are also tested end to end, in `http_server.rs`.

use baton_examples::http::{parse, Parsed, Request, MAX_BODY, MAX_HEAD, MAX_HEADERS};

/// `head` parsed, expected to be a request.
fn request(head: &str) -> Request<'_> {
    match parse(head.as_bytes()) {
        Parsed::Request(req) => req,
        other => panic!("{head:?}: {other:?}"),
    }
}

/// Asserts `head` is refused with 400, and says why.
#[track_caller]
fn assert_bad(head: &[u8]) -> &'static str {
    match parse(head) {
        Parsed::Bad(why) => why,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
    }
}

/// The status line of `parsed`'s refusal.
fn refusal_status(parsed: &Parsed<'_>) -> String {
    let reply = parsed.rejection().expect("a refusal");
    String::from_utf8(reply).unwrap().lines().next().unwrap().to_string()
}

fn with_content_length(values: &[&str]) -> Vec<u8> {
    let mut head = String::from("POST / HTTP/1.1\r\nHost: t\r\n");
    for v in values {
        head.push_str(&format!("Content-Length:{v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[test]
fn conflicting_duplicate_content_lengths_are_rejected() {
    assert_eq!(assert_bad(&with_content_length(&[" 5", " 6"])), "conflicting Content-Length values");
    assert_bad(&with_content_length(&[" 5, 6"]));
    assert_bad(&with_content_length(&[" 5", " 5, 6"]));
}

#[test]
fn identical_duplicate_content_lengths_are_taken_as_one() {
    // RFC 9110 §8.6 lets a recipient take `5, 5` (or two fields of 5) as 5: every reader
    // agrees on that length.
    for values in [&[" 5", " 5"][..], &[" 5, 5"], &["5,5"], &[" 05", " 5"]] {
        let head = with_content_length(values);
        let Parsed::Request(req) = parse(&head) else { panic!("{values:?}: {:?}", parse(&head)) };
        assert_eq!(req.body_len, 5);
    }
}

#[test]
fn content_length_that_is_not_only_digits_is_rejected() {
    // `usize::from_str` takes `+5`: the old parser read it as 5.
    for v in ["+5", "-1", "5 5", "0x5", "5.0", "1_0", "five", "5;", "\u{0665}"] {
        assert_eq!(assert_bad(&with_content_length(&[v])), "Content-Length is not a decimal number", "{v}");
    }
    for v in ["", " ", "5,", ",5"] {
        assert_eq!(assert_bad(&with_content_length(&[v])), "empty Content-Length", "{v}");
    }
    // Digits, but more than any length: not a length either (and not 413: it is no number).
    assert_eq!(assert_bad(&with_content_length(&["99999999999999999999999"])), "Content-Length overflows");
}

#[test]
fn content_length_over_max_body_is_413() {
    let over = with_content_length(&[&(MAX_BODY + 1).to_string()]);
    assert_eq!(parse(&over), Parsed::BodyTooLarge);
    assert_eq!(refusal_status(&parse(&over)), "HTTP/1.1 413 Content Too Large");
    let at = with_content_length(&[&MAX_BODY.to_string()]);
    assert!(matches!(parse(&at), Parsed::Request(Request { body_len: MAX_BODY, .. })));
}

#[test]
fn whitespace_between_field_name_and_colon_is_rejected() {
    // RFC 9112 §5.1: a server MUST reject it (the old parser ignored the field, and read the
    // body as the next request).
    let why = assert_bad(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello");
    assert_eq!(why, "invalid header field name");
    assert_bad(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length\t: 5\r\n\r\nhello");
    assert_bad(b"GET / HTTP/1.1\r\nHost : t\r\n\r\n");
}

#[test]
fn empty_or_invalid_methods_are_rejected() {
    for head in
        [" / HTTP/1.1\r\nHost: t\r\n\r\n", "G(T / HTTP/1.1\r\nHost: t\r\n\r\n", "GET\t/ HTTP/1.1\r\nHost: t\r\n\r\n"]
    {
        assert_eq!(assert_bad(head.as_bytes()), "invalid method");
    }
    assert_bad(b"G\xc3\xa9T / HTTP/1.1\r\nHost: t\r\n\r\n");
}

#[test]
fn empty_or_invalid_request_targets_are_rejected() {
    for target in [
        "",          // "GET  HTTP/1.1": no target
        " /",        // two spaces
        "x",         // no form
        "*",         // asterisk-form, but not OPTIONS
        "/a#frag",   // no fragment in a request-target
        "/%zz",      // bad percent-encoding
        "/%4",       // cut percent-encoding
        "/{x}",      // not a URI character
        "/a\"b",     // nor this
        "/\u{e9}",   // nor non-ASCII
        "http:///x", // absolute-form with no authority
        "1http://h/",
        "http://a b/",
    ] {
        assert_bad(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    // authority-form is for CONNECT only, and CONNECT takes nothing else.
    assert_bad(b"GET h:443 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_bad(b"CONNECT /x HTTP/1.1\r\nHost: t\r\n\r\n");
}

#[test]
fn valid_request_target_forms_are_accepted() {
    let req = request("GET /slow?ms=5&a=%20:@!$'()*+,;= HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((req.path, req.query), ("/slow", Some("ms=5&a=%20:@!$'()*+,;=")));
    // absolute-form: the path is what routes (RFC 9112 §3.2.2)
    let req = request("GET http://t:8080/slow?ms=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((req.path, req.query), ("/slow", Some("ms=5")));
    let req = request("GET https://t HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((req.path, req.query), ("/", None));
    assert_eq!(request("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").path, "*");
    assert_eq!(request("CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n").path, "t:443");
}

#[test]
fn empty_or_invalid_versions_are_rejected() {
    for line in [
        "GET /",
        "GET / ",
        "GET / HTTP/2.0",
        "GET / HTTP/1.2",
        "GET / HTTP/1.10",
        "GET / http/1.1",
        "GET / HTTP/1.1 ",
        "GET / HTTP/1",
    ] {
        assert_bad(format!("{line}\r\nHost: t\r\n\r\n").as_bytes());
    }
}

#[test]
fn transfer_encoding_chunked_is_501_and_closes() {
    // We do not read chunked bodies (RFC 9110 §15.6.2: not implemented); the connection closes,
    // since nobody can tell where this body ends.
    for te in ["chunked", "CHUNKED", "gzip, chunked", "gzip,\tchunked ,"] {
        let head = format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n\r\n");
        let parsed = parse(head.as_bytes());
        assert!(matches!(parsed, Parsed::NotImplemented(_)), "{te}: {parsed:?}");
        assert_eq!(refusal_status(&parsed), "HTTP/1.1 501 Not Implemented");
    }
    // Two fields are one list: the final coding is that of the last.
    let head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(parse(head), Parsed::NotImplemented(_)));
}

#[test]
fn transfer_encoding_with_content_length_is_rejected() {
    // RFC 9112 §6.1: a server MAY reject it, and MUST close after answering: the classic
    // smuggling pair (the front reads one length, the back the other).
    let why = assert_bad(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(why, "both Transfer-Encoding and Content-Length");
    assert_bad(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
}

#[test]
fn transfer_encoding_whose_final_coding_is_not_chunked_is_rejected() {
    // RFC 9112 §6.3 item 4: the length cannot be determined; a server MUST answer 400.
    for te in ["gzip", "chunked, gzip", "", " ", ",", "xchunked", "chunked;x=1 , identity"] {
        let why = assert_bad(format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n\r\n").as_bytes());
        assert_eq!(why, "Transfer-Encoding whose final coding is not chunked", "{te}");
    }
}

#[test]
fn transfer_encoding_in_http_1_0_is_rejected() {
    // RFC 9112 §6.1: treated as faulty framing.
    assert_bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
}

#[test]
fn obs_fold_is_rejected() {
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n");
    // A fold before the first field.
    assert_bad(b"GET / HTTP/1.1\r\n Host: t\r\n\r\n");
}

#[test]
fn bare_cr_is_rejected() {
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\rX-A: a\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\rHost: t\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\n\r\r\n");
}

#[test]
fn bare_lf_is_rejected() {
    assert_eq!(assert_bad(b"GET / HTTP/1.1\nHost: t\n\n"), "line ending without CR");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\nX-A: a\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\n\n");
}

#[test]
fn invalid_header_bytes_are_rejected() {
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX(A): a\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\nX-\xc3\xa9: a\r\n\r\n");
    assert_bad(b"GET / HTTP/1.1\r\nHost: t\r\n: a\r\n\r\n");
    // obs-text in a value is allowed (RFC 9110 §5.5), and a tab.
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: \xc3\xa9\ta\r\n\r\n"), Parsed::Request(_)));
}

#[test]
fn http_1_1_without_host_is_rejected() {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with two, or with an invalid one.
    assert_eq!(assert_bad(b"GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 request without Host");
    assert_eq!(assert_bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), "more than one Host");
    assert_bad(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n");
    for host in ["a b", "a/b", "u@h", "h?", "h#"] {
        assert_bad(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    }
    // An empty Host is valid (a target without an authority), and HTTP/1.0 may omit it.
    for head in [
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        request(head);
    }
}

#[test]
fn every_refusal_closes_the_connection() {
    for parsed in [Parsed::Bad("why"), Parsed::TooLarge, Parsed::BodyTooLarge, Parsed::NotImplemented("why")] {
        let reply = String::from_utf8(parsed.rejection().unwrap()).unwrap();
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
    }
    assert_eq!(refusal_status(&Parsed::Bad("why")), "HTTP/1.1 400 Bad Request");
    assert_eq!(refusal_status(&Parsed::TooLarge), "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(Parsed::Incomplete.rejection(), None);
}

#[test]
fn heads_over_max_head_or_max_headers_are_431() {
    let mut long = String::from("GET / HTTP/1.1\r\nHost: t\r\nX-A: ");
    long.push_str(&"a".repeat(MAX_HEAD));
    assert_eq!(parse(long.as_bytes()), Parsed::TooLarge);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("X-{i}: a\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(parse(many.as_bytes()), Parsed::TooLarge);
    // One less is fine.
    let fits = many.replacen("X-0: a\r\n", "", 1);
    request(&fits);
}

#[test]
fn keep_alive_and_close_follow_the_version_and_connection() {
    assert!(!request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").close);
    assert!(request("GET / HTTP/1.1\r\nHost: t\r\nConnection: Close\r\n\r\n").close);
    // `close` wins, wherever it is in the list.
    assert!(request("GET / HTTP/1.1\r\nHost: t\r\nConnection: close, keep-alive\r\n\r\n").close);
    assert!(request("GET / HTTP/1.0\r\n\r\n").close);
    assert!(!request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
    // Leading empty lines before a request line are ignored (RFC 9112 §2.2), and counted.
    let req = request("\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((req.path, req.head_len), ("/", 29));
}

#[test]
fn a_head_is_incomplete_until_its_blank_line() {
    let whole = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    for n in 0..whole.len() {
        assert_eq!(parse(&whole[..n]), Parsed::Incomplete, "{n}");
    }
    assert!(matches!(parse(whole), Parsed::Request(Request { head_len: 27, .. })));
}
