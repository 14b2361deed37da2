//! Running an example as a user would: its binary, started in a process group of its own (so
//! it and any worker processes go when the test ends, however it ends), ready once it prints
//! `listening on ADDR`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running example; dropping it kills its process group.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Example {
    /// Starts `examples/NAME` with `args` and waits for its ready line. Its standard input is a
    /// pipe: examples that serve until it closes stop when this is dropped.
    pub fn start(name: &str, args: &[&str]) -> Example {
        let exe = std::env::current_exe().unwrap();
        let binary = exe.parent().and_then(|d| d.parent()).unwrap().join("examples").join(name);
        let mut child = Command::new(binary)
            .process_group(0)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"))
            .parse()
            .unwrap();
        Example { child, addr }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}
