//! Who may knock, and how often: the `Origin` allow-list and CORS, the JSON-only rule for HTTP
//! request bodies, and every rate limit (per WebSocket connection, per client IP, per HTTP
//! caller), all built on `governor`'s GCRA limiters.
//!
//! Invariants: a request from an origin not in `--allowed-origins` is refused before it touches a
//! room; CORS headers are only ever sent for an allowed origin (echoed, with `Vary: Origin`). Every
//! limit is off when its rate is 0, and then costs nothing (no limiter exists). A per-connection
//! check is one atomic operation ([`ConnLimits`]); keyed state (per IP, per caller) is swept once a
//! second ([`Guard::sweep`]) so it never outgrows the callers seen within a burst's refill time,
//! and the per-IP open-connection count holds exactly the IPs with an open (or upgrading)
//! WebSocket: each [`IpSlot`] releases its count when it drops, however the connection ends.
//! Bearer tokens are never stored: a caller is keyed by a per-process keyed hash of its token.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::header::{self, HeaderMap, HeaderValue};

use crate::config::{Config, parse_origins};
use crate::metrics::RateLimit;

/// The client's IP address, put in each request's extensions by the server at accept.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Methods a preflight may ask for.
const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers a cross-origin page may send.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
/// How long a browser may cache a preflight answer (seconds).
const MAX_AGE: &str = "600";
/// Response headers a cross-origin page may read besides the simple ones.
const EXPOSE_HEADERS: &str = "Retry-After";
/// The wait suggested when no refill time applies (a concurrency limit).
const RETRY_CONCURRENT: Duration = Duration::from_secs(1);

/// Something refused by a rate limit, and when trying again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub limit: RateLimit,
    pub retry_after: Duration,
}

impl RateLimited {
    fn new(limit: RateLimit, retry_after: Duration) -> Self {
        limit.count();
        RateLimited { limit, retry_after }
    }

    /// The wait in whole milliseconds, rounded up (at least 1).
    pub fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1)
    }

    /// The wait in whole seconds, rounded up (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(u64::MAX)
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        let what = match self.limit {
            RateLimit::Changes => "too many changes and broadcasts (--rate-changes)",
            RateLimit::InboundBytes => "too many bytes sent (--rate-inbound-bytes)",
            RateLimit::Strikes => "too many messages over the rate limits (--rate-limit-strikes)",
            RateLimit::IpConnectionRate => {
                "too many new connections from this address (--rate-ip-connections)"
            }
            RateLimit::IpConnections => "too many connections open from this address (--max-ip-connections)",
            RateLimit::HttpRequests => "too many requests (--rate-http)",
        };
        format!("{what}; nothing was done: retry after {} ms", self.retry_after_ms())
    }
}

/// A quota of `rate` per second with a burst of `burst`; `None` (no limit) when `rate` is 0.
fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

