//! Steered listening: the kernel places each new connection, and the parent sets the odds.
//!
//! # The mechanism
//!
//! A *steered* listener is a `SO_REUSEPORT` group of listening sockets on one address, one
//! socket per worker slot. The parent creates them all and keeps them all; worker *i* gets a
//! copy of socket *i* and accepts from it, as in the shared-listener mode, so a connection
//! costs what it costs under plain `SO_REUSEPORT`: no handoff, no second process.
//!
//! Plain `SO_REUSEPORT` spreads connections by a hash of their addresses, blind to load. Here the
//! parent attaches a classic BPF program to the group (`SO_ATTACH_REUSEPORT_CBPF`, which needs
//! no privileges) that draws a random number for each new connection and picks a socket by
//! weight ([`program`]). The weights come from what the workers report ([`weights`]): a worker
//! that is not ready, has not said it accepts on its socket (ADOPTED for the share, in this
//! incarnation), or says it is busy while another is free, weighs nothing; the others weigh
//! more the less they hold. Whenever the weights change the parent attaches a new program
//! (a system call of about 10 µs).
//!
//! # Nothing queued is lost
//!
//! The kernel keeps a socket's accept queue as long as any process holds the socket. The parent
//! holds every socket of the group, so a worker that dies leaves its queue intact (plain
//! `SO_REUSEPORT` resets it: each process owns its socket), and the group's order, which is what
//! the program's answer indexes, never changes. While a slot's worker is down, starting or
//! draining, and while it says it is busy and another worker is free, the parent accepts from
//! that slot's socket itself and hands each connection to another worker through the ordinary
//! handoff path ([`parent_accepts`]). A restarted worker gets its socket back.
//!
//! # Reaction time and limits
//!
//! - A worker's busy report reaches the parent at once (the worker sends it from the thread
//!   that became busy, see `Status::busy`); load figures come with every report, at least
//!   every 50 ms. The program changes within the parent's next turn.
//! - Connections that were already in a worker's queue when it became busy stay there until
//!   the parent or the worker accepts them; the parent does so at once if another worker is
//!   free, at the price of a handoff each.
//! - A hung worker that has not said it is busy keeps its weight until the parent declares it
//!   lost (the adoption deadline); then the parent serves its queue.
//! - The group's members are bound to one address by one user: another process of the same
//!   user binding a `SO_REUSEPORT` socket to the address would join the group and take a share
//!   (the program's indexes would still name ours first). A socket from systemd needs
//!   `ReusePort=yes` so that the parent can add the others.
//! - A takeover keeps the mode: the old parent offers the group's members by name
//!   (`steered:TAG:i`), and a successor takes them with `Takeover::steered`. A successor that
//!   asks for a plain listener on the group's address instead cannot bind it (the members hold
//!   it without a plain socket among them); it fails on probation and the old parent, which
//!   kept everything, serves on. Changing modes is a restart, not an upgrade.
//! - The group has one member per spawned worker slot. Workers that connect by name
//!   (`Parent::accept_workers`) get none; they receive what the parent hands over (the queues
//!   of absent or busy slots).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// What the weights depend on, for one worker slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotView {
    /// Takes work now.
    pub(crate) ready: bool,
    /// Said it is busy (a handler blocks its loop, or heavy work is under way).
    pub(crate) busy: bool,
    /// Connections it holds and work queued in it.
    pub(crate) load: u32,
}

/// Levels a weight is rounded to (relative to the least loaded worker's): fewer levels, fewer
/// programs attached as loads wander.
const LEVELS: u32 = 16;

