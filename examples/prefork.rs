//! The main job: a prefork HTTP/1.1 server. The parent accepts; worker processes (this same
//! binary, re-executed) serve; each connection is handed to the least-loaded worker.
//!
//! ```sh
//! cargo run --release --example prefork -- [--listen ADDR] [--workers N] [--policy P]
//!     [--mode handoff|listeners|steered] [--metrics ADDR]
//! curl http://127.0.0.1:8080/            # hello from worker <pid>
//! curl http://127.0.0.1:8080/slow?ms=200 # the same, after a 200 ms heavy request
//! curl http://127.0.0.1:8080/block?ms=20 # the same, after blocking its worker for 20 ms
//! ```
//!
//! Modes: `handoff` (default) — the parent accepts and hands each connection to the worker
//! its policy picks; `listeners` — the parent shares one listening socket and the workers
//! accept from it (nginx's shape); `steered` — one `SO_REUSEPORT` socket per worker, the kernel
//! placing each connection by weights the parent sets from the workers' load, and the parent
//! serving the queue of a worker that is busy or gone.
//!
//! SIGTERM or SIGINT: stop accepting, let in-flight requests finish (up to 5 s), exit 0.
//!
//! Zero-downtime upgrade: with `--takeover PATH`, SIGUSR2 starts this binary again with the
//! same arguments; the new parent takes the listening socket over from this one through the
//! control socket at `PATH`, starts its workers, and once it serves, this one stops accepting.
//! It keeps its listening socket and workers for a probation (`--probation MS`, default 5000):
//! if the new parent dies meanwhile, this one accepts again and nothing queued is lost; else it
//! drains and exits 0. A successor that failed is reaped, never left a zombie.
//!
//! Under systemd (`Type=notify`, `NotifyAccess=all`; see the README) it reports through
//! `NOTIFY_SOCKET`: `READY=1` and a `STATUS=` line once it serves (the line refreshed every 5 s
//! when it changed), `RELOADING=1` with `MONOTONIC_USEC=` on SIGUSR2 before starting the
//! successor, which sends `MAINPID=<its pid>` and `READY=1` once it serves; `MAINPID=` and
//! `READY=1` again from this parent if the successor fails and this one serves on; `STOPPING=1`
//! when SIGTERM or SIGINT starts the drain. A parent that was taken over says nothing more (the
//! service is not stopping: its successor serves). Workers never see `NOTIFY_SOCKET`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use baton_examples::http::{self, HttpServer, Parsed};
use baton_handoff::handshake::{HandshakeOptions, Peer, Reject, Route, Step};
use baton_handoff::proxy::{ProxyProtocol, Versions};
use baton_handoff::systemd::{Notifier, State};
use baton_handoff::{channel_from_env, policy, Parent, PeerCheck, Worker, WorkerCommand, WorkerOptions};
use baton_runtime::{Actor, Context, Runtime};
use baton_transport::{Accepted, ConnEvent, ConnId, ConnOptions, Connection, ListenOptions, Reactor};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `eprintln!` that never panics: a closed stderr must not turn a graceful stop into a crash.
macro_rules! note {
    ($($arg:tt)*) => {{
        // One write per line: generations of a takeover share stderr, and a line written in
        // pieces can be cut by another process's.
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

const USAGE: &str =
    "usage: prefork [--listen ADDR] [--workers N] [--policy least-loaded|round-robin|p2c] [--mode handoff|listeners|steered] [--takeover PATH [--probation MS]] [--proxy-protocol v1|v2|any --trusted CIDR[,CIDR...]] [--agent ADDR [--drain-grace MS]] [--route-by-host] [--metrics ADDR]";
/// How long a graceful stop waits for in-flight requests.
const DRAIN: Duration = Duration::from_secs(5);
/// How often the `STATUS=` line for systemd is refreshed (sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

struct Options {
    listen: SocketAddr,
    workers: usize,
    policy: String,
    /// Who accepts, and who places.
    mode: Mode,
    metrics: Option<SocketAddr>,
    /// The control socket for zero-downtime upgrades: a running parent listens there, and a
    /// new one started with the same path takes over from it (SIGUSR2 starts one).
    takeover: Option<std::path::PathBuf>,
    /// How long a successor must live before this parent lets go (`--probation MS`).
    probation: Duration,
    /// Behind a load balancer: the PROXY protocol versions it sends, and the networks it sends
    /// from (`--proxy-protocol`, `--trusted`).
    proxy: Option<(Versions, Vec<String>)>,
    /// HAProxy's agent check (`--agent ADDR`), and how long a graceful stop says `drain` to it
    /// before it stops accepting (`--drain-grace MS`).
    agent: Option<SocketAddr>,
    drain_grace: Duration,
    /// The parent reads each connection's first request head and places it by its `Host`
    /// (sticky: one host's connections go to the same worker while it lives).
    route_by_host: bool,
}

// The flags as typed: clap reads them, and `--help` prints each one's doc comment;
// `Flags::check` turns them into `Options`.
#[derive(clap::Parser)]
#[command(
    name = "prefork",
    about = "A prefork HTTP/1.1 server: the parent accepts, worker processes (this binary again) serve.",
    long_about = None,
    override_usage = &USAGE["usage: ".len()..],
    // A flag given twice: the last one wins (scripts append to a default command line).
    args_override_self = true,
)]
struct Flags {
    /// The address to listen on (port 0 picks a free port; the ready line shows the real one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How many worker processes [default: one per core].
    #[arg(long, value_name = "N", value_parser = baton_examples::at_least_one)]
    workers: Option<usize>,
    /// How the parent picks a worker for each connection.
    #[arg(long, value_enum, default_value_t = PolicyFlag::LeastLoaded)]
    policy: PolicyFlag,
    /// Who accepts, and who places.
    #[arg(long, value_enum, default_value_t = Mode::Handoff)]
    mode: Mode,
    /// A control socket for zero-downtime upgrades (SIGUSR2 starts a successor that takes over here).
    #[arg(long, value_name = "PATH")]
    takeover: Option<std::path::PathBuf>,
    /// How long a successor must live before this parent lets go, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000, requires = "takeover")]
    probation: u64,
    /// Read a PROXY protocol header from the balancer first (needs --trusted).
    #[arg(long = "proxy-protocol", value_enum, value_name = "VERSION")]
    proxy_protocol: Option<ProxyFlag>,
    /// The networks the balancer connects from (comma-separated CIDRs; repeatable).
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',')]
    trusted: Vec<String>,
    /// Answer HAProxy's agent check on this address, with a weight from the workers' load.
    #[arg(long, value_name = "ADDR")]
    agent: Option<SocketAddr>,
    /// How long a graceful stop says `drain` to the agent check before it stops accepting, in ms.
    #[arg(long = "drain-grace", value_name = "MS", default_value_t = 1000, requires = "agent")]
    drain_grace: u64,
    /// Place each connection by the Host of its first request (sticky), read in the parent.
    #[arg(long = "route-by-host")]
    route_by_host: bool,
    /// Serve Prometheus text at http://ADDR/metrics from the parent.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// `--policy`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyFlag {
    /// The worker with the lowest reported load.
    LeastLoaded,
    /// Each worker in turn.
    RoundRobin,
    /// The less loaded of two picked at random.
    P2c,
}

