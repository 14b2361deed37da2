//! Out of descriptors (EMFILE): the listener closes waiting clients instead of leaving them
//! hanging, does not spin a core, and serves again once descriptors free up. Alone in its
//! binary because it lowers the process's RLIMIT_NOFILE.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use baton_runtime::{Actor, Context, Runtime};
use baton_transport::*;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

const WAIT: Duration = Duration::from_secs(5);

struct Greeter;
impl Actor for Greeter {
    type Message = Accepted;
    fn handle(&mut self, _ctx: &mut Context<Self>, acc: Accepted) {
        if let Stream::Tcp(mut s) = acc.stream {
            let _ = s.write_all(b"!");
        }
    }
}

/// Reads process CPU time through a file opened beforehand: opening one while out of
/// descriptors would fail.
fn cpu_ticks(stat_file: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let n = stat_file.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..n]).into_owned();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_closes_clients_backs_off_and_recovers() {
    let rt = Runtime::new();
    let reactor = Reactor::start().unwrap();
    let owner = rt.spawn(Greeter);
    let l = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), ListenOptions::default(), owner.recipient()).unwrap();
    let Address::Inet(addr) = *l.local_addr() else { panic!("inet listener") };

    // Clients wait in the backlog while the listener is paused.
    l.pause();
    let mut waiting: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for c in &waiting {
        c.set_read_timeout(Some(WAIT)).unwrap();
    }

    let stat_file = std::fs::File::open("/proc/self/stat").unwrap();
    // Fill the descriptor table up to a lowered limit.
    let original = getrlimit(Resource::Nofile);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::Nofile, Rlimit { current: Some(open + 16), maximum: original.maximum }).unwrap();
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }

    l.resume();
    // Every waiting client is closed (EOF or reset), none hangs until the timeout.
    for c in &mut waiting {
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("a client was not closed: {other:?}"),
        }
    }
    // Still out of descriptors: the listener backs off instead of spinning on accept.
    let before = cpu_ticks(&stat_file);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let used = cpu_ticks(&stat_file) - before;
    assert!(used <= 10, "{used} ticks of CPU in 0.5 s while out of descriptors: spinning");

    // Descriptors free up: service resumes by itself.
    drop(filler);
    drop(waiting);
    setrlimit(Resource::Nofile, original).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).expect("service did not resume");
    assert_eq!(&b, b"!");
    reactor.stop();
    rt.shutdown(WAIT).unwrap();
}
