//! What a hostile or stuck parent can make a worker hold or write. A parent that sends and never
//! reads costs the worker a bounded outbox, and past the bound it is cut off as if it were gone;
//! bad records are logged a handful of times and counted exactly; a repeated HELLO is answered
//! again, and a HANDOFF before HELLO is served.
//!
//! Memory is measured by a counting allocator: the heap's peak above a baseline taken once the
//! worker is serving. It sees everything the worker holds (its outbox, reports, held events),
//! not a counter the worker keeps about itself. The tests in this binary run one at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use baton_handoff::record::{self, Item, Kind, Record};
use baton_handoff::{Channel, RecvError, WorkerExit};
use baton_transport::Address;
use common::{fd_count, HandParent, WAIT};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn allocated(n: usize) {
    let now = LIVE.fetch_add(n, SeqCst) + n;
    PEAK.fetch_max(now, SeqCst);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counting
// beside it touches only atomics, never the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller guarantees `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), SeqCst);
            allocated(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes live now; the peak starts again from here.
fn heap_baseline() -> usize {
    let now = LIVE.load(SeqCst);
    PEAK.store(now, SeqCst);
    now
}

/// How far the heap rose above `baseline` since [`heap_baseline`].
fn heap_rise(baseline: usize) -> usize {
    PEAK.load(SeqCst).saturating_sub(baseline)
}

/// Counts the log lines baton_handoff writes, and keeps the first 64 since the test began.
struct Lines;

static LINES: AtomicUsize = AtomicUsize::new(0);
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("baton_handoff") {
            LINES.fetch_add(1, SeqCst);
            let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
            if logged.len() < 64 {
                logged.push(format!("{} {}", record.level(), record.args()));
            }
        }
    }

    fn flush(&self) {}
}

/// Hands out one counter, `baton_worker_bad_records_total`; every other metric is a no-op.
struct BadRecords;

fn bad_records() -> &'static Arc<AtomicU64> {
    static COUNT: OnceLock<Arc<AtomicU64>> = OnceLock::new();
    COUNT.get_or_init(|| Arc::new(AtomicU64::new(0)))
}

impl metrics::Recorder for BadRecords {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "baton_worker_bad_records_total" {
            metrics::Counter::from_arc(bad_records().clone())
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Installs the logger and the recorder once, and runs the tests of this binary one at a time
/// (the heap, the log and the counter are the whole process's).
fn serial() -> MutexGuard<'static, ()> {
    static INSTALL: Once = Once::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    INSTALL.call_once(|| {
        log::set_logger(&Lines).expect("the only logger");
        log::set_max_level(log::LevelFilter::Trace);
        metrics::set_global_recorder(BadRecords).expect("the only recorder");
    });
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LOGGED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    serial
}

/// The worker's bound on its outbox (`MAX_BYTES` in `worker/outbox.rs`): 64 REJECTED records of
/// 4 096 ids.
const OUTBOX_BYTES: usize = 64 * (8 + 9 * 4096);

/// Sends one packet, waiting while the worker's queue is full. An error is the worker's end
/// gone (or cut off).
fn send_waiting(ours: &Channel, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match ours.send_bytes(bytes, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the worker stopped reading its channel");
                std::thread::sleep(Duration::from_micros(200));
            }
            other => return other,
        }
    }
}

/// Reads what the worker sent us until end of file; how many records came first.
fn read_to_end(p: &mut HandParent) -> usize {
    let mut records = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        match p.ours.recv(&mut p.buf) {
            Ok(_) => records += 1,
            Err(RecvError::WouldBlock) => {
                assert!(Instant::now() < deadline, "no end of file from the worker");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(RecvError::Closed) => return records,
            Err(e) => panic!("channel: {e}"),
        }
    }
}

/// `rec`'s bytes on the wire.
fn encoded(rec: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    record::encode(rec, &mut bytes);
    bytes
}

/// A connected TCP socket whose client has already gone: a connection served with it reads end
/// of file at once and closes.
fn abandoned_connection() -> TcpStream {
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    let (sock, _) = front.accept().unwrap();
    drop(client);
    sock
}

