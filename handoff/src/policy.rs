//! Placement: which worker gets the next socket.
//!
//! The dispatcher offers a policy only the workers that can take a socket now (ready, under
//! their in-flight bound, channel not backed up), each with the load it knows: handoffs sent
//! and not yet adopted, connections the worker reported open, and the work it reported queued.
//! Counting the not-yet-adopted ones matters: a burst of accepts would otherwise all go to the
//! worker that looked idle when the burst began.

/// What the dispatcher knows about one candidate worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The worker's slot (stable while the worker lives; a restarted worker keeps its slot).
    pub slot: usize,
    /// Handoffs sent (or queued to send) and not yet adopted or rejected.
    pub in_flight: u32,
    /// Connections the worker owns.
    pub open: u32,
    /// Work the worker reported queued.
    pub queued: u32,
    /// Handlers the worker reported busy with heavy work: a socket placed there waits.
    pub busy: u32,
}

impl Candidate {
    /// The load the built-in policies compare: in flight + open + queued.
    pub fn load(&self) -> u64 {
        u64::from(self.in_flight) + u64::from(self.open) + u64::from(self.queued)
    }
}

/// Chooses a worker for a socket. Implement it for a placement of your own.
pub trait Policy: Send + 'static {
    /// Returns the index (into `candidates`, never empty) of the worker to use. `key` is the
    /// socket's routing key, when it has one. An index out of range counts as 0.
    fn choose(&mut self, candidates: &[Candidate], key: Option<&[u8]>) -> usize;
}

/// The least loaded worker, avoiding workers that report a busy handler; ties broken in
/// rotation so equal workers share evenly. The default.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    turn: usize,
}

impl Policy for LeastLoaded {
    fn choose(&mut self, candidates: &[Candidate], _key: Option<&[u8]>) -> usize {
        self.turn = self.turn.wrapping_add(1);
        let n = candidates.len();
        let start = self.turn % n;
        // A worker stuck in a heavy handler only when every worker is.
        (0..n).map(|i| (start + i) % n).min_by_key(|&i| (candidates[i].busy > 0, candidates[i].load())).unwrap_or(0)
    }
}

/// Each worker in turn, regardless of load (what Node's `cluster` does).
#[derive(Debug, Default)]
pub struct RoundRobin {
    turn: usize,
}

impl Policy for RoundRobin {
    fn choose(&mut self, candidates: &[Candidate], _key: Option<&[u8]>) -> usize {
        // Rotate by slot, not by index, so a worker that drops out for a moment does not
        // shift everyone else's turn.
        self.turn = self.turn.wrapping_add(1);
        let next = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.slot >= self.turn)
            .min_by_key(|(_, c)| c.slot)
            .or_else(|| candidates.iter().enumerate().min_by_key(|(_, c)| c.slot));
        let (i, c) = next.expect("candidates is never empty");
        self.turn = c.slot;
        i
    }
}

/// Power of two choices: pick two workers at random, use the less loaded one. Nearly as good as
/// least-loaded, and robust when load reports lag.
#[derive(Debug)]
pub struct PowerOfTwo {
    rng: u64,
}

impl Default for PowerOfTwo {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64);
        PowerOfTwo { rng: seed | 1 }
    }
}

