//! Runnable programs for baton; see the `[[example]]` entries in this crate's manifest.