#[test]
fn hellos_from_a_parent_that_never_reads_cost_the_worker_one_queued_ready() {
    let _serial = serial();
    let mut p = HandParent::start();
    let baseline = heap_baseline();

    let mut hello = Vec::new();
    record::encode(&Record::Hello { worker: 0 }, &mut hello);
    for _ in 0..100_000 {
        send_waiting(&p.ours, &hello, &[]).expect("the worker keeps its channel open");
    }
    // A handoff behind them, served: every HELLO before it has been read and answered.
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    let client = std::thread::spawn(move || common::Client::connect(addr).pid);
    let (sock, peer) = front.accept().unwrap();
    send_waiting(&p.ours, &encoded(&common::handoff(1, peer, addr)), &[sock.as_fd()]).unwrap();
    drop(sock);
    assert_eq!(client.join().unwrap(), std::process::id(), "served after 100 000 HELLOs");

    // Unbounded, 100 000 READYs queued cost some 4 MB; coalesced, one.
    let rise = heap_rise(baseline);
    assert!(rise < 1 << 20, "the heap rose {rise} bytes for HELLOs nobody read");
    assert_eq!(p.worker.worker.wait_timeout(Duration::from_millis(100)), None, "not cut off: its outbox stayed small");

    // Reading at last: the READYs the kernel's queue held, then one for all the rest, then
    // the handoff's answer.
    let mut readies = 0;
    p.recv_until(|r| {
        readies += usize::from(matches!(r, Record::Ready { .. }));
        *r == Record::Adopted(vec![1])
    });
    // (A few hundred fit the kernel's queue with default buffers; unbounded, all 100 000 come.)
    assert!(readies > 0 && readies < 10_000, "{readies} READYs for 100 000 HELLOs");

    drop(p.ours);
    assert_eq!(p.worker.worker.wait_timeout(WAIT), Some(WorkerExit::ParentGone));
    p.worker.stop();
}

/// Sends HANDOFF records of 253 items, every descriptor a copy of `sock`, until the worker
/// cuts the channel (true) or `most` items have gone (false). Returns that and the items sent.
fn handoffs_until_cut_off(p: &HandParent, sock: &TcpStream, most: u64) -> (bool, u64) {
    let peer = Address::Inet(sock.peer_addr().unwrap());
    let local = Address::Inet(sock.local_addr().unwrap());
    let fds = vec![sock.as_fd(); record::MAX_FDS];
    let mut sent = 0u64;
    while sent < most {
        let items = (sent..sent + record::MAX_FDS as u64)
            .map(|id| Item {
                id,
                kind: Kind::Connection,
                tag: 0,
                peer: peer.clone(),
                local: local.clone(),
                key: None,
                prelude: Vec::new(),
                ext: Vec::new(),
            })
            .collect();
        if let Err(e) = send_waiting(&p.ours, &encoded(&Record::Handoff(items)), &fds) {
            assert!(
                matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
                "the worker shut its channel down: {e}"
            );
            return (true, sent);
        }
        sent += record::MAX_FDS as u64;
    }
    (false, sent)
}

/// Log lines since the test began that contain `text`.
fn lines_with(text: &str) -> usize {
    LOGGED.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|l| l.contains(text)).count()
}

#[test]
fn a_draining_worker_whose_parent_never_reads_holds_a_bounded_outbox_and_cuts_the_parent_off() {
    let _serial = serial();
    let mut p = HandParent::start();
    // One connection stays open, so the draining worker does not exit before the test is done.
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    let (served, peer) = front.accept().unwrap();
    p.send(&common::handoff(1, peer, front.local_addr().unwrap()), &[served.as_fd()]);
    drop(served);
    assert_eq!(p.recv_until(|r| matches!(r, Record::Adopted(_))), Record::Adopted(vec![1]));
    p.send(&Record::Drain { deadline_ms: 60_000 }, &[]);
    let fds_before = fd_count(None);
    let baseline = heap_baseline();

    // Real sockets, refused (draining) by the worker alone: each closed at once and owed to
    // the parent as a REJECTED id, 9 bytes.
    let sock = abandoned_connection();
    let (cut_off, sent) = handoffs_until_cut_off(&p, &sock, 1_000_000);
    assert!(cut_off, "the worker went on answering a parent that read nothing ({sent} handoffs)");
    // The outbox's bound is 262 144 REJECTED ids in full records, at worst half as many.
    assert!(sent >= 131_000, "cut off after {sent} handoffs: before its outbox was full");
    // The outbox's 2.25 MiB, plus what one turn of reading gathers before it is flushed (256
    // records of 253 ids, 16 bytes each in memory: 1 MiB), plus records being encoded and
    // merged. Unbounded, it grows with every handoff.
    let rise = heap_rise(baseline);
    assert!(rise < OUTBOX_BYTES + (2 << 20), "the heap rose {rise} bytes for a parent that read nothing");
    assert_eq!(lines_with("the parent reads nothing"), 1, "one line says why");

    // Cut off as on end of file: the channel shut down (a parent still there reads what the
    // kernel held, then end of file) while the open connection is finished.
    assert!(read_to_end(&mut p) > 0, "the answers the kernel's queue held");
    assert_eq!(p.worker.worker.wait_timeout(Duration::from_millis(200)), None, "still finishing its connection");
    drop(client);
    assert_eq!(p.worker.worker.wait_timeout(WAIT), Some(WorkerExit::ParentGone), "orphaned, not hung");
    drop(sock);
    common::wait_until("descriptors back to baseline", || fd_count(None) <= fds_before);
    p.worker.stop();
}

