//! The `pool_answers` example: answers written by pool actors all reach a client that
//! half-closes right after its last request.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{Example, WAIT};

/// Trial division, as the example counts.
fn primes_up_to(n: u32) -> u32 {
    (2..=n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u32
}

#[test]
fn every_answer_arrives_before_the_close_when_clients_half_close_after_their_last_request() {
    let example = Example::start("pool_answers", &["--listen", "127.0.0.1:0"]);
    let addr = example.addr;
    let clients: Vec<_> = (0..20u32)
        .map(|c| {
            std::thread::spawn(move || {
                let numbers: Vec<u32> = (0..100).map(|i| 1000 + c * 100 + i).collect();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let request: String = numbers.iter().map(|n| format!("{n}\n")).collect();
                s.write_all(request.as_bytes()).unwrap();
                // The last request is out: half-close at once, as `nc -N` or an HTTP/1.0 client
                // does. Before (an owner closing on ReadClosed while another actor answers),
                // most of the answers were lost here.
                s.shutdown(Shutdown::Write).unwrap();
                let mut answers = String::new();
                s.read_to_string(&mut answers).expect("every answer, then the server's close");
                let expected: String = numbers.iter().map(|&n| format!("{n} {}\n", primes_up_to(n))).collect();
                assert_eq!(answers, expected, "client {c}: every answer, in order");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
}

#[test]
fn a_last_line_without_a_newline_is_answered_and_garbage_is_told_so() {
    let example = Example::start("pool_answers", &["--listen", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(example.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"ten\n100").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answers = String::new();
    s.read_to_string(&mut answers).unwrap();
    assert_eq!(answers, "ten ERR expected a number up to 1000000\n100 25\n");
}
