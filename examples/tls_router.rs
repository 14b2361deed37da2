//! TLS routed by server name, terminated in the worker: one parent, one worker group per host
//! name, and the parent never holds a key.
//!
//! ```sh
//! cargo run --example tls_router                       # a.localhost and b.localhost on :8443
//! # stderr says where the CA is: tls_router: clients trust /tmp/baton-tls-router-<pid>/ca.pem
//! curl --resolve a.localhost:8443:127.0.0.1 --cacert /tmp/baton-tls-router-<pid>/ca.pem https://a.localhost:8443/
//! curl --resolve b.localhost:8443:127.0.0.1 --cacert /tmp/baton-tls-router-<pid>/ca.pem https://b.localhost:8443/
//! ```
//!
//! The first answers `group a.localhost name a.localhost worker <pid>`, the second the same
//! for `b.localhost` from another process; any other name gets a TLS `unrecognized_name` alert
//! (`curl: (35) ... unrecognized name`).
//!
//! **The flow.** The parent accepts a connection and reads its first bytes, on its reactor
//! thread, with [`sni::ServerName`] as the listener's handshake
//! ([`Parent::listen_tcp_with`]): once the whole ClientHello is in (however many TCP segments
//! or TLS records it came in), it knows the server name the client asked for and hands the
//! socket to a worker of that name's group
//! ([`ParentBuilder::spawn_group`](baton_handoff::ParentBuilder::spawn_group)), with the
//! ClientHello as the socket's prelude. The worker adopts the socket into its reactor; the
//! prelude arrives as its first `Data`, and it feeds that to `rustls`'s `ServerConnection`
//! exactly as if it had read it itself, answers the ServerHello and completes the handshake.
//! From then on the parent sees nothing of the connection: no decryption, no copying, and
//! **no key**. Each group's workers are told only their own name's certificate and key (paths
//! in their environment). (Here every process runs as one user, so a worker could still read
//! another name's key file; give each group its own user to keep them apart.)
//!
//! **Encrypted Client Hello** (ECH) changes what can be routed on. A client using ECH puts the
//! real server name in an inner ClientHello, encrypted to the server's ECH key; the outer
//! ClientHello, all that the parent reads, carries the name of the *client-facing* server
//! (the ECH configuration's `public_name`). So under ECH every connection routes by that outer
//! name: one group must hold the ECH key and serve (or forward) all the names behind it, and
//! routing each name to its own processes is no longer possible at this layer. This example,
//! like [`sni`], does not decrypt ECH; a client that tries ECH against it sees the outer name
//! routed (or refused) like any other. See [`sni`]'s docs.
//!
//! **Options.** `--listen ADDR` (default `127.0.0.1:8443`; port 0 picks a free one, and the
//! ready line `listening on ADDR` on stdout shows the real one). `--name HOST` (repeatable):
//! the names served, each by its own group named after it (default: `a.localhost` and
//! `b.localhost`). `--workers N`: processes per group (default 1). Certificates: by default a
//! CA and one leaf per name are made at start-up (`rcgen`) and written to `--certs DIR`
//! (default a fresh directory under the system's temporary one, removed at exit), `ca.pem`
//! being what clients trust (its path is printed on stderr; the CA's key is never written).
//! `--cert HOST=CERT.pem --key HOST=KEY.pem` serve `HOST` with your own certificate chain and
//! key instead (and add `HOST` to the names; with no `--name`, only such names are served).
//! A bad flag is a usage error (exit 2). SIGTERM or Ctrl-C drains and exits 0.
//!
//! **The worker** drives `rustls` from its actor on the reactor thread, without a thread per
//! connection: each `ConnEvent::Data` goes into `ServerConnection::read_tls`, then
//! `process_new_packets`; the plaintext is read until a request's blank line; what `rustls`
//! wants to send (the handshake's flight, later the answer and the `close_notify`) is taken
//! with `write_tls` into a buffer and written with `Connection::write` (the last with
//! `write_and_close`). The handshake's public-key operations then run on the reactor thread:
//! fine for an example; a busy server would hand them to the pool.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use baton_handoff::handshake::HandshakeOptions;
use baton_handoff::{channel_from_env, sni, Parent, PeerCheck, Worker, WorkerCommand, WorkerEvent, WorkerOptions};
use baton_runtime::{Actor, Context, Mailbox, Runtime};
use baton_transport::{Address, ConnEvent, ConnId, ConnOptions, Connection, ListenOptions, Reactor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The worker's group (its host name), certificate chain and key: set by the parent.
const ENV_GROUP: &str = "TLS_ROUTER_GROUP";
const ENV_CERT: &str = "TLS_ROUTER_CERT";
const ENV_KEY: &str = "TLS_ROUTER_KEY";

/// Longest request head a worker reads before it gives up on the connection.
const MAX_REQUEST: usize = 16 * 1024;

/// How long the parent gives its workers to finish on SIGTERM.
const DRAIN: Duration = Duration::from_secs(5);

macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

// ---- worker: TLS over the reactor's connections ------------------------------------------------

/// One TLS session on one adopted connection.
struct Session {
    conn: Connection,
    tls: ServerConnection,
    /// Plaintext read so far (the request head).
    request: Vec<u8>,
    /// Answered: the answer, the `close_notify` and the FIN are on their way.
    done: bool,
}

/// The worker's application: one actor for all its connections, on the reactor's thread.
struct TlsServer {
    group: String,
    config: Arc<ServerConfig>,
    sessions: HashMap<ConnId, Session>,
}

enum Msg {
    Worker(WorkerEvent),
    Conn(ConnEvent),
}
baton_runtime::from_variants!(Msg::Worker(WorkerEvent), Msg::Conn(ConnEvent));

impl TlsServer {
    /// Bytes from the client (the first time, the ClientHello the parent read): through
    /// `rustls`, then whatever it has to say back.
    fn received(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.done {
            return; // the client's close_notify, or anything after the answer: not read
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            // `read_tls` takes at most what its buffer has room for; process and go on.
            match s.tls.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("tls_router worker: read_tls: {e}");
                    return s.conn.abort();
                }
            }
            if let Err(e) = s.tls.process_new_packets() {
                // rustls has queued an alert for the client: send it, then close.
                log::debug!("tls_router worker: {e}");
                let _ = s.conn.write_and_close(&pending_tls(&mut s.tls));
                s.done = true;
                return;
            }
            read_plaintext(s);
        }
        if !s.done && s.request.len() > MAX_REQUEST {
            s.tls.send_close_notify();
            s.done = true;
        } else if !s.done && s.request.windows(4).any(|w| w == b"\r\n\r\n") {
            let name = s.tls.server_name().unwrap_or("-").to_string();
            let body = format!("group {} name {name} worker {}\n", self.group, std::process::id());
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.tls.writer().write_all(answer.as_bytes());
            s.tls.send_close_notify();
            s.done = true;
        }
        let out = pending_tls(&mut s.tls);
        let written = if s.done {
            s.conn.write_and_close(&out)
        } else if out.is_empty() {
            Ok(())
        } else {
            s.conn.write(&out)
        };
        if written.is_err() {
            s.conn.abort();
        }
    }
}