#[test]
fn a_parent_that_never_reads_is_cut_off_while_the_connections_it_sent_come_and_go() {
    let _serial = serial();
    let p = HandParent::start();
    let fds_before = fd_count(None);

    // Every descriptor a copy of one socket whose client is gone: each is adopted, reads end of
    // file and closes, and is owed to the parent as an ADOPTED and a CLOSED id.
    let sock = abandoned_connection();
    let (cut_off, sent) = handoffs_until_cut_off(&p, &sock, 500_000);
    assert!(cut_off, "the worker went on answering a parent that read nothing ({sent} handoffs)");
    // 2.25 MiB at 16 bytes a connection, in records at worst half full.
    assert!(sent >= 70_000, "cut off after {sent} handoffs: before its outbox was full");
    assert_eq!(p.worker.worker.wait_timeout(WAIT), Some(WorkerExit::ParentGone), "orphaned, not hung");
    assert_eq!(lines_with("the parent reads nothing"), 1, "one line says why");
    drop(sock);
    common::wait_until("descriptors back to baseline", || fd_count(None) <= fds_before);
    p.worker.stop();
}

#[test]
fn ten_thousand_malformed_records_are_logged_a_handful_of_times_and_counted_exactly() {
    let _serial = serial();
    let mut p = HandParent::start();
    p.check_still_serving(1);
    let lines_before = LINES.load(SeqCst);
    let counted_before = bad_records().load(SeqCst);

    let mut wrong_version = encoded(&Record::Hello { worker: 0 });
    wrong_version[2] = 99;
    let worker_record = encoded(&Record::Adopted(vec![1]));
    let kinds: [&[u8]; 4] = [b"\x00\x01garbage that is no record", &wrong_version, b"", &worker_record];
    for i in 0..10_000 {
        send_waiting(&p.ours, kinds[i % kinds.len()], &[]).unwrap();
    }
    // Served in order: by the time this is adopted, every bad record has been handled.
    p.check_still_serving(2);

    let counted = bad_records().load(SeqCst) - counted_before;
    assert_eq!(counted, 10_000, "every bad record is counted");
    let lines = LINES.load(SeqCst) - lines_before;
    let logged = LOGGED.lock().unwrap().clone();
    assert!((1..=6).contains(&lines), "{lines} log lines for 10 000 bad records: {logged:#?}");
    p.worker.stop();
}

#[test]
fn a_second_hello_is_answered_with_ready_again() {
    let _serial = serial();
    let mut p = HandParent::start();
    p.send(&Record::Hello { worker: 0 }, &[]);
    let ready = p.recv_until(|r| matches!(r, Record::Ready { .. }));
    assert_eq!(ready, Record::Ready { pid: std::process::id() });
    p.check_still_serving(1);
    p.worker.stop();
}

#[test]
fn a_handoff_before_hello_is_served() {
    let _serial = serial();
    let mut p = HandParent::connect();
    // The parent's rule is to send none before READY; the worker does not insist.
    p.check_still_serving(1);
    p.send(&Record::Hello { worker: 0 }, &[]);
    assert_eq!(p.recv_until(|r| matches!(r, Record::Ready { .. })), Record::Ready { pid: std::process::id() });
    p.worker.stop();
}