/// `n` cells (at most `u32::MAX`), or `None` for 0.
fn cells(n: usize) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Whether an `Origin` may act on rooms, and the value to echo for CORS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` header: not a browser's cross-origin request (back-end, curl). Passes.
    Absent,
    /// Listed (or `*`): passes, and CORS headers echo this value.
    Allowed(HeaderValue),
    /// Present and not listed: refused with 403 `origin_not_allowed`.
    Refused,
}

/// The server-wide guards, shared by every request (held in `App`).
pub struct Guard {
    /// `None` = any origin (`*`), else the exact origins, lower-cased.
    origins: Option<Vec<String>>,
    ip_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    max_ip_connections: usize,
    /// Open (or upgrading) WebSockets per IP; an IP is present only while it has one.
    ip_open: Arc<DashMap<IpAddr, usize>>,
    http: Option<DefaultKeyedRateLimiter<Caller>>,
    /// Keys the hash of bearer tokens: fresh per process, so the hashes say nothing outside it.
    token_hasher: RandomState,
}

/// Whom an HTTP request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    /// The keyed hash of a bearer token (never the token).
    Token(u64),
    Ip(IpAddr),
}

impl Guard {
    /// The guards `config` asks for (it has been validated; an invalid origin list allows none).
    pub fn new(config: &Config) -> Guard {
        Guard {
            origins: parse_origins(&config.allowed_origins).unwrap_or(Some(Vec::new())),
            ip_rate: quota(config.rate_ip_connections, config.rate_ip_connections_burst)
                .map(RateLimiter::dashmap),
            max_ip_connections: config.max_ip_connections,
            ip_open: Arc::new(DashMap::new()),
            http: quota(config.rate_http, config.rate_http_burst).map(RateLimiter::dashmap),
            token_hasher: RandomState::new(),
        }
    }

    /// Checks the request's `Origin` against `--allowed-origins`.
    pub fn check_origin(&self, headers: &HeaderMap) -> OriginCheck {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return OriginCheck::Absent;
        };
        let allowed = match &self.origins {
            None => true,
            Some(list) => origin.to_str().is_ok_and(|o| list.iter().any(|a| a.eq_ignore_ascii_case(o))),
        };
        if allowed { OriginCheck::Allowed(origin.clone()) } else { OriginCheck::Refused }
    }

    /// [`Guard::check_origin`] for the admin API, where `*` does not count: a browser page may
    /// call it only from an origin listed by name. (Without a token file the admin API trusts
    /// loopback callers, and an operator's browser is one: `*` would let any page they visit
    /// close or delete rooms.)
    pub fn check_admin_origin(&self, headers: &HeaderMap) -> OriginCheck {
        match (self.check_origin(headers), &self.origins) {
            (OriginCheck::Allowed(_), None) => OriginCheck::Refused,
            (check, _) => check,
        }
    }

    /// A new WebSocket from `ip`: under `--rate-ip-connections` and `--max-ip-connections`, its
    /// place among that IP's open connections (released when the slot drops).
    ///
    /// # Errors
    /// Which limit refused it, counted, and when to retry.
    pub fn admit_ip(&self, ip: Option<IpAddr>) -> Result<IpSlot, RateLimited> {
        let Some(ip) = ip else { return Ok(IpSlot(None)) };
        if self.max_ip_connections != 0 {
            match self.ip_open.entry(ip) {
                Entry::Occupied(o) if *o.get() >= self.max_ip_connections => {
                    return Err(RateLimited::new(RateLimit::IpConnections, RETRY_CONCURRENT));
                }
                // Taken before the rate check, so a refusal by rate must give it back (below).
                Entry::Occupied(mut o) => *o.get_mut() += 1,
                Entry::Vacant(v) => {
                    v.insert(1);
                }
            }
        }
        let slot = IpSlot((self.max_ip_connections != 0).then(|| (self.ip_open.clone(), ip)));
        if let Some(limiter) = &self.ip_rate
            && let Err(not_until) = limiter.check_key(&ip)
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(RateLimited::new(RateLimit::IpConnectionRate, wait));
        }
        Ok(slot)
    }

    /// Open WebSockets counted against `ip`.
    pub fn ip_connections(&self, ip: IpAddr) -> usize {
        self.ip_open.get(&ip).map_or(0, |n| *n)
    }

    /// One HTTP API request, counted against its bearer token if it has one, else its IP.
    ///
    /// # Errors
    /// `--rate-http` reached for this caller, counted, and when to retry.
    pub fn check_http(&self, headers: &HeaderMap, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        let Some(limiter) = &self.http else { return Ok(()) };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim()))
            .filter(|t| !t.is_empty());
        let caller = match (token, ip) {
            (Some(t), _) => Caller::Token(self.token_hasher.hash_one(t)),
            (None, Some(ip)) => Caller::Ip(ip),
            (None, None) => return Ok(()),
        };
        limiter.check_key(&caller).map_err(|not_until| {
            RateLimited::new(RateLimit::HttpRequests, not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Once a second: forgets keyed limiter state that has refilled completely (it would allow a
    /// full burst anyway), and gives the memory back.
    pub fn sweep(&self) {
        if let Some(limiter) = &self.ip_rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.http {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keyed limiter entries held (per-IP connection rate plus HTTP callers).
    pub fn keyed_entries(&self) -> usize {
        self.ip_rate.as_ref().map_or(0, |l| l.len()) + self.http.as_ref().map_or(0, |l| l.len())
    }
}

/// A WebSocket's place among its IP's open connections under `--max-ip-connections`; the count
/// drops (and the IP is forgotten at zero) when this does.
pub struct IpSlot(Option<(Arc<DashMap<IpAddr, usize>>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((map, ip)) = &self.0 {
            map.remove_if_mut(ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// Whether `headers` declare a JSON body: `application/json`, optionally `; charset=utf-8`.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(Ok(ct)) = headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let mut parts = ct.split(';').map(str::trim);
    if !parts.next().is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return false;
    }
    parts.all(|p| {
        p.is_empty()
            || p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("charset")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            })
    })
}

/// Whether a request carries a body (or, for POST, should): such a request must be JSON.
pub fn has_body(method: &hyper::Method, headers: &HeaderMap) -> bool {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    declared
        || headers.contains_key(header::TRANSFER_ENCODING)
        || matches!(*method, hyper::Method::POST | hyper::Method::PUT | hyper::Method::PATCH)
}

/// Whether a request is a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`).
pub fn is_preflight(method: &hyper::Method, headers: &HeaderMap) -> bool {
    *method == hyper::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Adds the CORS headers of an actual response to a request from allowed `origin`.
pub fn add_cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
}

/// Adds the headers of a preflight answer for allowed `origin`.
pub fn add_preflight(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
}