impl PowerOfTwo {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, and good enough to spread choices.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Policy for PowerOfTwo {
    fn choose(&mut self, candidates: &[Candidate], _key: Option<&[u8]>) -> usize {
        let n = candidates.len() as u64;
        let a = (self.next() % n) as usize;
        let b = (self.next() % n) as usize;
        let key = |c: &Candidate| (c.busy > 0, c.load());
        if key(&candidates[b]) < key(&candidates[a]) {
            b
        } else {
            a
        }
    }
}

/// The same routing key always goes to the same worker while that worker can take it
/// (rendezvous hashing over worker slots: when a worker is missing, only its keys move).
/// Sockets without a key fall back to least-loaded.
#[derive(Debug, Default)]
pub struct Sticky {
    fallback: LeastLoaded,
}

impl Policy for Sticky {
    fn choose(&mut self, candidates: &[Candidate], key: Option<&[u8]>) -> usize {
        let Some(key) = key else {
            return self.fallback.choose(candidates, None);
        };
        candidates.iter().enumerate().max_by_key(|(_, c)| fnv1a(key, c.slot as u64)).map_or(0, |(i, _)| i)
    }
}

/// FNV-1a over the key and the slot: a stable hash (the same in every process and run).
fn fnv1a(key: &[u8], slot: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().copied().chain(slot.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finish with a mix so slots that differ in one byte spread well.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The built-in policies by name, as a command line would give them.
///
/// # Errors
///
/// The unknown name, back.
pub fn by_name(name: &str) -> Result<Box<dyn Policy>, String> {
    Ok(match name {
        "least-loaded" => Box::new(LeastLoaded::default()),
        "round-robin" => Box::new(RoundRobin::default()),
        "p2c" | "power-of-two" => Box::new(PowerOfTwo::default()),
        "sticky" => Box::new(Sticky::default()),
        other => return Err(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(slot: usize, in_flight: u32, open: u32) -> Candidate {
        Candidate { slot, in_flight, open, queued: 0, busy: 0 }
    }

    #[test]
    fn least_loaded_prefers_the_idle_worker_and_rotates_ties() {
        let mut p = LeastLoaded::default();
        assert_eq!(p.choose(&[c(0, 3, 0), c(1, 0, 1), c(2, 2, 2)], None), 1);
        let ties = [c(0, 1, 0), c(1, 1, 0), c(2, 1, 0)];
        let picks: std::collections::HashSet<usize> = (0..3).map(|_| p.choose(&ties, None)).collect();
        assert_eq!(picks.len(), 3, "ties must rotate");
    }

    #[test]
    fn least_loaded_avoids_a_busy_worker_while_another_can_take_it() {
        let mut p = LeastLoaded::default();
        let busy = Candidate { busy: 1, ..c(0, 0, 0) };
        assert_eq!(p.choose(&[busy, c(1, 5, 5)], None), 1);
        assert_eq!(p.choose(&[busy, Candidate { busy: 2, ..c(1, 0, 0) }], None), 0, "all busy: least loaded");
    }

    #[test]
    fn round_robin_cycles_by_slot() {
        let mut p = RoundRobin::default();
        let cs = [c(0, 9, 9), c(1, 0, 0), c(2, 0, 0)];
        let seq: Vec<usize> = (0..6).map(|_| cs[p.choose(&cs, None)].slot).collect();
        assert_eq!(seq, [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn sticky_keeps_a_key_on_its_worker_and_moves_only_the_missing_workers_keys() {
        let mut p = Sticky::default();
        let all = [c(0, 0, 0), c(1, 0, 0), c(2, 0, 0)];
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("user-{i}").into_bytes()).collect();
        let before: Vec<usize> = keys.iter().map(|k| all[p.choose(&all, Some(k))].slot).collect();
        let again: Vec<usize> = keys.iter().map(|k| all[p.choose(&all, Some(k))].slot).collect();
        assert_eq!(before, again);
        for slot in 0..3 {
            assert!(before.iter().filter(|&&s| s == slot).count() > 50, "keys spread over workers");
        }
        let without_1 = [c(0, 0, 0), c(2, 0, 0)];
        for (k, &was) in keys.iter().zip(&before) {
            let now = without_1[p.choose(&without_1, Some(k))].slot;
            if was != 1 {
                assert_eq!(now, was, "a key whose worker is still there must not move");
            }
        }
    }

    #[test]
    fn power_of_two_never_picks_the_busier_of_two_workers() {
        let mut p = PowerOfTwo::default();
        let cs = [c(0, 10, 0), c(1, 0, 0)];
        let busy = (0..1000).filter(|_| p.choose(&cs, None) == 0).count();
        // It picks the busy one only when both draws land on it (about a quarter of the time).
        assert!(busy < 400, "picked the busy worker {busy} times in 1000");
    }
}
