//! A fallback request's query parameters, whether it arrived here or was relayed from another node.

use axum::http::Uri;

use super::error::FallbackError;

/// A request's query parameters (`a=1&b=2`). Values are taken as they are: every value the fallback
/// endpoints accept (tokens, numbers, transport names) is plain ASCII that needs no escaping.
pub struct Params<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Params<'a> {
    /// The parameters of a request's URI.
    pub fn parse(uri: &'a Uri) -> Self {
        Self::from_query(uri.query().unwrap_or(""))
    }

    /// The parameters of a query string (what a relayed request carries).
    pub fn from_query(query: &'a str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        )
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A number parameter, if present.
    pub fn number(&self, key: &str) -> Result<Option<u64>, FallbackError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    FallbackError::BadRequest(format!(
                        "parameter {key}={v:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }
}