impl PolicyFlag {
    /// The name `baton_handoff::policy::by_name` knows it by.
    fn name(self) -> &'static str {
        match self {
            PolicyFlag::LeastLoaded => "least-loaded",
            PolicyFlag::RoundRobin => "round-robin",
            PolicyFlag::P2c => "p2c",
        }
    }
}

/// `--proxy-protocol`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProxyFlag {
    /// Version 1 (text).
    V1,
    /// Version 2 (binary, with TLVs).
    V2,
    /// Either.
    Any,
}

/// The flags from `args` (without the program's name), or the message for a usage error.
/// `--help` prints the help and exits 0.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    use clap::Parser;
    let flags = match Flags::try_parse_from(std::iter::once("prefork".to_string()).chain(args)) {
        Ok(f) => f,
        Err(e) if !e.use_stderr() => {
            // --help (or --version): clap's text on stdout, and a clean exit.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // clap's message, up to its own usage line, on one line.
            let text = e.render().to_string();
            let message: Vec<&str> =
                text.lines().map(str::trim).take_while(|l| !l.is_empty() && !l.starts_with("Usage:")).collect();
            let message = message.join(" ");
            return Err(message.strip_prefix("error: ").unwrap_or(&message).to_string());
        }
    };
    flags.check()
}

impl Flags {
    /// The checks that span flags, and the [`Options`] they leave.
    fn check(self) -> Result<Options, String> {
        let mut opts = Options {
            listen: self.listen,
            workers: self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            policy: self.policy.name().into(),
            mode: self.mode,
            metrics: self.metrics,
            takeover: self.takeover,
            probation: Duration::from_millis(self.probation),
            proxy: None,
            agent: self.agent,
            drain_grace: Duration::from_millis(self.drain_grace),
            route_by_host: self.route_by_host,
        };
        let versions = self.proxy_protocol.map(|v| match v {
            ProxyFlag::V1 => Versions::V1,
            ProxyFlag::V2 => Versions::V2,
            ProxyFlag::Any => Versions::Both,
        });
        let trusted: Vec<String> =
            self.trusted.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        match (versions, trusted.is_empty()) {
            (None, true) => {}
            (None, false) => return Err("--trusted goes with --proxy-protocol".into()),
            (Some(_), true) => {
                return Err("--proxy-protocol needs --trusted: the networks the balancer connects from".into())
            }
            (Some(v), false) => {
                ProxyProtocol::new(v, &trusted).map_err(|e| format!("--trusted: {e}"))?;
                if opts.mode != Mode::Handoff {
                    return Err("--proxy-protocol needs --mode handoff: the parent reads the header".into());
                }
                opts.proxy = Some((v, trusted));
            }
        }
        if opts.route_by_host && opts.mode != Mode::Handoff {
            return Err("--route-by-host needs --mode handoff: the parent reads the request head".into());
        }
        Ok(opts)
    }
}

