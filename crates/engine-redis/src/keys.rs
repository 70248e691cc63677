//! Where a channel's data lives in Redis.
//!
//! Every key and the pub/sub channel of one switchboard channel carry the channel name as a Redis
//! Cluster hash tag (`{...}`), so they all fall in one hash slot: a Lua script may touch them together
//! (atomic publish), and sharded pub/sub (`SPUBLISH` from that script) is allowed. A channel name that
//! itself holds a `}` only shortens the tag, the same way for all of its keys.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P.stream.{C}` | stream | the publications kept: fields `o` (offset) and `d` (the publication) |
//! | `P.meta.{C}` | hash | `e` the stream's epoch, `s` its latest offset; losing it starts a new epoch |
//! | `P.result.{C}.K` | string | `offset:epoch` of the publish made with idempotency key `K` |
//! | `P.presence.{C}` | hash | client id to its info (JSON) |
//! | `P.presence_expiry.{C}` | sorted set | client id scored by when its entry expires (Unix ms) |
//! | `P.pub.{C}` | pub/sub channel | publications and join/leave events, in order |
//! | `P.node.{N}` | pub/sub channel | messages to node `N` (its random id) from other nodes |
//! | `P.control` | pub/sub channel | control messages to every node (cluster-wide API calls, announcements) |
//! | `P.control.{N}` | pub/sub channel | control messages to node `N` only (answers to its broadcasts) |

/// Names of the Redis keys and channels under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (it must hold no `{` or `}`; the config checks).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        format!("{}.{kind}.{{{channel}}}", self.prefix)
    }

    /// The stream of publications.
    pub fn stream(&self, channel: &str) -> String {
        self.key("stream", channel)
    }

    /// The stream's epoch and latest offset.
    pub fn meta(&self, channel: &str) -> String {
        self.key("meta", channel)
    }

    /// The result of a publish made with an idempotency key. Without a key, the same name with an
    /// empty key: scripts must name a key of the channel's slot even when they do not use it.
    pub fn result(&self, channel: &str, idempotency_key: &str) -> String {
        format!("{}.{idempotency_key}", self.key("result", channel))
    }

    /// Who is present.
    pub fn presence(&self, channel: &str) -> String {
        self.key("presence", channel)
    }

    /// When each presence entry expires.
    pub fn presence_expiry(&self, channel: &str) -> String {
        self.key("presence_expiry", channel)
    }

    /// The pub/sub channel.
    pub fn pubsub(&self, channel: &str) -> String {
        self.key("pub", channel)
    }

    /// The pub/sub channel of node `node`, where other nodes send it messages. Its id is the hash tag,
    /// so that in Redis Cluster it is a sharded channel like the others.
    pub fn node(&self, node: &str) -> String {
        self.key("node", node)
    }

    /// The pub/sub channel every node listens on for control messages to all of them. Outside any
    /// hash tag: in Redis Cluster it is a sharded channel of its own slot, like any key.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The pub/sub channel of node `node` for control messages to it alone; in the same slot as its
    /// [`Keys::node`] channel.
    pub fn node_control(&self, node: &str) -> String {
        self.key("control", node)
    }

    /// The switchboard channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".pub.{")?
            .strip_suffix('}')
    }
}

/// The hash slot tag Redis Cluster would use for `key`: the text between the first `{` and the next
/// `}`, when not empty; else the whole key.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("sb");
        assert_eq!(k.stream("chat:lobby"), "sb.stream.{chat:lobby}");
        assert_eq!(k.meta("chat:lobby"), "sb.meta.{chat:lobby}");
        assert_eq!(k.result("news", "abc"), "sb.result.{news}.abc");
        assert_eq!(k.presence("news"), "sb.presence.{news}");
        assert_eq!(k.presence_expiry("news"), "sb.presence_expiry.{news}");
        assert_eq!(k.pubsub("news"), "sb.pub.{news}");
        assert_eq!(k.node("0a1b2c3d"), "sb.node.{0a1b2c3d}");
        assert_eq!(k.channel_of(&k.node("0a1b2c3d")), None);
        assert_eq!(k.control(), "sb.control");
        assert_eq!(k.node_control("0a1b2c3d"), "sb.control.{0a1b2c3d}");
        assert_eq!(k.channel_of(&k.control()), None);
        assert_eq!(k.channel_of(&k.node_control("0a1b2c3d")), None);
        assert_eq!(
            hash_tag(&k.node_control("0a1b2c3d")),
            hash_tag(&k.node("0a1b2c3d")),
            "a node's two channels share a slot"
        );
    }

    #[test]
    fn every_key_of_a_channel_shares_one_hash_slot() {
        let k = Keys::new("sb");
        for channel in ["news", "chat:lobby", "odd}name", "{x}", "a{b}c"] {
            let names = [
                k.stream(channel),
                k.meta(channel),
                k.result(channel, "key"),
                k.result(channel, ""),
                k.presence(channel),
                k.presence_expiry(channel),
                k.pubsub(channel),
            ];
            let tag = hash_tag(&names[0]);
            for n in &names {
                assert_eq!(hash_tag(n), tag, "{channel}: {n}");
            }
        }
        assert_ne!(
            hash_tag(&k.stream("a")),
            hash_tag(&k.stream("b")),
            "different channels spread over the cluster"
        );
    }

    #[test]
    fn pubsub_names_map_back_to_channels() {
        let k = Keys::new("sb");
        for channel in ["news", "chat:lobby", "odd}name", "", "{x}"] {
            assert_eq!(k.channel_of(&k.pubsub(channel)), Some(channel));
        }
        assert_eq!(k.channel_of("other.pub.{news}"), None);
        assert_eq!(k.channel_of("sb.stream.{news}"), None);
    }
}
