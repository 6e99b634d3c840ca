//! Who gets the file: the allow list, the client limits (overall and per address, shared by
//! every event loop), the pause while the Ctrl+C question is open, and the token, with a
//! throttle on addresses that keep failing to prove it.
//!
//! Owns: the counts of clients in flight, the failed attempts per address, the keys
//! derived from the token, and the verdict. A refusal is a [`Refusal`], a type of its own
//! that each protocol renders its own way (a status and reason in a native header; an HTTP
//! status). Must never know: sockets, sessions' phases, or wire formats. Never logs a
//! secret or anything derived from one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;
use crate::encoding::Digest;
use crate::encoding::auth::Key;
use crate::encoding::xfer::Status;

/// Failed token attempts an address may make before it is refused for a while.
const FREE_FAILURES: u32 = 3;
/// The first penalty; each failure during or after one doubles it, up to MAX_PENALTY.
const FIRST_PENALTY: Duration = Duration::from_secs(1);
const MAX_PENALTY: Duration = Duration::from_secs(60);
/// An address quiet this long has its failures forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses tracked at most; past it, the forgotten and the oldest go first.
const MAX_TRACKED: usize = 65_536;

/// The shared token, in the forms the server uses it: never the token itself.
pub struct Token {
    /// BLAKE3 of the token: HTTP's `Authorization: Bearer` is compared as that.
    pub digest: Digest,
    /// The native protocol's challenge-response key.
    pub native: Key,
    /// The key that signs HTTP links.
    pub links: Key,
}

impl Token {
    pub fn new(secret: &[u8]) -> Token {
        Token { digest: *blake3::hash(secret).as_bytes(), native: Key::native(secret), links: Key::links(secret) }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Refusals in progress per address; past it, that address's connections are answered at
/// once without waiting for their request, so one address cannot fill the slots kept for
/// answering others.
const REFUSING_PER_IP: u32 = 8;

/// Limits and policy for admitting clients.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_clients: usize,
    /// Clients at once from one address; `usize::MAX` for no limit.
    pub max_per_ip: usize,
    pub allow: Vec<Cidr>,
    /// The shared token, when one is required.
    pub token: Option<Arc<Token>>,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    pub quiet: bool,
}

#[cfg(test)]
impl Policy {
    /// For unit tests: ten clients, no per-address limit, anyone, `token` if given, quiet.
    pub fn for_tests(token: Option<&[u8]>) -> Policy {
        Policy {
            max_clients: 10,
            max_per_ip: usize::MAX,
            allow: Vec::new(),
            token: token.map(|t| Arc::new(Token::new(t))),
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            quiet: true,
        }
    }
}

/// Why a client is refused: the server's verdict, which each protocol turns into its own
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not in `--allow`.
    Forbidden,
    BadToken,
    /// A version 1 request to a server with a token: version 1 cannot prove one safely.
    TokenNeedsV2,
    /// HTTP: a signed link whose signature is wrong (403), or whose time is up (410).
    LinkForged,
    LinkExpired,
    /// The server is at `--max-clients`.
    Busy,
    /// Its address is at `--max-per-ip`.
    BusyFromYou,
    /// No good snapshot: the file is being changed.
    Changing,
    /// The Ctrl+C question is open.
    Paused,
    BadRequest,
    UnsupportedVersion,
    BadOffset,
}

impl Refusal {
    /// The native protocol's status for it.
    pub fn status(self) -> Status {
        match self {
            Refusal::Forbidden => Status::Forbidden,
            Refusal::BadToken | Refusal::TokenNeedsV2 | Refusal::LinkForged | Refusal::LinkExpired => Status::BadToken,
            Refusal::Busy | Refusal::BusyFromYou => Status::Busy,
            Refusal::Changing | Refusal::Paused => Status::Unavailable,
            Refusal::BadRequest => Status::BadRequest,
            Refusal::UnsupportedVersion => Status::UnsupportedVersion,
            Refusal::BadOffset => Status::BadOffset,
        }
    }

