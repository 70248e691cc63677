//! The `[admin]` settings: whether the console is served, and who may log in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The operator's console at `/admin/` on the API listener (off unless asked for).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the console. It can publish anywhere and disconnect anyone, like the API it calls, so
    /// it is off until an operator turns it on.
    pub enabled: bool,
    /// The console password as an Argon2 PHC string (`$argon2id$...`), never the password itself:
    /// a leaked configuration then gives no login. `switchboard genconfig` and
    /// `switchboard hashpassword` write one. Empty: no password login (tokens only).
    pub password_hash: String,
    /// How long a login lasts without a new one.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed logins one address may make per `login_window` before it is refused (429) for the
    /// rest of the window; the password cannot be guessed faster than this.
    pub max_failed_logins: u32,
    /// The window of `max_failed_logins`.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Origins (`https://ops.example.com`) besides the API listener's own that may POST to the
    /// console: a reverse proxy in front of it serves it under another name.
    pub allowed_origins: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            password_hash: String::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            max_failed_logins: 5,
            login_window: Duration::from_secs(300),
            allowed_origins: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Refuses settings the console cannot work with; `has_token_keys` says whether `[auth]` has
    /// keys, since without a password they are the only way in.
    pub fn validate(&self, has_token_keys: bool) -> Result<(), String> {
        if !self.password_hash.is_empty() {
            argon2::PasswordHash::new(&self.password_hash).map_err(|e| {
                format!(
                    "[admin] password_hash is not an Argon2 hash ({e}); write one with `switchboard hashpassword`"
                )
            })?;
        }
        if self.enabled && self.password_hash.is_empty() && !has_token_keys {
            return Err("[admin] enabled needs password_hash (`switchboard hashpassword`) or [auth] keys for tokens with an admin claim".into());
        }
        if self.max_failed_logins == 0 {
            return Err("[admin] max_failed_logins must be at least 1".into());
        }
        if self.session_ttl.is_zero() || self.login_window.is_zero() {
            return Err("[admin] session_ttl and login_window must be more than 0".into());
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                return Err(format!(
                    "[admin] allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_work() {
        let mut c = AdminConfig {
            enabled: true,
            ..Default::default()
        };
        assert!(c.validate(false).unwrap_err().contains("password_hash"));
        assert_eq!(c.validate(true), Ok(()));
        c.password_hash = "hunter2".into();
        assert!(c.validate(true).unwrap_err().contains("not an Argon2 hash"));
        c.password_hash.clear();
        c.allowed_origins = vec!["https://ops.example.com/admin".into()];
        assert!(c.validate(true).unwrap_err().contains("not an origin"));
        c.allowed_origins = vec!["https://ops.example.com".into()];
        assert_eq!(c.validate(true), Ok(()));
        c.max_failed_logins = 0;
        assert!(c.validate(true).is_err());
        // Off, nothing is needed.
        assert_eq!(AdminConfig::default().validate(false), Ok(()));
    }
}
