//! PROTOCOL.md's worked examples are what the encoder writes, byte for byte: each hex dump in
//! the document is regenerated here from the record it describes and compared. Run with
//! `BATON_BLESS=1` to write the regenerated dumps into the document instead.

use std::net::SocketAddr;

use baton_handoff::record::{self, Item, Kind, Record};
use baton_transport::Address;

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../PROTOCOL.md")
}

/// A hex dump as the document writes it: 16 bytes a line, offset first.
fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, line)| {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, hex.join(" "))
        })
        .collect()
}

fn encoded(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode(r, &mut out);
    assert_eq!(out.len(), record::encoded_len(r));
    out
}

/// The dump in the first fenced block after `heading`.
fn block_after<'a>(doc: &'a str, heading: &str) -> (usize, &'a str) {
    let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading:?} in PROTOCOL.md"));
    let open = at + doc[at..].find("```\n").expect("a fenced block") + 4;
    let close = open + doc[open..].find("```").expect("its end");
    (open, &doc[open..close])
}

fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let addr = |s: &str| Address::Inet(s.parse::<SocketAddr>().unwrap());
    let item = Item {
        id: 1,
        kind: Kind::Connection,
        tag: 0,
        peer: addr("127.0.0.1:40000"),
        local: addr("127.0.0.1:8080"),
        key: None,
        prelude: b"GET".to_vec(),
        ext: Vec::new(),
    };
    vec![
        ("### 14.1 HELLO for worker 3", encoded(&Record::Hello { worker: 3 })),
        ("### 14.2 HANDOFF with one item", encoded(&Record::Handoff(vec![item]))),
    ]
}

#[test]
fn the_worked_examples_are_what_the_encoder_writes() {
    let path = doc_path();
    let mut doc = std::fs::read_to_string(&path).expect("PROTOCOL.md");
    let bless = std::env::var_os("BATON_BLESS").is_some();
    for (heading, bytes) in examples() {
        let (at, block) = block_after(&doc, heading);
        let want = dump(&bytes);
        if bless {
            let len = block.len();
            doc.replace_range(at..at + len, &want);
        } else {
            assert_eq!(block, want, "{heading}: PROTOCOL.md says\n{block}\nthe encoder writes\n{want}");
        }
    }
    if bless {
        std::fs::write(&path, doc).expect("write PROTOCOL.md");
    }
}

#[test]
fn the_takeover_records_are_as_written() {
    // Lines are wrapped anywhere: compare with the line breaks as spaces.
    let doc = std::fs::read_to_string(doc_path()).expect("PROTOCOL.md").replace('\n', " ");
    for (name, r) in [("TAKE", Record::Take), ("SERVING", Record::Serving), ("RELEASED", Record::Released)] {
        let hex: Vec<String> = encoded(&r).iter().map(|b| format!("{b:02x}")).collect();
        let written = format!("{name} `{}`", hex.join(" "));
        assert!(doc.contains(&written), "PROTOCOL.md should say {written}");
    }
}

#[test]
fn every_record_size_in_the_table_is_the_encoders() {
    // §4's table: fixed total sizes of the records without items or ids.
    let doc = std::fs::read_to_string(doc_path()).expect("PROTOCOL.md");
    for (row, r) in [
        ("| `0x01` | HELLO |", Record::Hello { worker: 0 }),
        ("| `0x03` | DRAIN |", Record::Drain { deadline_ms: 0 }),
        ("| `0x04` | STOP |", Record::Stop),
        ("| `0x81` | READY |", Record::Ready { pid: 0 }),
        ("| `0x85` | LOAD |", Record::Load(Default::default())),
    ] {
        let line = doc.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row}"));
        let total = line.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert_eq!(total, encoded(&r).len().to_string(), "{row}");
    }
}
