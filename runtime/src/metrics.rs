//! Metric handles, registered once per actor type through the `metrics` facade.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `baton_messages_sent_total` | counter | `actor` |
//! | `baton_messages_handled_total` | counter | `actor` |
//! | `baton_messages_dropped_total` | counter | `actor` (left in the mailbox of an actor that stopped for good) |
//! | `baton_mailbox_depth` | gauge | `actor` (after each turn) |
//! | `baton_mailbox_wait_seconds` | histogram | `actor` (runnable until its turn starts) |
//! | `baton_handler_seconds` | histogram | `actor` (mean per message over a turn) |
//! | `baton_actor_restarts_total` | counter | `actor` |
//! | `baton_actor_panics_total` | counter | `actor` |
//! | `baton_pool_parks_total`, `baton_pool_unparks_total` | counter | none |
//! | `baton_timer_ticks_skipped_total` | counter | none (an interval tick found the mailbox full) |
//!
//! Labels name actor types, never instances, so cardinality stays bounded.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub(crate) struct ActorMetrics {
    /// The actor type's short name (the `actor` label).
    pub name: &'static str,
    pub sent: Counter,
    pub handled: Counter,
    pub dropped: Counter,
    pub depth: Gauge,
    pub mailbox_wait: Histogram,
    pub handler: Histogram,
    pub restarts: Counter,
    pub panics: Counter,
}

impl ActorMetrics {
    pub(crate) fn register(actor: &'static str) -> ActorMetrics {
        ActorMetrics {
            name: actor,
            sent: counter!("baton_messages_sent_total", "actor" => actor),
            handled: counter!("baton_messages_handled_total", "actor" => actor),
            dropped: counter!("baton_messages_dropped_total", "actor" => actor),
            depth: gauge!("baton_mailbox_depth", "actor" => actor),
            mailbox_wait: histogram!("baton_mailbox_wait_seconds", "actor" => actor),
            handler: histogram!("baton_handler_seconds", "actor" => actor),
            restarts: counter!("baton_actor_restarts_total", "actor" => actor),
            panics: counter!("baton_actor_panics_total", "actor" => actor),
        }
    }
}
