//! Runnable programs for baton; see the `[[example]]` entries in this crate's manifest. The
//! library part holds what several of them (and the end-to-end benchmark) share.
#![warn(missing_docs)]

pub mod http;
