//! [`Status`]: what the application tells the parent beyond the load figures.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use super::reports::Shared;

/// Tells the parent what the load figures cannot: that a handler is about to be busy for a
/// while (a heavy request), so new connections should go elsewhere until it is done. The parent
/// hears it at once, not at the next 50 ms LOAD.
#[derive(Clone, Debug)]
pub struct Status {
    pub(super) shared: Arc<Shared>,
}

/// Marks a handler busy while it lives ([`Status::busy`]).
#[derive(Debug)]
pub struct Busy {
    shared: Arc<Shared>,
}

impl Status {
    /// This handler is busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy {
        self.shared.busy.fetch_add(1, SeqCst);
        self.shared.load_changed();
        Busy { shared: self.shared.clone() }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.busy.fetch_sub(1, SeqCst);
        self.shared.load_changed();
    }
}
