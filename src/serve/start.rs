//! Starting `xfer serve`: the options, the listening socket (bound before the file is read,
//! so a port in use fails at once), the first snapshot, the event loops sharing that one
//! socket, and the banner on stdout.
//!
//! Owns the order of start-up and what is printed before serving begins. Must never know
//! how a client is served.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::admit::{Cidr, Policy};
use super::session::{Server, Shared};
use super::snapshot::{InputError, Snapshot};
use super::{shown, watch};

/// Everything `xfer serve` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub file: PathBuf,
    /// `--listen`: an address or host name, with or without a port.
    pub listen: Option<String>,
    /// `--port`: when `--listen` names a port too, the two must agree.
    pub port: Option<u16>,
    pub quiet: bool,
    pub max_clients: Option<usize>,
    /// `None`: no limit per address.
    pub max_per_ip: Option<usize>,
    pub allow: Vec<Cidr>,
    pub token: Option<Vec<u8>>,
    /// The token was generated for this run: print it once, after the banner.
    pub generated_token: bool,
    /// Where the token was read from, for the banner's fetch command (never the token).
    pub token_file: Option<PathBuf>,
    /// Print HTTP links signed with the token, valid this long.
    pub link_ttl: Option<Duration>,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    pub threads: usize,
    /// HTTP `Cache-Control: max-age` in seconds; 0 sends `no-cache`.
    pub max_age: u32,
}

/// Why `serve` could not start or had to stop.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("bad --listen `{0}`: {1}")]
    BadListen(String, crate::encoding::target::TargetError),
    #[error("--listen {listen} names port {listen_port}, but --port says {port}; give the port once")]
    PortConflict { listen: String, listen_port: u16, port: u16 },
    #[error("cannot resolve --listen {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("event loop failed: {0}")]
    Poll(#[source] io::Error),
}

impl ServeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Input(_) => crate::exit::LOCAL_IO,
            ServeError::BadListen(..) | ServeError::PortConflict { .. } => crate::exit::USAGE,
            ServeError::Resolve { .. } | ServeError::Bind { .. } => crate::exit::NETWORK,
            ServeError::Poll(_) => crate::exit::INTERNAL,
        }
    }
}

/// Bytes a client may move per turn of the loop before the others get theirs
/// (nginx's sendfile_max_chunk).
pub const BUDGET: usize = 512 * 1024;

/// Files at least this large are announced before they are hashed, since hashing them
/// (from a cold disk especially) takes a moment the user should not mistake for a hang.
const ANNOUNCE_HASHING: u64 = 64 << 20;