    /// When the client may usefully try again, if it may at all.
    pub fn retry_after(self) -> Option<std::time::Duration> {
        match self {
            Refusal::Busy | Refusal::BusyFromYou | Refusal::Changing => Some(Duration::from_secs(1)),
            Refusal::Paused => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// The text the client is shown, and the server logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "server busy: at its limit of clients; try again later",
            Refusal::BusyFromYou => "server busy: too many clients from your address; try again later",
            Refusal::Changing => "the file is being changed on the server; try again shortly",
            Refusal::Paused => "server paused; try again shortly",
            Refusal::LinkForged => "this link is not valid",
            Refusal::LinkExpired => "this link has expired; ask for a new one",
            Refusal::TokenNeedsV2 => {
                "this server takes its token by challenge-response (protocol version 2); upgrade xfer"
            }
            other => other.status().default_reason(),
        }
    }
}

/// How a new connection is let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Counted against the limits; it may be served.
    Admitted,
    /// To be refused once its request is read (so that closing does not reset it).
    Refusing(Refusal),
    /// To be refused at once, without waiting for anything.
    Reject(Refusal),
}

/// Clients in flight, overall and per address; shared by every event loop.
#[derive(Debug, Default)]
pub struct Limits {
    active: usize,
    per_ip: HashMap<IpAddr, PerIp>,
    /// Failed token attempts, per address.
    strikes: HashMap<IpAddr, Strikes>,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    /// Refused until then, whatever it presents.
    until: Option<Instant>,
    last: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    admitted: u32,
    refusing: u32,
}

/// One event loop's door: its policy, the shared counts, and whether it is paused.
pub struct Admission {
    pub policy: Policy,
    limits: Arc<Mutex<Limits>>,
    paused: bool,
}

impl Admission {
    pub fn new(policy: Policy, limits: Arc<Mutex<Limits>>) -> Admission {
        Admission { policy, limits, paused: false }
    }

    /// Lets a connection from `ip` in, or says how to refuse it. `changing`: there is no
    /// good snapshot to serve right now.
    pub fn enter(&mut self, ip: IpAddr, changing: bool) -> Entry {
        let allowed = self.policy.allow.is_empty() || self.policy.allow.iter().any(|c| c.contains(ip));
        let mut limits = lock(&self.limits);
        let active = limits.active;
        let counts = limits.per_ip.entry(ip).or_default();
        // Strangers learn nothing but that they are not allowed.
        let refuse = if !allowed {
            Some(Refusal::Forbidden)
        } else if self.paused {
            Some(Refusal::Paused)
        } else if active >= self.policy.max_clients {
            Some(Refusal::Busy)
        } else if counts.admitted as usize >= self.policy.max_per_ip {
            Some(Refusal::BusyFromYou)
        } else if changing {
            Some(Refusal::Changing)
        } else {
            None
        };
        match refuse {
            None => {
                counts.admitted += 1;
                limits.active += 1;
                Entry::Admitted
            }
            // Its entry is in use (by the refusals in progress), so nothing is left behind.
            Some(why) if counts.refusing >= REFUSING_PER_IP => Entry::Reject(why),
            Some(why) => {
                counts.refusing += 1;
                Entry::Refusing(why)
            }
        }
    }

    /// A connection let in by `enter` (admitted or refusing) is gone.
    pub fn leave(&mut self, ip: IpAddr, admitted: bool) {
        let mut limits = lock(&self.limits);
        if admitted {
            limits.active = limits.active.saturating_sub(1);
        }
        if let Some(c) = limits.per_ip.get_mut(&ip) {
            if admitted {
                c.admitted = c.admitted.saturating_sub(1);
            } else {
                c.refusing = c.refusing.saturating_sub(1);
            }
            if c.admitted == 0 && c.refusing == 0 {
                limits.per_ip.remove(&ip);
            }
        }
    }

    /// Whether the token an HTTP client presented (as its BLAKE3 digest) is good: counted
    /// as a success or a failure of `ip` (see [`Admission::judge`]).
    pub fn check_token(&mut self, ip: IpAddr, presented: Option<&Digest>, now: Instant) -> Result<(), Refusal> {
        let Some(want) = self.policy.token.as_ref().map(|t| t.digest) else { return Ok(()) };
        // No credentials is no guess (a browser asks without them first): refused, not
        // counted.
        let Some(got) = presented else { return Err(Refusal::BadToken) };
        self.judge(ip, crate::encoding::auth::same(got, &want), now)
    }

    /// The key of the native challenge-response, when there is a token.
    pub fn native_key(&self) -> Option<&Key> {
        self.policy.token.as_ref().map(|t| &t.native)
    }