/// Moves the plaintext `rustls` decrypted into the session's request buffer.
fn read_plaintext(s: &mut Session) {
    let mut buf = [0u8; 4096];
    loop {
        match s.tls.reader().read(&mut buf) {
            Ok(0) => return, // close_notify: nothing more will come
            Ok(n) => s.request.extend_from_slice(&buf[..n]),
            Err(_) => return, // WouldBlock: nothing more yet
        }
    }
}

/// The TLS records `rustls` wants sent (handshake messages, application data, alerts).
fn pending_tls(tls: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while tls.wants_write() {
        if tls.write_tls(&mut out).is_err() {
            break; // writing into a Vec does not fail
        }
    }
    out
}

impl Actor for TlsServer {
    type Message = Msg;
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Msg) {
        match msg {
            Msg::Worker(WorkerEvent::Incoming(incoming)) => {
                let tls = match ServerConnection::new(self.config.clone()) {
                    Ok(tls) => tls,
                    Err(e) => return note!("tls_router worker: {e}"), // dropped: refused
                };
                // The prelude, the ClientHello the parent read, arrives as the first Data. A
                // client that stops sending before its request is closed.
                let options = ConnOptions { read_timeout: Some(Duration::from_secs(10)), ..ConnOptions::default() };
                if let Ok(conn) = incoming.adopt(ctx.address(), options) {
                    self.sessions.insert(conn.id(), Session { conn, tls, request: Vec::new(), done: false });
                }
            }
            Msg::Worker(WorkerEvent::Drain { .. }) => {
                // No more sockets will come. Sessions that have not asked yet are told goodbye.
                for s in self.sessions.values_mut().filter(|s| !s.done) {
                    s.tls.send_close_notify();
                    s.done = true;
                    let _ = s.conn.write_and_close(&pending_tls(&mut s.tls));
                }
            }
            Msg::Conn(ConnEvent::Data(id, bytes)) => self.received(id, &bytes),
            Msg::Conn(ConnEvent::ReadClosed(id)) => {
                if let Some(s) = self.sessions.get(&id) {
                    s.conn.close();
                }
            }
            Msg::Conn(ConnEvent::Closed(id, _)) => {
                self.sessions.remove(&id);
            }
            Msg::Conn(_) => {}
        }
    }
}

fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // ring, not the default aws-lc-rs (whose build needs cmake). rustls 0.23.48 deprecates
    // ring's provider for want of post-quantum key exchange (X25519MLKEM768): acceptable here.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

fn serve_worker(channel: std::io::Result<baton_handoff::Channel>) -> Result<(), String> {
    // Signals aimed at the whole process group (Ctrl-C) are the parent's to act on.
    let ignored = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, ignored.clone());
    }
    let var = |k: &str| std::env::var_os(k).ok_or_else(|| format!("{k} not set (the parent sets it)"));
    let group = var(ENV_GROUP)?.to_string_lossy().into_owned();
    let config = tls_config(Path::new(&var(ENV_CERT)?), Path::new(&var(ENV_KEY)?))?;
    let channel = channel.map_err(|e| format!("no channel: {e}"))?;
    let rt = Runtime::new();
    let reactor = Reactor::start().map_err(|e| e.to_string())?;
    let server = TlsServer { group, config, sessions: HashMap::new() };
    let app = rt.spawn_on(reactor.event_loop(), server, Mailbox::DEFAULT).map_err(|e| format!("{e:?}"))?;
    let worker = Worker::serve(channel, &rt, &reactor, app, WorkerOptions::default()).map_err(|e| e.to_string())?;
    worker.wait();
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}

// ---- parent: certificates, groups, the SNI listener -------------------------------------------

/// TLS by server name, terminated in the worker: the parent reads only the ClientHello.
#[derive(clap::Parser)]
#[command(name = "tls_router")]
struct Flags {
    /// The address to listen on (port 0 picks a free one; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// A name to serve, with its own group of workers (repeatable) [default: a.localhost, b.localhost].
    #[arg(long = "name", value_name = "HOST")]
    names: Vec<String>,
    /// Worker processes per group.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = baton_examples::at_least_one)]
    workers: usize,
    /// Where the certificates made at start-up go [default: a fresh directory under /tmp].
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// Serve HOST with this certificate chain (PEM); goes with --key HOST=KEY.pem (repeatable).
    #[arg(long = "cert", value_name = "HOST=CERT.pem", value_parser = host_and_path)]
    cert: Vec<(String, PathBuf)>,
    /// HOST's private key (PEM), with --cert (repeatable).
    #[arg(long = "key", value_name = "HOST=KEY.pem", value_parser = host_and_path)]
    key: Vec<(String, PathBuf)>,
}

/// `HOST=PATH`, the host in lower case.
fn host_and_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() => Ok((h.to_ascii_lowercase(), p.into())),
        _ => Err("expected HOST=PATH".into()),
    }
}

struct Options {
    listen: SocketAddr,
    names: Vec<String>,
    workers: usize,
    certs: Option<PathBuf>,
    /// Given certificates and keys, by host name.
    given: HashMap<String, (Option<PathBuf>, Option<PathBuf>)>,
}

fn parse_args() -> Options {
    let flags = <Flags as clap::Parser>::parse();
    let mut o = Options {
        listen: flags.listen,
        names: flags.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        workers: flags.workers,
        certs: flags.certs,
        given: HashMap::new(),
    };
    for (host, path) in flags.cert {
        o.given.entry(host).or_default().0 = Some(path);
    }
    for (host, path) in flags.key {
        o.given.entry(host).or_default().1 = Some(path);
    }
    if o.names.is_empty() {
        o.names = if o.given.is_empty() { vec!["a.localhost".into(), "b.localhost".into()] } else { Vec::new() };
    }
    let mut given: Vec<&String> = o.given.keys().collect();
    given.sort();
    for host in given {
        if !o.names.contains(host) {
            o.names.push(host.clone());
        }
    }
    o.names.dedup();
    o
}

/// Where a group's certificate chain and key are.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

/// Every name's files, and the CA's path if one was made.
struct Certificates {
    files: Vec<(String, Files)>,
    ca: Option<PathBuf>,
}