/// The weight of each socket of a group of `sockets` (socket *i* belongs to slot *i*; sockets
/// past the last slot weigh nothing). All zero only when `sockets` is 0.
///
/// - Candidates are the ready slots that are not busy; if every ready slot is busy, every ready
///   slot; if none is ready, every slot's socket (the parent accepts from them all, see
///   [`parent_accepts`]).
/// - A candidate weighs `LEVELS × (1 + least load) / (1 + its load)`, rounded, at least 1.
pub(crate) fn weights(slots: &[SlotView], sockets: usize) -> Vec<u32> {
    let mut w = vec![0u32; sockets];
    let owned = slots.len().min(sockets);
    let free: Vec<usize> = (0..owned).filter(|&i| slots[i].ready && !slots[i].busy).collect();
    let candidates: Vec<usize> = if !free.is_empty() {
        free
    } else {
        let ready: Vec<usize> = (0..owned).filter(|&i| slots[i].ready).collect();
        if ready.is_empty() {
            (0..sockets).collect()
        } else {
            ready
        }
    };
    let least = candidates.iter().map(|&i| slots.get(i).map_or(0, |s| s.load)).min().unwrap_or(0);
    for &i in &candidates {
        let load = slots.get(i).map_or(least, |s| s.load);
        // LEVELS × (1 + least) / (1 + load), rounded to the nearest.
        let denominator = 1 + u64::from(load);
        let level = (2 * u64::from(LEVELS) * (1 + u64::from(least)) + denominator) / (2 * denominator);
        w[i] = u32::try_from(level).unwrap_or(LEVELS).max(1);
    }
    w
}

/// Whether the parent should accept from socket `i` itself: its slot's worker is not ready, or
/// is busy while another ready worker is not.
pub(crate) fn parent_accepts(slots: &[SlotView], i: usize) -> bool {
    match slots.get(i) {
        None => true,
        Some(s) if !s.ready => true,
        Some(s) => s.busy && slots.iter().any(|o| o.ready && !o.busy),
    }
}

/// One classic BPF instruction (`struct sock_filter`).
pub(crate) type Instruction = libc::sock_filter;

// Classic BPF opcodes (linux/bpf_common.h) and the ancillary load of a random number
// (linux/filter.h); the libc crate does not name them all.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_RANDOM: i32 = 56;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// The program that picks socket *i* with probability `weights[i] / sum`: it loads a random
/// 32-bit number and compares it with the cumulative thresholds, returning the index of the
/// first one it is under.
///
/// ```text
///   ld  rand
///   jge #t0, skip, 0      ; rand < t0: socket i0
///   ret #i0
///   jge #t1, skip, 0
///   ret #i1
///   ...
///   ret #last
/// ```
///
/// Sockets of weight 0 never appear. All weights 0 (an empty group): a program that returns
/// an index past the group, which makes the kernel fall back to its hash.
pub(crate) fn program(weights: &[u32]) -> Vec<Instruction> {
    let chosen: Vec<(u32, u32)> = weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(i, &w)| (u32::try_from(i).unwrap_or(u32::MAX), w))
        .collect();
    let Some(&(last, _)) = chosen.last() else {
        return vec![ins(BPF_RET_K, 0, 0, u32::MAX)];
    };
    if chosen.len() == 1 {
        return vec![ins(BPF_RET_K, 0, 0, last)];
    }
    let total: u64 = chosen.iter().map(|&(_, w)| u64::from(w)).sum();
    let mut prog = vec![ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) as u32)];
    let mut cumulative = 0u64;
    for &(index, w) in &chosen[..chosen.len() - 1] {
        cumulative += u64::from(w);
        let threshold = u32::try_from((cumulative << 32) / total).unwrap_or(u32::MAX);
        prog.push(ins(BPF_JGE_K, 1, 0, threshold));
        prog.push(ins(BPF_RET_K, 0, 0, index));
    }
    prog.push(ins(BPF_RET_K, 0, 0, last));
    prog
}

/// Attaches `program` to the `SO_REUSEPORT` group of `socket` (any member: the program is the
/// group's), replacing the one before.
///
/// # Errors
///
/// What `setsockopt` says: `EINVAL` for a socket in no group or a program the kernel refuses.
pub(crate) fn attach(socket: BorrowedFd<'_>, program: &[Instruction]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the
    // instructions and keeps no pointer into our memory. The length given is `fprog`'s size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How the members of a group listen.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupOptions {
    pub(crate) backlog: i32,
    pub(crate) defer_accept: Option<Duration>,
}

