//! Who may use the console: password hashes, sessions held server-side, the login rate limit, and
//! the CSRF rule (no state change on GET; a POST must come from the console's own origin).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, header};
use parking_lot::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "switchboard_admin";

/// Sessions kept at most; beyond, the oldest is dropped, so that logins in a loop cannot fill memory.
const MAX_SESSIONS: usize = 1024;

/// Addresses the login limiter remembers at most; beyond, the oldest windows are forgotten.
const MAX_TRACKED: usize = 16_384;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The OS random source failed (the salt).
    #[error("no randomness available for the salt: {0}")]
    Random(getrandom::Error),
    /// Argon2 refused (it does not for passwords of ordinary length).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// An Argon2id hash (PHC string, default parameters) of `password` with a fresh salt, for
/// `[admin] password_hash`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(HashError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError::Hash)
}

/// Whether `password` matches the PHC string `hash` (false when `hash` is empty or unreadable).
/// Argon2's own comparison is constant-time.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A logged-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Who: `password` for the password login, the token's `sub` for a token login.
    pub user: String,
    /// When the session ends.
    pub expires: Instant,
}

/// Sessions by random id, held here only: the cookie carries the id and nothing else, so a logout
/// or a restart ends a session for good.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// No sessions yet; each lasts `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts (the cookie's Max-Age).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `user`; its id (256 random bits, hex) for the cookie.
    pub fn create(&self, user: &str, now: Instant) -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                expires: now + self.ttl,
            },
        );
        Ok(id)
    }

    /// The live session with `id`, if any.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock();
        match map.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session with `id` (logout).
    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// Failed logins per address in fixed windows: `max` failures within `window` of the first one,
/// then every login from there is refused until the window ends, right password or not (so a
/// guesser learns nothing from a refused try).
#[derive(Debug)]
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl LoginLimiter {
    /// `max` failures per `window` and address.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `ip` has used up its failures; call before checking a password.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.failures.lock();
        match map.get(&ip) {
            Some(&(start, n)) if n >= self.max && now < start + self.window => {
                Err(start + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock();
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, (start, _)| now < *start + window);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Forgets `ip`'s failures after a successful login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().remove(&ip);
    }
}

/// The session id from the request's `Cookie` header.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether the request came over HTTPS (a TLS-terminating proxy says so in `X-Forwarded-Proto`, or
/// the page's origin is `https://`): the cookie is then `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || header("origin").is_some_and(|o| o.starts_with("https://"))
}

/// The `Set-Cookie` value of a new session: HttpOnly (no script reads it), SameSite=Strict (no other
/// site's page sends it), scoped to `/admin`, `Secure` under HTTPS.
pub fn set_cookie(id: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

/// The CSRF rule for POSTs: the `Origin` header must be present and name the host the request was
/// sent to (`http://` or `https://` plus `Host`), or one of `allowed`. Browsers always send `Origin`
/// on a POST and a page cannot forge it, so another site's form or script is refused even before
/// SameSite keeps the cookie from it.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let own = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    own || allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn passwords_hash_with_a_fresh_salt_and_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify_password(&a, "correct horse"));
        assert!(verify_password(&b, "correct horse"));
        assert!(!verify_password(&a, "correct horse "));
        assert!(!verify_password(&a, ""));
        assert!(!verify_password("", ""), "no hash: no password login");
        assert!(!verify_password("not a hash", "not a hash"));
    }

    #[test]
    fn sessions_expire_and_end_at_logout() {
        let t0 = Instant::now();
        let s = Sessions::new(Duration::from_secs(60));
        let id = s.create("ops", t0).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(s.create("ops", t0).unwrap(), id);
        assert_eq!(
            s.get(&id, t0 + Duration::from_secs(59)).unwrap().user,
            "ops"
        );
        assert_eq!(s.get(&id, t0 + Duration::from_secs(60)), None);
        assert_eq!(s.get(&id, t0), None, "an expired session is gone for good");
        let id = s.create("ops", t0).unwrap();
        s.remove(&id);
        assert_eq!(s.get(&id, t0), None);
        assert_eq!(s.get("", t0), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let t0 = Instant::now();
        let s = Sessions::new(Duration::from_secs(60));
        let first = s.create("a", t0).unwrap();
        for i in 1..=MAX_SESSIONS {
            s.create("a", t0 + Duration::from_millis(i as u64)).unwrap();
        }
        assert_eq!(s.map.lock().len(), MAX_SESSIONS);
        assert_eq!(s.get(&first, t0), None, "the oldest went first");
    }

    #[test]
    fn the_limiter_refuses_after_max_failures_until_the_window_ends() {
        let t0 = Instant::now();
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(l.check(ip, t0), Ok(()));
            l.failed(ip, t0);
        }
        assert_eq!(
            l.check(ip, t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert_eq!(l.check(other, t0), Ok(()), "per address");
        assert_eq!(l.check(ip, t0 + Duration::from_secs(60)), Ok(()));
        // A new window starts with the next failure.
        l.failed(ip, t0 + Duration::from_secs(61));
        assert_eq!(l.check(ip, t0 + Duration::from_secs(61)), Ok(()));
        l.failed(ip, t0 + Duration::from_secs(62));
        l.succeeded(ip);
        l.failed(ip, t0 + Duration::from_secs(63));
        l.failed(ip, t0 + Duration::from_secs(63));
        assert_eq!(
            l.check(ip, t0 + Duration::from_secs(63)),
            Ok(()),
            "reset by success"
        );
    }

    #[test]
    fn cookies() {
        assert_eq!(
            session_id(&headers(&[("cookie", "a=1; switchboard_admin=abc; b=2")])),
            Some("abc")
        );
        assert_eq!(
            session_id(&headers(&[
                ("cookie", "a=1"),
                ("cookie", "switchboard_admin=x")
            ])),
            Some("x")
        );
        assert_eq!(
            session_id(&headers(&[("cookie", "switchboard_admin2=abc")])),
            None
        );
        assert_eq!(
            set_cookie("id", Duration::from_secs(60), false),
            "switchboard_admin=id; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("id", Duration::from_secs(60), true).ends_with("; Secure"));
        assert!(clear_cookie(false).starts_with("switchboard_admin=; Path=/admin; Max-Age=0;"));
        assert!(is_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(is_https(&headers(&[("origin", "https://ops.example.com")])));
        assert!(!is_https(&headers(&[("origin", "http://127.0.0.1:8081")])));
    }

    #[test]
    fn posts_must_come_from_the_consoles_origin() {
        let own = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:8081"),
        ]);
        assert!(origin_allowed(&own, &[]));
        let tls = headers(&[
            ("host", "ops.example.com"),
            ("origin", "https://ops.example.com"),
        ]);
        assert!(origin_allowed(&tls, &[]));
        let evil = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!origin_allowed(&evil, &[]));
        assert!(origin_allowed(&evil, &["http://evil.example/".into()]));
        let null = headers(&[("host", "127.0.0.1:8081"), ("origin", "null")]);
        assert!(!origin_allowed(&null, &[]));
        let missing = headers(&[("host", "127.0.0.1:8081")]);
        assert!(!origin_allowed(&missing, &[]), "no Origin: refused");
        let port = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(
            !origin_allowed(&port, &[]),
            "another port is another origin"
        );
    }
}
