//! Benchmarks for baton (`benches/savina.rs`, `benches/transport.rs`; results in
//! `BENCHMARKS.md` at the workspace root), and the heap-counting allocator they share.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use crossbeam_channel::Receiver;

/// How long a round may take before a benchmark reports a hang instead of waiting forever.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// A criterion group with the settings every suite here uses (sized for a shared 2-vCPU
/// machine), reporting `elements` per iteration.
pub fn group<'a>(c: &'a mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(elements));
    g
}

/// Runs `round` `iters` times and returns the total time: the shape of every `iter_custom`.
pub fn timed(iters: u64, mut round: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        round();
    }
    start.elapsed()
}

/// Waits for the end of a round, panicking (instead of hanging) after [`ROUND_TIMEOUT`].
pub fn wait(done: &Receiver<()>, what: &str) {
    done.recv_timeout(ROUND_TIMEOUT).unwrap_or_else(|e| panic!("{what}: round did not finish: {e}"));
}

/// Wraps [`System`] and, while counting is on ([`set_counting`]), tracks live heap bytes.
/// A bench binary installs it with `#[global_allocator]`. Counting is off during the timed
/// criterion groups so the shared counter does not slow them down.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Turns heap counting on or off.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Relaxed);
}

/// Live heap bytes allocated while counting was on (net of frees seen while it was on).
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

// SAFETY: every method forwards to `System` with the same arguments and only adds bookkeeping
// on a counter; the GlobalAlloc contract is `System`'s.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}