    /// The key that signs HTTP links, when there is a token.
    pub fn link_key(&self) -> Option<&Key> {
        self.policy.token.as_ref().map(|t| &t.links)
    }

    /// Records an attempt to prove the token from `ip` and gives the verdict: an address
    /// being penalised is refused whatever it presents, with the same refusal as a wrong
    /// token (no oracle); past [`FREE_FAILURES`], each failure refuses the address for a
    /// growing while. Other addresses are never slowed. A penalty is logged once, when it
    /// starts or grows; nothing about the token is.
    pub fn judge(&mut self, ip: IpAddr, good: bool, now: Instant) -> Result<(), Refusal> {
        let ip = guesser(ip);
        let mut limits = lock(&self.limits);
        let strikes = &mut limits.strikes;
        let penalised = strikes.get(&ip).and_then(|s| s.until).is_some_and(|u| now < u);
        if penalised {
            // Refused unheard, and not counted: a correct client that arrives during the
            // penalty must not make it longer, and a guess made now was never checked.
            return Err(Refusal::BadToken);
        }
        if good {
            strikes.remove(&ip);
            return Ok(());
        }
        if strikes.len() >= MAX_TRACKED && !strikes.contains_key(&ip) {
            strikes.retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
            if strikes.len() >= MAX_TRACKED {
                let oldest = strikes.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    strikes.remove(&k);
                }
            }
        }
        let s = strikes.entry(ip).or_insert(Strikes { failures: 0, until: None, last: now });
        if now.duration_since(s.last) >= FORGET_AFTER {
            *s = Strikes { failures: 0, until: None, last: now };
        }
        s.failures += 1;
        s.last = now;
        if s.failures > FREE_FAILURES {
            let penalty = FIRST_PENALTY.saturating_mul(1 << (s.failures - FREE_FAILURES - 1).min(16)).min(MAX_PENALTY);
            s.until = Some(now + penalty);
            // Once per penalty: attempts during it are refused without a word.
            let failures = s.failures;
            drop(limits);
            if !self.policy.quiet {
                crate::say!("{ip}: {failures} failed token attempts; refusing it for {} s", penalty.as_secs_f64());
            }
        }
        Err(Refusal::BadToken)
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Clients in flight in the whole server.
    pub fn in_flight(&self) -> usize {
        lock(&self.limits).active
    }
}