/// One WebSocket's limits: `--rate-changes` on changes and broadcasts, `--rate-inbound-bytes` on
/// every message, and the error budget (`--rate-limit-strikes` per `--rate-limit-window`) past
/// which it is closed with 4429. Each check is a single atomic update; a limit set to 0 has no
/// limiter and costs a branch. The limiters are built at the connection's first message, so a
/// connection that only listens (most of them) never pays for them; a fresh limiter starts with
/// its whole burst, so building it later changes nothing a client can see.
pub struct ConnLimits<'a> {
    /// Where the quotas come from, read when the limiters are made.
    config: &'a Config,
    /// Made at the connection's first message; boxed, so an idle connection's task holds one
    /// pointer instead of three limiters (and none of their quotas).
    limiters: OnceLock<Box<Limiters>>,
    over_budget: AtomicBool,
}

struct Limiters {
    changes: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
    strikes: Option<DefaultDirectRateLimiter>,
}

impl<'a> ConnLimits<'a> {
    pub fn new(config: &'a Config) -> ConnLimits<'a> {
        ConnLimits { config, limiters: OnceLock::new(), over_budget: AtomicBool::new(false) }
    }

    fn limiters(&self) -> &Limiters {
        self.limiters.get_or_init(|| {
            let config = self.config;
            let strikes = NonZeroU32::new(config.rate_limit_strikes).and_then(|n| {
                // N strikes refill over the window: more than N within it empties the budget.
                let period = config.rate_limit_window / n.get();
                Quota::with_period(period.max(Duration::from_nanos(1))).map(|q| q.allow_burst(n))
            });
            let quotas = [
                quota(config.rate_changes, config.rate_changes_burst),
                quota(config.rate_inbound_bytes, config.rate_inbound_bytes_burst),
                strikes,
            ];
            let [changes, bytes, strikes] = quotas.map(|q| q.map(RateLimiter::direct));
            Box::new(Limiters { changes, bytes, strikes })
        })
    }

    /// A message of `len` payload bytes arrived.
    ///
    /// # Errors
    /// Over `--rate-inbound-bytes` (counted, and a strike).
    pub fn inbound(&self, len: usize) -> Result<(), RateLimited> {
        let (Some(limiter), Some(n)) = (&self.limiters().bytes, cells(len)) else { return Ok(()) };
        let wait = match limiter.check_n(n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
            // Larger than the burst (config validation prevents it): never fits.
            Err(_) => Duration::from_secs(1),
        };
        Err(self.strike(RateLimited::new(RateLimit::InboundBytes, wait)))
    }

    /// A change or broadcast is about to be processed.
    ///
    /// # Errors
    /// Over `--rate-changes` (counted, and a strike).
    pub fn change(&self) -> Result<(), RateLimited> {
        let Some(limiter) = &self.limiters().changes else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.strike(RateLimited::new(RateLimit::Changes, wait))
        })
    }

    /// Records a refused message against the error budget.
    fn strike(&self, limited: RateLimited) -> RateLimited {
        if let Some(budget) = &self.limiters().strikes
            && budget.check().is_err()
            && !self.over_budget.swap(true, Ordering::AcqRel)
        {
            RateLimit::Strikes.count();
        }
        limited
    }

    /// Whether the connection went past its error budget and must be closed with 4429.
    pub fn over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(&headers(&[("content-type", ok)])), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(&headers(&[("content-type", bad)])), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn origins_are_matched_exactly() {
        let config = Config::from_flags(&["--allowed-origins", "https://game.example"]).unwrap();
        let g = Guard::new(&config);
        assert_eq!(g.check_origin(&HeaderMap::new()), OriginCheck::Absent);
        assert!(matches!(
            g.check_origin(&headers(&[("origin", "https://game.example")])),
            OriginCheck::Allowed(_)
        ));
        for bad in ["https://game.example.evil", "http://game.example", "null", "https://evil.example"] {
            let h = {
                let mut h = HeaderMap::new();
                h.insert(header::ORIGIN, HeaderValue::from_str(bad).unwrap());
                h
            };
            assert_eq!(g.check_origin(&h), OriginCheck::Refused, "{bad}");
        }
    }

    #[test]
    fn retry_hints_round_up() {
        let r = RateLimited { limit: RateLimit::Changes, retry_after: Duration::from_micros(1500) };
        assert_eq!((r.retry_after_ms(), r.retry_after_secs()), (2, 1));
        let r = RateLimited { limit: RateLimit::Changes, retry_after: Duration::ZERO };
        assert_eq!((r.retry_after_ms(), r.retry_after_secs()), (1, 1));
    }

    #[test]
    fn ip_slots_release_their_count() {
        let config =
            Config::from_flags(&["--max-ip-connections", "2", "--rate-ip-connections", "0"]).unwrap();
        let g = Guard::new(&config);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = g.admit_ip(Some(ip)).unwrap();
        let b = g.admit_ip(Some(ip)).unwrap();
        assert_eq!(g.admit_ip(Some(ip)).err().map(|r| r.limit), Some(RateLimit::IpConnections));
        drop(a);
        let c = g.admit_ip(Some(ip)).unwrap();
        drop((b, c));
        assert_eq!(g.ip_connections(ip), 0);
        assert!(g.ip_open.is_empty(), "an IP with no connection is forgotten");
    }
}