/// Who accepts, and who places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// The parent accepts and hands each connection to a worker it picks by load.
    Handoff,
    /// The parent shares one listening socket and the workers accept from it, as nginx does.
    Listeners,
    /// One `SO_REUSEPORT` socket per worker; the kernel places each connection by weights
    /// the parent sets from the workers' load (`Parent::listen_steered`).
    Steered,
}

fn main() -> ExitCode {
    // First, before any thread starts: is this process a worker? Was it socket-activated?
    let worker_channel = channel_from_env(PeerCheck::SameUid);
    baton_examples::init_logging("prefork");
    if let Some(channel) = worker_channel {
        return worker(channel);
    }
    let activated = match baton_handoff::systemd::listen_fds() {
        Ok(fds) => fds,
        Err(e) => {
            note!("prefork: ignoring socket activation: {e}");
            Vec::new()
        }
    };
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            note!("prefork: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match parent(opts, activated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("prefork: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parent(opts: Options, activated: Vec<baton_handoff::systemd::Activated>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
    // Terminal Ctrl-C reaches the workers too; they ignore it and drain when the parent says.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR2])?;
    let (signal_tx, signal_rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(sig).is_err() {
                break;
            }
        }
    });
    // Resolved now: after an upgrade replaced the file, /proc/self/exe says "(deleted)", and
    // the successor must be the new binary at the same path.
    let exe = std::env::current_exe()?;
    let exe = std::path::PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)").to_string());
    // A running parent at the takeover socket: take its listening sockets over.
    let endpoint = opts.takeover.clone().map(baton_handoff::Endpoint::Path);
    let mut takeover = match &endpoint {
        Some(e @ baton_handoff::Endpoint::Path(p)) if p.exists() => {
            match baton_handoff::takeover::take_over(e, PeerCheck::SameUid, Duration::from_secs(10)) {
                Ok(t) => Some(t),
                Err(err) => {
                    note!("prefork: no parent to take over at {} ({err}); starting fresh", p.display());
                    None
                }
            }
        }
        _ => None,
    };
    let steered = takeover.as_mut().map(|t| t.steered(0)).unwrap_or_default();
    let inherited = takeover.as_mut().and_then(|t| t.listener("main").or_else(|| t.listener("shared:0")));
    let metrics = match opts.metrics {
        Some(_) => {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(handle)
        }
        None => None,
    };
    let rt = Runtime::new();
    let reactor = Reactor::start()?;
    // Before any worker starts: a port that cannot be had is a mistake to say at once. Bound
    // with SO_REUSEPORT, so that a successor binds it beside its predecessor during an upgrade
    // (both answer until the old one is taken over) instead of losing it. A predecessor built
    // before that holds the port alone: a successor then binds it once that one lets go.
    let metrics_listener = std::sync::Arc::new(std::sync::Mutex::new(None::<baton_transport::Listener>));
    if let (Some(addr), Some(handle)) = (opts.metrics, metrics) {
        let server = rt.spawn(MetricsServer { handle, reactor: reactor.clone(), conns: Default::default(), me: None });
        let options = ListenOptions { reuse_port: true, ..HttpServer::listen_options() };
        match reactor.listen_tcp(addr, options, server.recipient()) {
            Ok(l) => {
                note!("prefork: metrics on http://{}/metrics", l.local_addr());
                *metrics_listener.lock().unwrap() = Some(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && takeover.is_some() => {
                note!("prefork: --metrics {addr}: held by the parent we take over from; bound once it lets go");
                let (reactor, slot) = (reactor.clone(), metrics_listener.clone());
                std::thread::spawn(move || {
                    for _ in 0..METRICS_RETRIES {
                        std::thread::sleep(Duration::from_millis(250));
                        if let Ok(l) = reactor.listen_tcp(addr, options, server.recipient()) {
                            note!("prefork: metrics on http://{}/metrics", l.local_addr());
                            *slot.lock().unwrap() = Some(l);
                            return;
                        }
                    }
                    note!("prefork: --metrics {addr}: still in use after a minute; no metrics endpoint");
                });
            }
            Err(e) => return Err(at("--metrics", addr, e)),
        }
    }
    // Routing by host places by key: sticky.
    let policy_name = if opts.route_by_host { "sticky" } else { opts.policy.as_str() };
    let policy = policy::by_name(policy_name).map_err(|p| std::io::Error::other(format!("unknown policy {p}")))?;
    let parent = Parent::builder()
        .spawn(opts.workers, WorkerCommand::new(&exe).args(std::env::args_os().skip(1)))
        .boxed_policy(policy)
        .takeover_probation(opts.probation)
        .start(&rt, &reactor)?;
    // HAProxy's agent check: our weight from the workers' load, `drain` before a stop. (Bound
    // with SO_REUSEPORT: during an upgrade both generations answer on it.) Before the
    // listening socket: a failure here must not drop what that socket would have accepted.
    let agent = match opts.agent {
        Some(addr) => {
            let a = baton_handoff::agent::AgentCheck::serve(&rt, &reactor, parent.clone(), addr, 64)
                .map_err(|e| at("--agent", addr, e))?;
            note!("prefork: agent check on {}", a.local_addr());
            Some(a)
        }
        None => None,
    };
    if takeover.is_some() {
        // A successor accepts only once its workers can take what it accepts: if it dies
        // before, every connection queued meanwhile is still in the socket for its predecessor.
        if !parent.wait_ready(Duration::from_secs(10)) {
            note!("prefork: workers slow to start; taking over anyway");
        }
    }
    // A predecessor's socket, else socket activation (systemd), else --listen.
    let given = inherited.or_else(|| activated.into_iter().next().map(|a| a.fd));
    let bound = match (given, opts.mode) {
        // A predecessor in another mode gave a single socket: it starts the group.
        (given, Mode::Steered) => {
            let options = HttpServer::listen_options();
            let group: Vec<_> = if steered.is_empty() { given.into_iter().collect() } else { steered };
            if group.is_empty() {
                parent.listen_steered(opts.listen, &options, 0).map_err(|e| at("--listen", opts.listen, e))?
            } else {
                parent.steer(group, &options, 0)?
            }
        }
        (Some(fd), Mode::Listeners) => parent.share_listener(deferred(fd), 0)?,
        (Some(fd), Mode::Handoff) => {
            let l = reactor
                .adopt_listener(fd, HttpServer::listen_options(), parent.recipient())
                .map_err(|e| std::io::Error::other(format!("the activated socket: {e}")))?;
            attach(&parent, &l, &opts)?;
            l.local_addr().clone()
        }
        (None, Mode::Listeners) => {
            let l = std::net::TcpListener::bind(opts.listen).map_err(|e| at("--listen", opts.listen, e))?;
            parent.share_listener(deferred(l.into()), 0)?
        }
        (None, Mode::Handoff) => {
            let l = reactor
                .listen_tcp(opts.listen, HttpServer::listen_options(), parent.recipient())
                .map_err(|e| at("--listen", opts.listen, e))?;
            attach(&parent, &l, &opts)?;
            l.local_addr().clone()
        }
    };
    // "Ready to serve" means workers that answered, before the line below or a predecessor's
    // release. (Sockets accepted meanwhile wait in the parent.)
    if !parent.wait_ready(Duration::from_secs(10)) {
        note!("prefork: workers slow to start; serving anyway");
    }
    let successor = takeover.is_some();
    if let Some(t) = takeover {
        // Our workers are up: the predecessor may stop accepting now.
        match t.serving(&parent, Duration::from_secs(10)) {
            Ok(n) => note!("prefork: took over ({n} accepted connection(s) came along)"),
            Err(e) => note!("prefork: took over, but the predecessor did not release cleanly: {e}"),
        }
    }
    if let Some(e) = &endpoint {
        // Serving already: a failure here costs only the next upgrade, not this server.
        if let Err(err) = parent.offer_takeover(e, PeerCheck::SameUid) {
            note!("prefork: no takeover socket ({err}); SIGUSR2 will not work");
        }
    }
    // systemd: serving. A successor becomes the service's main process (with NotifyAccess=all
    // any process of the unit may say so), which ends the reload its predecessor announced.
    let notifier = Notifier::from_env();
    let me = std::process::id();
    let mut last_status = status_line(&parent);
    let tell = |states: &[State<'_>]| {
        if let Err(e) = notifier.notify(states) {
            note!("prefork: systemd notification failed: {e}");
        }
    };
    let serving_again = |last_status: &mut Option<String>| {
        *last_status = status_line(&parent);
        let status = last_status.as_deref().unwrap_or("serving");
        tell(&[State::MainPid(me), State::Ready, State::Status(status)]);
    };
    if notifier.is_enabled() {
        let status = last_status.as_deref().unwrap_or("serving");
        if successor {
            tell(&[State::MainPid(me), State::Ready, State::Status(status)]);
        } else {
            tell(&[State::Ready, State::Status(status)]);
        }
    }
    note!("prefork: parent {me} serving");
    let mut out = std::io::stdout();
    // (A successor's stdout may have no reader any more: not a reason to stop serving.)
    let _ = writeln!(out, "listening on http://{}", &bound);
    let _ = out.flush();

    // Successors started by SIGUSR2: one that fails is reaped here (and this parent, whose
    // probation it did not survive, serves on).
    let mut successors: Vec<std::process::Child> = Vec::new();
    let reap = crossbeam_channel::tick(Duration::from_millis(100));
    let status_tick =
        if notifier.is_enabled() { crossbeam_channel::tick(STATUS_EVERY) } else { crossbeam_channel::never() };
    // Between SIGUSR2 and the successor's failure (or our being taken over), the successor
    // speaks for the service: no STATUS= or STOPPING=1 from this parent meanwhile.
    let mut upgrading = false;
    loop {
        crossbeam_channel::select! {
            recv(reap) -> _ => {
                let before = successors.len();
                successors.retain_mut(|c| match c.try_wait() {
                    Ok(Some(status)) => {
                        note!("prefork: successor {} exited: {status}", c.id());
                        false
                    }
                    Ok(None) => true,
                    Err(_) => false,
                });
                // A successor that failed before it served (or on probation, ahead of the
                // rollback): we are the service still, and the reload is over.
                if successors.len() < before && upgrading && parent.taken_over().is_empty() {
                    upgrading = false;
                    serving_again(&mut last_status);
                }
            }
            recv(status_tick) -> _ => {
                if !upgrading {
                    let line = status_line(&parent);
                    if line.is_some() && line != last_status {
                        tell(&[State::Status(line.as_deref().unwrap_or_default())]);
                        last_status = line;
                    }
                }
            }
            recv(parent.rolled_back()) -> _ => {
                note!("prefork: the successor died on probation; serving again");
                upgrading = false;
                serving_again(&mut last_status);
            }
            recv(signal_rx) -> sig => match sig {
                Ok(SIGUSR2) => {
                    if opts.takeover.is_none() {
                        note!("prefork: SIGUSR2 needs --takeover PATH; ignored");
                        continue;
                    }
                    // Before the successor exists, so the manager hears of the reload first.
                    if notifier.is_enabled() {
                        tell(&[State::Reloading, State::monotonic_now(), State::Status("upgrading: starting a successor")]);
                    }
                    // The successor is this binary with the same arguments: it finds us at the
                    // takeover socket, and inherits NOTIFY_SOCKET.
                    match std::process::Command::new(&exe).args(std::env::args_os().skip(1)).spawn() {
                        Ok(child) => {
                            note!("prefork: SIGUSR2: started successor {}", child.id());
                            successors.push(child);
                            upgrading = true;
                        }
                        Err(e) => {
                            note!("prefork: SIGUSR2: cannot start a successor: {e}");
                            if notifier.is_enabled() {
                                serving_again(&mut last_status);
                            }
                        }
                    }
                }
                other => {
                    note!("prefork: signal {}: draining (up to {DRAIN:?})", other.map_or(-1, |s| s));
                    // (During an upgrade the successor may be the main process already, and
                    // STOPPING=1 from us would stop the unit under it.)
                    if !upgrading {
                        tell(&[State::Stopping, State::Status("draining")]);
                    }
                    if let Some(agent) = &agent {
                        // The balancer hears `drain` and sends us nothing new; then we stop
                        // accepting, with no client sent to a closed door.
                        agent.drain();
                        note!("prefork: telling the balancer we drain ({:?})", opts.drain_grace);
                        std::thread::sleep(opts.drain_grace);
                    }
                    break;
                }
            },
            recv(parent.taken_over()) -> _ => {
                if let Some(agent) = &agent {
                    agent.close(); // the successor answers the balancer now
                }
                if let Some(l) = metrics_listener.lock().unwrap().take() {
                    l.close(); // and the scraper: counters from one process, not two in turn
                }
                // No STOPPING=1: the manager applies it to the unit, which our successor serves.
                note!("prefork: taken over by a successor: draining (up to {DRAIN:?})");
                break;
            }
        }
    }
    match parent.drain(DRAIN) {
        Ok(report) => note!("prefork: drained: {report}"),
        Err(e) => note!("prefork: drain failed: {e}"),
    }
    parent.stop();
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}

/// Lets the parent accept on `l` (named `main` for a successor), reading a PROXY protocol
/// header first when the server is behind a balancer, and the first request head when it
/// routes by host.
fn attach(parent: &Parent, l: &baton_transport::Listener, opts: &Options) -> Result<(), baton_handoff::ParentError> {
    // A head, and a PROXY header before it (v2's, with TLVs, within 512 bytes).
    let limits = HandshakeOptions {
        max_bytes: http::MAX_HEAD + 512,
        timeout: http::HEAD_TIMEOUT,
        ..HandshakeOptions::default()
    };
    match (&opts.proxy, opts.route_by_host) {
        (None, false) => parent.attach(l.clone(), "main"),
        (None, true) => parent.attach_with(l.clone(), "main", by_host, limits),
        (Some((versions, trusted)), by) => {
            let (versions, trusted) = (*versions, trusted.clone());
            let handshake = move || {
                let proxy = ProxyProtocol::new(versions, &trusted).expect("checked when parsed");
                if by {
                    proxy.then(by_host())
                } else {
                    proxy
                }
            };
            parent.attach_with(l.clone(), "main", handshake, limits)
        }
    }
}

/// Reads a connection's first request head (with the workers' own parser, so the parent
/// refuses exactly what they would: a 400 and the close) and routes it by its host.
fn by_host() -> impl FnMut(&[u8], Peer<'_>) -> Step + Send + 'static {
    |read: &[u8], _peer: Peer<'_>| match http::parse(read) {
        Parsed::Incomplete => Step::More,
        Parsed::Request(req) => {
            // A host name has at most 253 characters; a longer value is still one key.
            let mut host = req.host_name().unwrap_or_default().to_ascii_lowercase().into_bytes();
            host.truncate(255);
            Step::Route(Route { key: Some(host), ..Route::default() })
        }
        refused => Step::Reject(Reject { reason: "bad request head", answer: refused.rejection().unwrap_or_default() }),
    }
}

/// A listening socket the workers will accept from (listeners mode), set up as
/// [`HttpServer::listen_options`] would set up one of ours. A Unix socket has no such option and
/// is shared as it is.
fn deferred(fd: std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    let _ = HttpServer::defer_accept(&fd);
    fd
}

/// The `STATUS=` line: workers ready, connections open in them, sockets accepted and not yet
/// adopted. `None` when the parent does not answer.
fn status_line(parent: &Parent) -> Option<String> {
    let s = parent.stats().ok()?;
    let ready = s.workers.iter().filter(|w| w.ready).count();
    let open: u64 = s.workers.iter().map(|w| u64::from(w.open)).sum();
    Some(format!(
        "serving: {ready}/{} workers ready, {open} connections open, {} in flight",
        s.workers.len(),
        s.in_flight
    ))
}

/// How often a successor tries the metrics port its predecessor holds alone, 250 ms apart.
const METRICS_RETRIES: u32 = 240;

/// `e`, saying which option's address it is about.
fn at(option: &str, addr: SocketAddr, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{option} {addr}: {e}"))
}

fn worker(channel: std::io::Result<baton_handoff::Channel>) -> ExitCode {
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            note!("prefork worker: no channel: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signals aimed at the whole process group (Ctrl-C) are the parent's to act on.
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, ignored.clone());
    }
    let run = || -> std::io::Result<()> {
        // Two pool threads: a `/slow` request blocks the HTTP actor's, and the worker's link
        // keeps adopting (and reporting load) on the other.
        let rt = Runtime::builder().threads(2).build();
        let reactor = Reactor::start()?;
        let app = HttpServer::spawn(&rt, &reactor).expect("spawning the HTTP server");
        let w = Worker::serve(channel, &rt, &reactor, &app, WorkerOptions::default())?;
        w.wait();
        let _ = rt.shutdown(Duration::from_secs(5));
        reactor.stop();
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("prefork worker {}: {e}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

/// Serves the Prometheus text at `/metrics` (one request per connection, parsed by the same
/// rules as the workers' requests, with the same head deadline).
struct MetricsServer {
    handle: PrometheusHandle,
    reactor: Reactor,
    /// Each connection, the bytes it sent, and whether it was answered.
    conns: std::collections::HashMap<ConnId, (Connection, Vec<u8>, bool)>,
    me: Option<baton_runtime::Addr<MetricsServer>>,
}

enum MetricsMsg {
    Accepted(Accepted),
    Conn(ConnEvent),
    /// A connection's request head is due (since its first byte came, [`http::HEAD_TIMEOUT`]).
    HeadTimeout(ConnId),
}

impl From<Accepted> for MetricsMsg {
    fn from(a: Accepted) -> Self {
        MetricsMsg::Accepted(a)
    }
}

impl From<ConnEvent> for MetricsMsg {
    fn from(e: ConnEvent) -> MetricsMsg {
        MetricsMsg::Conn(e)
    }
}

impl Actor for MetricsServer {
    type Message = MetricsMsg;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
    }
    fn handle(&mut self, ctx: &mut Context<Self>, msg: MetricsMsg) {
        match msg {
            MetricsMsg::Accepted(a) => {
                let owner = self.me.as_ref().expect("started");
                let options = ConnOptions { idle_timeout: Some(Duration::from_secs(10)), ..ConnOptions::default() };
                if let Ok(conn) = self.reactor.adopt(a.stream, options, owner) {
                    self.conns.insert(conn.id(), (conn, Vec::new(), false));
                }
            }
            MetricsMsg::Conn(ConnEvent::Data(id, bytes)) => {
                let Some((conn, buf, answered)) = self.conns.get_mut(&id) else { return };
                if *answered {
                    return;
                }
                if buf.is_empty() {
                    // The head's first bytes: it has this long to be whole, however it trickles in.
                    ctx.send_after(http::HEAD_TIMEOUT, MetricsMsg::HeadTimeout(id));
                }
                buf.extend_from_slice(&bytes);
                let parsed = http::parse(buf);
                let reply = match parsed {
                    Parsed::Incomplete => return,
                    Parsed::Request(req) if req.method == "GET" && req.path == "/metrics" => {
                        self.handle.run_upkeep();
                        let body = self.handle.render();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                    Parsed::Request(_) => http::response("404 Not Found", "not found\n", true),
                    refused => refused.rejection().expect("a refusal"),
                };
                *answered = true;
                let _ = conn.write(&reply);
                conn.close();
            }
            MetricsMsg::HeadTimeout(id) => {
                if let Some((conn, _, answered @ false)) = self.conns.get_mut(&id) {
                    *answered = true;
                    let _ = conn.write(&http::head_timeout_response());
                    conn.close();
                }
            }
            MetricsMsg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some((conn, ..)) = self.conns.get(&id) {
                    conn.close();
                }
            }
            MetricsMsg::Conn(ConnEvent::Closed(id, _)) => {
                self.conns.remove(&id);
            }
            MetricsMsg::Conn(_) => {}
        }
    }
}