/// Completes a group to `n` members: `sockets` (in group order, possibly none) and new ones
/// bound to the same address (or to `addr` when there are none). Returns the members in group
/// order and their address.
///
/// # Errors
///
/// A given socket that is not a listening TCP socket with `SO_REUSEPORT` (`InvalidInput`), or
/// what `socket`, `bind` or `listen` say for a new one (`EADDRINUSE`: the address is taken by a
/// socket outside the group, or by another user).
pub(crate) fn complete_group(
    mut sockets: Vec<OwnedFd>,
    addr: SocketAddr,
    n: usize,
    options: GroupOptions,
) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let mut addr = addr;
    if let Some(first) = sockets.first() {
        for s in &sockets {
            let listening = sockopt::socket_type(s).ok() == Some(SocketType::STREAM)
                && sockopt::socket_acceptconn(s).unwrap_or(false);
            if !listening || !sockopt::socket_reuseport(s).unwrap_or(false) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a steered listener needs listening TCP sockets with SO_REUSEPORT (systemd: ReusePort=yes)",
                ));
            }
        }
        addr = SocketAddr::try_from(rustix::net::getsockname(first)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a steered listener must be TCP"))?;
    }
    while sockets.len() < n {
        let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
        let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        sockopt::set_socket_reuseport(&fd, true)?;
        rustix::net::bind(&fd, &addr)?;
        if let Some(d) = options.defer_accept {
            baton_transport::set_defer_accept(&fd, d)?;
        }
        rustix::net::listen(&fd, options.backlog)?;
        if addr.port() == 0 {
            // The first member chose the port; the others join it there.
            addr = SocketAddr::try_from(rustix::net::getsockname(&fd)?).map_err(io::Error::other)?;
        }
        sockets.push(fd);
    }
    Ok((sockets, addr))
}

/// Duplicates a member for the parent's own accepting (the original stays in the group).
pub(crate) fn duplicate(socket: &impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(socket, 0)?)
}

/// A steered group, as the parent's actor keeps it: its members are shared listeners
/// `first..first + len` of the actor (which also gives each to its slot's workers and to a
/// successor).
pub(crate) struct Steered {
    pub(crate) tag: u32,
    pub(crate) first: usize,
    pub(crate) len: usize,
    /// The parent's own accepting on each member (on a duplicate), made when first needed.
    pub(crate) own: Vec<Option<baton_transport::Listener>>,
    /// Whether `own[i]` accepts now.
    pub(crate) accepting: Vec<bool>,
    /// The incarnation of slot *i* that said it accepts on member *i* (0: none yet).
    pub(crate) serving: Vec<u64>,
    /// The weights of the program attached last; `None` before the first or after another
    /// process (a successor) may have attached its own.
    pub(crate) attached: Option<Vec<u32>>,
    /// When to attach again even if the weights did not change: during a takeover both
    /// parents hold the group, and the other's last program may be the one in place.
    pub(crate) refresh_at: std::time::Instant,
}

/// How often a steering parent attaches its program again, changed or not.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

impl Steered {
    pub(crate) fn new(tag: u32, first: usize, len: usize) -> Steered {
        Steered {
            tag,
            first,
            len,
            own: (0..len).map(|_| None).collect(),
            accepting: vec![false; len],
            serving: vec![0; len],
            attached: None,
            refresh_at: std::time::Instant::now(),
        }
    }

    /// Whether `listener` is one of the parent's own on this group.
    pub(crate) fn owns(&self, listener: baton_transport::ListenerId) -> bool {
        self.own.iter().flatten().any(|l| l.id() == listener)
    }