/// A CA made here, and a leaf certificate signed by it for each name that has none given.
fn certificates(o: &Options, dir: &Path) -> Result<Certificates, String> {
    let mut files = Vec::new();
    let mut ca = None;
    for name in &o.names {
        if let Some((cert, key)) = o.given.get(name) {
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(format!("{name}: --cert and --key go together"));
            };
            // Absolute, for workers that may start elsewhere. The parent only checks they are
            // there; it reads neither (the workers do, and say what is wrong with them).
            let abs = |p: &Path| {
                std::fs::metadata(p).and_then(|_| std::path::absolute(p)).map_err(|e| format!("{}: {e}", p.display()))
            };
            files.push((name.clone(), Files { cert: abs(cert)?, key: abs(key)? }));
            continue;
        }
        if ca.is_none() {
            ca = Some(make_ca().map_err(|e| format!("making the CA: {e}"))?);
        }
        let (ca_cert, ca_key) = ca.as_ref().expect("made");
        let (cert_pem, key_pem) =
            make_leaf(name, ca_cert, ca_key).map_err(|e| format!("certificate for {name}: {e}"))?;
        let f = Files { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) };
        write_file(&f.cert, cert_pem.as_bytes(), 0o644)?;
        write_file(&f.key, key_pem.as_bytes(), 0o600)?;
        files.push((name.clone(), f));
    }
    let ca_path = match ca {
        Some((ca_cert, _)) => {
            let path = dir.join("ca.pem");
            write_file(&path, ca_cert.pem().as_bytes(), 0o644)?;
            Some(path)
        }
        None => None,
    };
    Ok(Certificates { files, ca: ca_path })
}

fn make_ca() -> Result<(rcgen::Certificate, rcgen::KeyPair), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "baton tls_router example CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

fn make_leaf(name: &str, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Removes the certificate directory at exit, if this process made it.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn serve_parent(o: Options) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    let (dir, _cleanup) = match &o.certs {
        Some(dir) => (dir.clone(), TempDir(None)),
        None => {
            let dir = std::env::temp_dir().join(format!("baton-tls-router-{}", std::process::id()));
            (dir.clone(), TempDir(Some(dir)))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = std::path::absolute(&dir).map_err(|e| e.to_string())?;
    let Certificates { files, ca } = certificates(&o, &dir)?;
    if let Some(ca) = &ca {
        note!("tls_router: clients trust {}", ca.display());
    }

    let rt = Runtime::new();
    let reactor = Reactor::start().map_err(|e| e.to_string())?;
    let exe = WorkerCommand::current_exe().map_err(|e| e.to_string())?;
    let mut builder = Parent::builder();
    let mut router = sni::ServerName::new();
    for (name, f) in &files {
        // One group per name, named after it; its workers get its certificate and key only
        // (in their environment). `--worker-of NAME` is for `ps` (and the test): a worker
        // reads no arguments.
        let command =
            exe.clone().args(["--worker-of", name]).env(ENV_GROUP, name).env(ENV_CERT, &f.cert).env(ENV_KEY, &f.key);
        builder = builder.spawn_group(name, o.workers, command);
        router = router.route(name, name);
        note!("tls_router: {name}: {} worker(s), certificate {}", o.workers, f.cert.display());
    }
    let parent = builder.start(&rt, &reactor).map_err(|e| e.to_string())?;
    if !parent.wait_ready(Duration::from_secs(10)) {
        note!("tls_router: workers slow to start; serving anyway");
    }
    let listener = parent
        .listen_tcp_with(o.listen, listen_options(), move || router.clone(), HandshakeOptions::default())
        .map_err(|e| format!("listening on {}: {e}", o.listen))?;
    let Address::Inet(addr) = listener.local_addr() else { unreachable!("a TCP listener") };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());

    let sig = signals.forever().next();
    note!("tls_router: signal {}: draining (up to {DRAIN:?})", sig.unwrap_or(-1));
    if let Err(e) = parent.drain(DRAIN) {
        note!("tls_router: drain failed: {e}");
    }
    parent.stop();
    let _ = rt.shutdown(Duration::from_secs(5));
    reactor.stop();
    Ok(())
}

fn main() -> ExitCode {
    let worker_channel = channel_from_env(PeerCheck::SameUid);
    baton_examples::init_logging("tls_router");
    if let Some(channel) = worker_channel {
        return match serve_worker(channel) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                note!("tls_router worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = parse_args();
    // A usage error, like every other bad flag (exit 2), before anything starts.
    if let Some((name, _)) = options.given.iter().find(|(_, (cert, key))| cert.is_none() || key.is_none()) {
        note!("tls_router: {name}: --cert and --key go together");
        return ExitCode::from(2);
    }
    match serve_parent(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("tls_router: {e}");
            ExitCode::FAILURE
        }
    }
}

/// TLS clients speak first: with deferred accept (`TCP_DEFER_ACCEPT`) a connection reaches the
/// parent only once its ClientHello has arrived, so the parent's first read finds it and it
/// never wakes for a bare handshake.
fn listen_options() -> ListenOptions {
    ListenOptions { defer_accept: Some(std::time::Duration::from_secs(5)), ..ListenOptions::default() }
}