/// Who is counted for failed attempts: an IPv4 address, or an IPv6 /64, the block a single
/// host or site usually gets (counting single IPv6 addresses would let one host guess from
/// 2^64 of them).
fn guesser(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`; limits, the allow
/// list and the logs all want the plain IPv4 address.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// An address block for `--allow`: `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        // A mapped IPv6 block is stored as IPv4 so that it matches IPv4 clients.
        let (addr, max, shift) = match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() => (IpAddr::V4(v4), 32u8, 96u8),
            IpAddr::V4(v4) => (IpAddr::V4(v4), 32, 0),
            v6 => (v6, 128, 0),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let p: u8 = p.parse().map_err(|_| format!("`{s}`: bad prefix length"))?;
                if p < shift || p - shift > max {
                    return Err(format!("`{s}`: prefix length out of range"));
                }
                p - shift
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_clients: 3,
            max_per_ip: 2,
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            token: None,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            quiet: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        canonical(SocketAddr::new(s.parse().unwrap(), 1)).ip()
    }

    #[test]
    fn limits_allow_list_and_refusals_in_progress() {
        let mut a = Admission::new(policy(), Arc::default());
        assert_eq!(a.enter(ip("127.0.0.1"), false), Entry::Admitted);
        assert_eq!(a.enter(ip("::ffff:127.0.0.1"), false), Entry::Admitted, "mapped addresses count as IPv4");
        assert_eq!(a.enter(ip("127.0.0.1"), false), Entry::Refusing(Refusal::BusyFromYou));
        assert_eq!(a.enter(ip("127.0.0.2"), false), Entry::Admitted);
        assert_eq!(a.enter(ip("127.0.0.3"), false), Entry::Refusing(Refusal::Busy), "client cap");
        assert_eq!(a.enter(ip("10.0.0.1"), false), Entry::Refusing(Refusal::Forbidden));
        // One address may hold only a few refusals in progress; past that, at once.
        for _ in 1..REFUSING_PER_IP {
            assert_eq!(a.enter(ip("10.0.0.9"), false), Entry::Refusing(Refusal::Forbidden));
        }
        assert_eq!(a.enter(ip("10.0.0.9"), false), Entry::Refusing(Refusal::Forbidden));
        assert_eq!(a.enter(ip("10.0.0.9"), false), Entry::Reject(Refusal::Forbidden));
        assert_eq!(a.in_flight(), 3);
        a.leave(ip("127.0.0.1"), true);
        a.leave(ip("127.0.0.1"), false);
        assert_eq!(a.in_flight(), 2);
        assert_eq!(a.enter(ip("127.0.0.1"), false), Entry::Admitted);
        for _ in 0..REFUSING_PER_IP {
            a.leave(ip("10.0.0.9"), false);
        }
        assert_eq!(a.enter(ip("10.0.0.9"), false), Entry::Refusing(Refusal::Forbidden), "refusal slots come back");
    }

    #[test]
    fn pause_and_changing() {
        let mut a = Admission::new(policy(), Arc::default());
        a.set_paused(true);
        assert_eq!(a.enter(ip("127.0.0.1"), false), Entry::Refusing(Refusal::Paused));
        assert_eq!(a.enter(ip("10.0.0.1"), false), Entry::Refusing(Refusal::Forbidden), "strangers learn nothing");
        a.set_paused(false);
        assert_eq!(a.enter(ip("127.0.0.1"), true), Entry::Refusing(Refusal::Changing));
        assert_eq!(a.enter(ip("127.0.0.1"), false), Entry::Admitted);
    }

    #[test]
    fn tokens() {
        let mut p = policy();
        p.token = Some(Arc::new(Token::new(b"secret")));
        let mut a = Admission::new(p, Arc::default());
        let now = Instant::now();
        let good = *blake3::hash(b"secret").as_bytes();
        assert_eq!(a.check_token(ip("127.0.0.1"), Some(&good), now), Ok(()));
        assert_eq!(
            a.check_token(ip("127.0.0.1"), Some(blake3::hash(b"Secret").as_bytes()), now),
            Err(Refusal::BadToken)
        );
        assert_eq!(a.check_token(ip("127.0.0.1"), None, now), Err(Refusal::BadToken));
        assert_eq!(Admission::new(policy(), Arc::default()).check_token(ip("127.0.0.1"), None, now), Ok(()));
        assert!(a.link_key().is_some() && a.native_key().is_some());
        assert_ne!(
            a.link_key().map(|k| k.sign_link(b"/x", 1)),
            a.native_key().map(|k| k.sign_link(b"/x", 1)),
            "one key per use"
        );
        let open = Admission::new(policy(), Arc::default());
        assert!(open.link_key().is_none() && open.native_key().is_none());
        assert_eq!(format!("{:?}", Token::new(b"secret")), "Token(<redacted>)");
    }

    /// Every refusal tells the client why, in words of its own, with the status its protocol
    /// needs and a retry hint only where retrying can help.
    #[test]
    fn each_refusal_has_its_own_reason_status_and_hint() {
        use Refusal::*;
        let all = [
            Forbidden,
            BadToken,
            TokenNeedsV2,
            LinkForged,
            LinkExpired,
            Busy,
            BusyFromYou,
            Changing,
            Paused,
            BadRequest,
            UnsupportedVersion,
            BadOffset,
        ];
        let reasons: std::collections::HashSet<&str> = all.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons.len(), all.len(), "two refusals read the same");
        for r in all {
            assert!(r.reason().len() >= 10 && r.reason().is_ascii(), "{r:?}: {:?}", r.reason());
            assert_eq!(r.retry_after().is_some(), matches!(r, Busy | BusyFromYou | Changing | Paused), "{r:?}");
        }
        assert!(Forbidden.reason().contains("not allowed"));
        assert!(BadToken.reason().contains("token"));
        assert!(BadOffset.reason().contains("past the end"));
        assert!(UnsupportedVersion.reason().contains("version"));
        assert!(Paused.retry_after() > Busy.retry_after(), "a paused server needs longer than a busy one");
        let statuses = [
            (Forbidden, Status::Forbidden),
            (BadToken, Status::BadToken),
            (TokenNeedsV2, Status::BadToken),
            (LinkForged, Status::BadToken),
            (LinkExpired, Status::BadToken),
            (Busy, Status::Busy),
            (BusyFromYou, Status::Busy),
            (Changing, Status::Unavailable),
            (Paused, Status::Unavailable),
            (BadRequest, Status::BadRequest),
            (UnsupportedVersion, Status::UnsupportedVersion),
            (BadOffset, Status::BadOffset),
        ];
        for (r, s) in statuses {
            assert_eq!(r.status(), s, "{r:?}");
        }
    }

    /// Counts per address go when its last connection does, and only then.
    #[test]
    fn per_address_counts_are_kept_exactly_while_in_use() {
        let mut a = Admission::new(policy(), Arc::default());
        let (one, count) = (ip("127.0.0.1"), |a: &Admission| lock(&a.limits).per_ip.get(&ip("127.0.0.1")).copied());
        assert_eq!(a.enter(one, false), Entry::Admitted);
        assert_eq!(a.enter(one, false), Entry::Admitted);
        assert_eq!(a.enter(one, false), Entry::Refusing(Refusal::BusyFromYou), "max_per_ip is 2");
        a.leave(one, true);
        a.leave(one, true);
        let c = count(&a).expect("a refusal is still in progress");
        assert_eq!((c.admitted, c.refusing), (0, 1));
        assert_eq!(a.enter(one, false), Entry::Admitted);
        a.leave(one, false);
        let c = count(&a).expect("a client is still in flight");
        assert_eq!((c.admitted, c.refusing), (1, 0));
        a.leave(one, true);
        assert!(lock(&a.limits).per_ip.is_empty(), "nothing left behind");
        assert_eq!(a.in_flight(), 0);
        // Rejected at once: nothing is left behind either.
        for _ in 0..REFUSING_PER_IP + 3 {
            a.enter(ip("10.0.0.9"), false);
        }
        for _ in 0..REFUSING_PER_IP {
            a.leave(ip("10.0.0.9"), false);
        }
        assert!(lock(&a.limits).per_ip.is_empty());
    }

    /// The table of guessers is bounded: when full, entries older than FORGET_AFTER go
    /// first, then the oldest one; an address already in it never pushes another out.
    #[test]
    fn the_guess_table_is_bounded_and_forgets() {
        let mut a = Admission::new(policy(), Arc::default());
        let t0 = Instant::now();
        let v4 = |n: usize| IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        let len = |a: &Admission| lock(&a.limits).strikes.len();
        let heavy = ip("192.0.2.1");
        for _ in 0..=FREE_FAILURES {
            a.judge(heavy, false, t0).unwrap_err();
        }
        for n in 1..MAX_TRACKED {
            a.judge(v4(n), false, t0 + Duration::from_millis(1)).unwrap_err();
        }
        assert_eq!(len(&a), MAX_TRACKED);
        // Full, and a known address fails again: nobody is pushed out.
        a.judge(v4(7), false, t0 + Duration::from_millis(2)).unwrap_err();
        assert_eq!(len(&a), MAX_TRACKED);
        assert_eq!(a.judge(heavy, true, t0 + Duration::from_millis(3)), Err(Refusal::BadToken), "still penalised");
        // Full, and a new address: the oldest entry (the heavy guesser's) makes room.
        a.judge(ip("192.0.2.2"), false, t0 + Duration::from_millis(4)).unwrap_err();
        assert_eq!(len(&a), MAX_TRACKED);
        assert!(!lock(&a.limits).strikes.contains_key(&heavy));
        // Much later, one recent entry and many stale ones: only the stale ones go.
        let mut b = Admission::new(policy(), Arc::default());
        for n in 1..MAX_TRACKED {
            b.judge(v4(n), false, t0).unwrap_err();
        }
        b.judge(heavy, false, t0 + Duration::from_secs(1)).unwrap_err();
        b.judge(ip("192.0.2.2"), false, t0 + FORGET_AFTER).unwrap_err();
        assert_eq!(len(&b), 2, "the recent one and the newcomer");
    }

    #[test]
    fn a_penalty_ends_exactly_when_it_says() {
        let mut a = Admission::new(policy(), Arc::default());
        let (bad, t0) = (ip("127.0.0.1"), Instant::now());
        for _ in 0..=FREE_FAILURES {
            a.judge(bad, false, t0).unwrap_err();
        }
        assert_eq!(a.judge(bad, true, t0 + FIRST_PENALTY - Duration::from_nanos(1)), Err(Refusal::BadToken));
        assert_eq!(a.judge(bad, true, t0 + FIRST_PENALTY), Ok(()));
    }

    #[test]
    fn failed_attempts_are_throttled_per_address() {
        let mut a = Admission::new(policy(), Arc::default());
        let (bad, other) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(a.judge(bad, false, t0), Err(Refusal::BadToken));
        }
        assert_eq!(a.judge(bad, true, t0), Ok(()), "free failures, then a good token: fine, and forgiven");
        for _ in 0..50 {
            assert_eq!(a.judge(bad, false, t0), Err(Refusal::BadToken));
        }
        // Penalised: even the right token is refused, the same way (no oracle)...
        assert_eq!(a.judge(bad, true, t0 + Duration::from_millis(500)), Err(Refusal::BadToken));
        // ... but nobody else is slowed.
        assert_eq!(a.judge(other, true, t0), Ok(()));
        // After the penalty (at most a minute), the right token works again.
        assert_eq!(a.judge(bad, true, t0 + MAX_PENALTY + Duration::from_secs(1)), Ok(()));
        assert_eq!(a.judge(bad, false, t0 + MAX_PENALTY + Duration::from_secs(2)), Err(Refusal::BadToken));
        assert_eq!(a.judge(bad, true, t0 + MAX_PENALTY + Duration::from_secs(3)), Ok(()), "forgiven again");
    }

    #[test]
    fn an_ipv6_block_guesses_as_one() {
        let mut a = Admission::new(policy(), Arc::default());
        let t0 = Instant::now();
        for i in 0..=FREE_FAILURES {
            let addr = ip(&format!("2001:db8::{:x}", i + 1));
            assert_eq!(a.judge(addr, false, t0), Err(Refusal::BadToken));
        }
        assert_eq!(a.judge(ip("2001:db8::ffff:1"), true, t0), Err(Refusal::BadToken), "same /64: penalised");
        assert_eq!(a.judge(ip("2001:db8:0:1::1"), true, t0), Ok(()), "the next /64 is not");
    }

    #[test]
    fn penalties_grow_with_checked_failures_only() {
        let mut a = Admission::new(policy(), Arc::default());
        let bad = ip("127.0.0.1");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..=FREE_FAILURES {
            assert_eq!(a.judge(bad, false, t0), Err(Refusal::BadToken));
        }
        // Attempts during the first penalty are not counted: it still ends after FIRST_PENALTY.
        for ms in [100, 400, 900] {
            assert_eq!(a.judge(bad, false, at(ms)), Err(Refusal::BadToken));
            assert_eq!(a.judge(bad, true, at(ms)), Err(Refusal::BadToken));
        }
        let after_first = FIRST_PENALTY.as_millis() as u64 + 50;
        // The next checked failure doubles it...
        assert_eq!(a.judge(bad, false, at(after_first)), Err(Refusal::BadToken));
        let second = after_first + 2 * FIRST_PENALTY.as_millis() as u64;
        assert_eq!(a.judge(bad, true, at(second - 100)), Err(Refusal::BadToken));
        // ... and a correct client after it is served.
        assert_eq!(a.judge(bad, true, at(second + 50)), Ok(()));
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(c.contains("192.168.1.77".parse().unwrap()));
        assert!(c.contains("::ffff:192.168.1.77".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let doc: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(doc.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!doc.contains("2001:db9::1".parse().unwrap()));
        assert!(!doc.contains("1.2.3.4".parse().unwrap()));
        let any6: Cidr = "::/0".parse().unwrap();
        assert!(any6.contains("2001:db9::1".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        // The longest prefixes are single addresses, and allowed.
        let one: Cidr = "10.0.0.1/32".parse().unwrap();
        assert!(one.contains("10.0.0.1".parse().unwrap()) && !one.contains("10.0.0.2".parse().unwrap()));
        let one6: Cidr = "::1/128".parse().unwrap();
        assert!(one6.contains("::1".parse().unwrap()) && !one6.contains("::2".parse().unwrap()));
        assert!("::ffff:10.0.0.1/128".parse::<Cidr>().unwrap().contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x", "::ffff:1.2.3.4/90"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
