//! The subject and stream layout, under the configured prefix `P`:
//!
//! | subject | what |
//! |---|---|
//! | `P.h.<set>.<channel>` | stored publications (and epoch markers) of channels whose namespace keeps history `<set>`, in the stream `P_H_<set>` |
//! | `P.l.<channel>` | what nodes subscribed to `<channel>` receive: publications (republished by JetStream from `P.h.*.<channel>`, or published directly without history) and presence events |
//! | `P.p.<channel>.<client>` | presence entries, in the stream `P_PRESENCE` |
//! | `P.i.<channel>` | idempotency keys of publications without history, in the stream `P_IDEM` |
//! | `P.n.<node>` | messages to one node |
//! | `P.ctl` / `P.ctl.<node>` | control messages to every node / to one node |
//!
//! `<set>` is `<history_size>_<history_ttl ms>_<history_meta_ttl ms>`: one stream per distinct
//! history setting, since JetStream's per-subject limit and maximum age are settings of a stream,
//! not of a subject. `<channel>` and `<client>` are tokens: `c` then the name in unpadded URL-safe
//! base64, so that any name (dots, wildcards, spaces, any Unicode) is one valid subject token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use switchboard_engine::StreamOptions;

/// A name (channel, client id, idempotency key) as one subject token.
pub(crate) fn token(name: &str) -> String {
    format!("c{}", URL_SAFE_NO_PAD.encode(name))
}

/// The subjects and stream names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The history setting's token.
    pub(crate) fn set(opts: &StreamOptions) -> String {
        format!(
            "{}_{}_{}",
            opts.history_size,
            opts.history_ttl.as_millis(),
            opts.history_meta_ttl.max(opts.history_ttl).as_millis()
        )
    }

    /// The stream of one history setting.
    pub(crate) fn history_stream(&self, set: &str) -> String {
        format!("{}_H_{set}", self.prefix)
    }

    /// Names of history streams start with this.
    pub(crate) fn history_stream_prefix(&self) -> String {
        format!("{}_H_", self.prefix)
    }

    /// Every subject of one history setting's stream.
    pub(crate) fn history_filter(&self, set: &str) -> String {
        format!("{}.h.{set}.*", self.prefix)
    }

    /// Where a channel's publications are stored.
    pub(crate) fn history(&self, set: &str, channel: &str) -> String {
        format!("{}.h.{set}.{}", self.prefix, token(channel))
    }

    /// Where JetStream republishes what a history stream stores: the live subject of its channel.
    pub(crate) fn republish_destination(&self) -> String {
        format!("{}.l.{{{{wildcard(1)}}}}", self.prefix)
    }

    /// What subscribers of `channel` receive.
    pub(crate) fn live(&self, channel: &str) -> String {
        format!("{}.l.{}", self.prefix, token(channel))
    }

    pub(crate) fn presence_stream(&self) -> String {
        format!("{}_PRESENCE", self.prefix)
    }

    pub(crate) fn presence_filter(&self) -> String {
        format!("{}.p.*.*", self.prefix)
    }

    /// Presence entries of `channel`.
    pub(crate) fn presence_of(&self, channel: &str) -> String {
        format!("{}.p.{}.*", self.prefix, token(channel))
    }

    /// The presence entry of `client` in `channel`.
    pub(crate) fn presence(&self, channel: &str, client: &str) -> String {
        format!("{}.p.{}.{}", self.prefix, token(channel), token(client))
    }

    pub(crate) fn idempotency_stream(&self) -> String {
        format!("{}_IDEM", self.prefix)
    }

    pub(crate) fn idempotency_filter(&self) -> String {
        format!("{}.i.*", self.prefix)
    }

    pub(crate) fn idempotency(&self, channel: &str) -> String {
        format!("{}.i.{}", self.prefix, token(channel))
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}.n.{node}", self.prefix)
    }

    pub(crate) fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    pub(crate) fn node_control(&self, node: &str) -> String {
        format!("{}.ctl.{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn any_channel_name_is_one_token() {
        for name in ["", "a.b", "*", ">", "a b", "news:42", "ünï", "a\r\nb"] {
            let t = token(name);
            assert!(t.starts_with('c'));
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name:?} -> {t}"
            );
        }
        assert_ne!(token("a"), token("b"));
    }

    #[test]
    fn one_stream_per_history_setting() {
        let s = Subjects::new("sb");
        let o = StreamOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            history_meta_ttl: Duration::from_secs(600),
        };
        let set = Subjects::set(&o);
        assert_eq!(set, "10_60000_600000");
        assert_eq!(s.history_stream(&set), "sb_H_10_60000_600000");
        assert_eq!(
            s.history(&set, "a.b"),
            format!("sb.h.{set}.{}", token("a.b"))
        );
        // The meta ttl is never below the publications' own.
        let short = StreamOptions {
            history_meta_ttl: Duration::ZERO,
            ..o
        };
        assert_eq!(Subjects::set(&short), "10_60000_60000");
    }
}
