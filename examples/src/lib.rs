//! Runnable programs for baton; see the `[[example]]` entries in this crate's manifest. The
//! library part holds what several of them (and the end-to-end benchmark) share.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod http;

/// Installs the examples' logger. baton logs through the `log` facade, which prints nothing
/// until a program installs a logger; this one (`env_logger`) writes to stderr, by default
/// baton's lines (every `baton_*` target) and the example's own (`program`, its crate name) at
/// `info` and above, everything else at `warn`. `RUST_LOG` replaces that filter:
/// `RUST_LOG=baton_handoff=debug`, `RUST_LOG=trace`, `RUST_LOG=off`.
///
/// A worker process inherits its parent's environment, so one `RUST_LOG` sets both sides.
pub fn init_logging(program: &str) {
    let default = format!("warn,baton=info,baton_examples=info,{program}=info");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// A flag's value parser for counts that must be at least one (`--workers`).
///
/// # Errors
///
/// Zero, or not a number.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