    /// Stops the parent's own accepting for good (the members stay wherever they are held).
    pub(crate) fn close(&mut self) {
        for l in self.own.iter_mut().filter_map(Option::take) {
            l.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF that [`program`] emits, for one random draw.
    fn run(prog: &[Instruction], random: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    assert_eq!(i.k, (SKF_AD_OFF + SKF_AD_RANDOM) as u32);
                    a = random;
                    pc += 1;
                }
                BPF_JGE_K => pc += 1 + usize::from(if a >= i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// The share of the 32-bit range each index gets.
    fn shares(prog: &[Instruction], n: usize) -> Vec<f64> {
        let mut counts = vec![0u64; n + 1];
        let steps = 1u64 << 16;
        for s in 0..steps {
            let r = u32::try_from((s << 16) | 0x8000).unwrap();
            let i = run(prog, r) as usize;
            counts[i.min(n)] += 1;
        }
        counts.iter().map(|&c| c as f64 / steps as f64).collect()
    }

    #[test]
    fn a_program_picks_each_socket_in_proportion_to_its_weight() {
        for weights in [vec![1, 1], vec![50, 0, 50], vec![20, 30, 50], vec![0, 0, 7], vec![16, 1, 5, 9]] {
            let prog = program(&weights);
            let total: u32 = weights.iter().sum();
            let got = shares(&prog, weights.len());
            for (i, &w) in weights.iter().enumerate() {
                let want = f64::from(w) / f64::from(total);
                assert!((got[i] - want).abs() < 1e-3, "{weights:?}: socket {i} got {} want {want}", got[i]);
            }
            assert_eq!(got[weights.len()], 0.0, "{weights:?}: an index past the group");
        }
    }

    #[test]
    fn an_empty_group_falls_back_to_the_kernels_hash() {
        assert_eq!(run(&program(&[0, 0]), 7), u32::MAX);
    }

    #[test]
    fn busy_and_absent_workers_weigh_nothing_while_another_is_free() {
        let v = |ready, busy, load| SlotView { ready, busy, load };
        assert_eq!(weights(&[v(true, false, 0), v(true, true, 0), v(false, false, 0)], 3), vec![16, 0, 0]);
        // Every ready worker busy: spread over them.
        assert_eq!(weights(&[v(true, true, 3), v(true, true, 3), v(false, false, 0)], 3), vec![16, 16, 0]);
        // Nobody ready: every socket (the parent accepts from all of them).
        assert_eq!(weights(&[v(false, false, 0), v(false, false, 0)], 2), vec![16, 16]);
        // Sockets past the last slot (a successor with fewer workers) weigh nothing.
        assert_eq!(weights(&[v(true, false, 0)], 3), vec![16, 0, 0]);
    }

    #[test]
    fn a_worker_holding_more_weighs_less() {
        let v = |load| SlotView { ready: true, busy: false, load };
        assert_eq!(weights(&[v(0), v(1), v(3)], 3), vec![16, 8, 4]);
        assert_eq!(weights(&[v(9), v(19)], 2), vec![16, 8]);
        // Never zero for a free worker, however loaded.
        assert_eq!(weights(&[v(0), v(1_000_000)], 2), vec![16, 1]);
    }

    #[test]
    fn the_parent_accepts_for_absent_workers_and_for_busy_ones_when_another_is_free() {
        let v = |ready, busy| SlotView { ready, busy, load: 0 };
        let slots = [v(true, false), v(true, true), v(false, false)];
        assert_eq!((0..4).map(|i| parent_accepts(&slots, i)).collect::<Vec<_>>(), vec![false, true, true, true]);
        let all_busy = [v(true, true), v(true, true)];
        assert!(!parent_accepts(&all_busy, 0) && !parent_accepts(&all_busy, 1));
    }

    /// The kernel takes the program and steers by it (three members, weights 0/1/0: every
    /// connection to the middle one).
    #[test]
    fn the_kernel_steers_a_group_by_the_program() {
        let options = GroupOptions { backlog: 64, defer_accept: None };
        let (group, addr) = complete_group(Vec::new(), "127.0.0.1:0".parse().unwrap(), 3, options).unwrap();
        attach(group[0].as_fd(), &program(&[0, 1, 0])).unwrap();
        let clients: Vec<_> = (0..20).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let mut got = [0usize; 3];
        for (i, s) in group.iter().enumerate() {
            rustix::io::ioctl_fionbio(s, true).unwrap();
            while rustix::net::accept(s).is_ok() {
                got[i] += 1;
            }
        }
        assert_eq!(got, [0, 20, 0]);
        drop(clients);
        // Joining it needs SO_REUSEPORT on the given socket.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = complete_group(vec![plain.into()], addr, 2, options).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