/// Runs `xfer serve` until it is asked to exit.
pub fn run(opts: &Options) -> Result<crate::reactor::Exit, ServeError> {
    use std::io::IsTerminal;
    // Bind first: a port in use must fail at once, not after hashing a large file.
    // Clients that connect meanwhile wait in the backlog.
    let addrs = listen_addrs(opts)?;
    let (listener, addr) = bind_first(&addrs)?;
    // Watch before hashing, so a write during or after the hash is never missed.
    let watch = match watch::Watch::new(&opts.file) {
        Ok(w) => Some(w),
        Err(e) => {
            crate::say!(
                "xfer: cannot watch {} for changes ({e}); looking every {} s instead",
                shown(&opts.file),
                super::reload::CHANGE_CHECK_EVERY.as_secs_f64()
            );
            None
        }
    };
    let snapshot = Arc::new(hash_announced(&opts.file)?);
    let nofile = crate::reactor::raise_nofile_limit();
    // Leave descriptors for the listener, epoll, signals, stdio and the served file, and
    // room to answer "busy" to some clients over the limit instead of dropping them.
    let reserve = (nofile / 4).min(64);
    let max_clients = opts.max_clients.unwrap_or(((nofile - reserve) * 7 / 8).max(1));
    // The limits are shared by all loops; each loop's slab is sized for all of them, since
    // any loop may accept any share of the connections.
    let slack = (max_clients / 8).clamp(8, 1024);
    let policy = Policy {
        max_clients,
        max_per_ip: opts.max_per_ip.unwrap_or(usize::MAX),
        allow: opts.allow.clone(),
        token: opts.token.as_ref().map(|t| Arc::new(super::admit::Token::new(t))),
        request_timeout: opts.request_timeout,
        send_timeout: opts.send_timeout,
        quiet: opts.quiet,
    };
    let shared = Shared::new(snapshot.clone());
    let http = crate::serve::http::Config {
        max_age: opts.max_age,
        fallback_host: format!("{}:{}", host_of(addr), addr.port()),
        links: opts.token.as_deref().map(crate::encoding::auth::Key::links),
    };
    let cfg = crate::reactor::Config {
        max_sessions: max_clients.saturating_add(slack),
        budget: BUDGET,
        drain_timeout: opts.drain_timeout,
        signals: true,
        interactive: std::io::stdin().is_terminal(),
        shared_listener: opts.threads > 1,
    };
    let clone = |l: &std::net::TcpListener| {
        l.try_clone()
            .map(mio::net::TcpListener::from_std)
            .map_err(|source| ServeError::Bind { addr: addr.to_string(), source })
    };
    // The first loop owns the signals, the prompt and the watch, and tells the others
    // what to do.
    let mut server = Server::with_shared(&shared, policy.clone(), http.clone());
    if let Some(w) = watch {
        server.watch(w);
    }
    let mut reactor = crate::reactor::Reactor::new(clone(&listener)?, server, cfg.clone()).map_err(ServeError::Poll)?;
    let leader = reactor.controller().map_err(ServeError::Poll)?;
    let mut followers = Vec::new();
    let mut handles = Vec::new();
    for _ in 1..opts.threads.max(1) {
        let server = Server::with_shared(&shared, policy.clone(), http.clone());
        let mut follower = crate::reactor::Reactor::new(
            clone(&listener)?,
            server,
            crate::reactor::Config { signals: false, ..cfg.clone() },
        )
        .map_err(ServeError::Poll)?;
        followers.push(follower.controller().map_err(ServeError::Poll)?);
        let leader = leader.clone();
        handles.push(std::thread::spawn(move || {
            let r = follower.run();
            // However it ended, the leader must stop waiting for this loop.
            leader.send(crate::reactor::Command::FollowerDone);
            r
        }));
    }
    reactor.set_followers(followers);
    // Only the loops hold the socket now: when the last one stops listening, connects fail.
    drop(listener);
    // The first line is the contract with scripts and tests: the real bound address. It is
    // printed once everything is set up, so whoever reads it finds a server in its steady
    // state (all descriptors open, signals handled).
    crate::say_out(format_args!("{}", banner(opts, addr, &snapshot)));
    // Asked for: after the banner, never in it, and only ever here.
    if opts.generated_token
        && let Some(t) = &opts.token
    {
        crate::say_out(format_args!(
            "token (shown only now; keep it in a file for --token-file): {}\n",
            String::from_utf8_lossy(t)
        ));
    }
    if let (Some(ttl), Some(key)) = (opts.link_ttl, &http.links) {
        crate::say_out(format_args!("{}", signed_links(key, ttl, addr, &snapshot)));
    }
    // From here on only the sessions and the shared cell hold snapshots, so a reload
    // really lets go of the old descriptor (and a replaced file's disk space).
    drop(snapshot);
    drop(shared);
    let exit = reactor.run().map_err(ServeError::Poll)?;
    for h in handles {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ServeError::Poll(e)),
            Err(_) => return Err(ServeError::Poll(io::Error::other("an event loop thread panicked"))),
        }
    }
    Ok(exit)
}

