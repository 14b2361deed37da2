//! The `route_by_key` example: same key, same worker; the key line arrives first as prelude;
//! a silent client is closed at the deadline and an over-long line refused, without holding up
//! anyone else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("examples").join("route_by_key")
}

fn lines(addr: SocketAddr, send: &[u8], n: usize) -> Vec<String> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    r.get_mut().write_all(send).unwrap();
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l
        })
        .collect()
}

#[test]
fn keys_stick_to_workers_and_slow_or_oversized_clients_are_dealt_with() {
    let mut child = Command::new(binary())
        .process_group(0)
        .args(["--listen", "127.0.0.1:0", "--line-timeout-ms", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start route_by_key");
    // If an assertion fails, the example and its workers go too.
    struct GroupGuard(u32);
    impl Drop for GroupGuard {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let _group = GroupGuard(child.id());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr: SocketAddr = first.trim().strip_prefix("listening on ").expect("ready line").parse().unwrap();

    // A silent client is connected first and must not hold up the others.
    let silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();

    let a = lines(addr, b"alpha\nhi\n", 2);
    let pid = a[0].split(':').next().unwrap().to_string();
    assert_eq!(a, [format!("{pid}: alpha\n"), format!("{pid}: hi\n")], "the key line first, then the rest");
    for _ in 0..5 {
        let again = lines(addr, b"alpha\nagain\n", 2);
        assert!(again[0].starts_with(&pid), "same key, same worker: {again:?} vs {pid}");
    }
    let pids: std::collections::HashSet<String> = (0..20)
        .map(|i| lines(addr, format!("key-{i}\n").as_bytes(), 1)[0].split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(pids.len(), 2, "different keys spread over both workers");

    let refused = lines(addr, &[b'x'; 300], 1);
    assert_eq!(refused, ["ERR line too long\n"]);

    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = (&silent).read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "the silent client is closed at the deadline");

    drop(child.stdin.take()); // end of stdin: the example shuts down
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "route_by_key did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