/// Takes the first snapshot, saying so first when the file is large (with a progress bar
/// when stderr is a terminal).
fn hash_announced(file: &Path) -> Result<Snapshot, InputError> {
    use std::io::IsTerminal;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size < ANNOUNCE_HASHING {
        return Snapshot::open(file);
    }
    crate::say!("hashing {} ({}) ...", shown(file), crate::human_bytes(size));
    if !io::stderr().is_terminal() {
        return Snapshot::open(file);
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{decimal_bytes:>10}/{decimal_total_bytes} {decimal_bytes_per_sec:>12} eta {eta:>4} [{wide_bar}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let r = Snapshot::open_with(file, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    r
}

/// How others reach this address: the host name for a wildcard address, else the
/// address itself (IPv6 in brackets, with its zone).
fn host_of(addr: SocketAddr) -> String {
    match addr {
        a if a.ip().is_unspecified() => hostname(),
        SocketAddr::V6(v6) if v6.scope_id() != 0 => format!("[{}%{}]", v6.ip(), v6.scope_id()),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        a => a.ip().to_string(),
    }
}

/// The lines printed on stdout at start: the address, the file, a command that fetches
/// it (quoted so that it can be pasted into a shell as it is), and its HTTP address.
fn banner(opts: &Options, addr: SocketAddr, snap: &Snapshot) -> String {
    use crate::encoding::text::shell_quote;
    let host = host_of(addr);
    let name = opts.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    let target = shell_quote(&format!("{host}:{}", addr.port())).into_owned();
    let out = shell_quote(&format!("output_file/{name}")).into_owned();
    // The command pins the digest (--expect), so whoever copies it from here gets this file
    // or nothing. A token is named only by where it lives: a token file, or $XFER_TOKEN,
    // which fetch reads by itself; never by its value.
    let token = match (&opts.token, &opts.token_file) {
        (Some(_), Some(file)) => format!(" --token-file {}", shell_quote(&file.to_string_lossy())),
        _ => String::new(),
    };
    let token_note = if opts.token.is_some() {
        "a token is required: fetch reads it from --token-file FILE or $XFER_TOKEN; \
         HTTP clients send `Authorization: Bearer TOKEN`\n"
    } else {
        ""
    };
    let digest = blake3::Hash::from_bytes(*snap.digest()).to_hex();
    let url = format!("http://{host}:{}/{}", addr.port(), crate::encoding::http::url_segment(snap.name()));
    format!(
        "listening on {addr}\nserving {}: {} bytes, blake3 {digest}\n\
         fetch it with: xfer fetch {target} {out} --expect blake3:{digest}{token}\n\
         or over HTTP (curl, wget, a browser): {url}\n{token_note}",
        shown(&opts.file),
        snap.size(),
    )
}

/// Links to the file and to its page, signed with the token, that work without it until
/// `ttl` from now.
fn signed_links(key: &crate::encoding::auth::Key, ttl: Duration, addr: SocketAddr, snap: &Snapshot) -> String {
    use crate::serve::http::link_query;
    let now = std::time::SystemTime::now();
    let expires = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().saturating_add(ttl).as_secs();
    let until = crate::encoding::http::fmt_date(std::time::UNIX_EPOCH + Duration::from_secs(expires));
    let base = format!("http://{}:{}", host_of(addr), addr.port());
    let file = format!("/{}", crate::encoding::http::url_segment(snap.name()));
    let mut file_bytes = b"/".to_vec();
    file_bytes.extend_from_slice(snap.name());
    format!(
        "signed link to the file, valid until {until}: {base}{file}{}\nsigned link to its page: {base}/{}\n",
        link_query(key, &file_bytes, expires),
        link_query(key, b"/", expires),
    )
}

/// The addresses to try, in order: `--listen` as given, or dual-stack `[::]` then `0.0.0.0`.
fn listen_addrs(opts: &Options) -> Result<Vec<SocketAddr>, ServeError> {
    use crate::encoding::target;
    let Some(l) = &opts.listen else {
        let port = opts.port.unwrap_or(crate::DEFAULT_PORT);
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
        ]);
    };
    let t = target::parse(l).map_err(|e| ServeError::BadListen(l.clone(), e))?;
    if let (Some(listen_port), Some(port)) = (t.port, opts.port)
        && listen_port != port
    {
        return Err(ServeError::PortConflict { listen: l.clone(), listen_port, port });
    }
    let port = t.port.or(opts.port).unwrap_or(crate::DEFAULT_PORT);
    crate::reactor::resolve(&t, port).map_err(|source| ServeError::Resolve { host: t.host.to_string(), source })
}

fn bind_first(addrs: &[SocketAddr]) -> Result<(std::net::TcpListener, SocketAddr), ServeError> {
    let mut last = None;
    for a in addrs {
        match crate::reactor::bind(*a) {
            Ok(l) => {
                let bound = l.local_addr().map_err(|source| ServeError::Bind { addr: a.to_string(), source })?;
                return Ok((l, bound));
            }
            Err(source) => last = Some(ServeError::Bind { addr: a.to_string(), source }),
        }
    }
    Err(last.unwrap_or_else(|| ServeError::Resolve {
        host: String::new(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() { "localhost".into() } else { name }
}
