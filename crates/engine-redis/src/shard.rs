//! Which Redis instance holds a channel, when the engine is given several (without Redis Cluster).
//!
//! Every node must pick the same instance for a channel, whatever process it is and whenever it
//! started, so the hash is a fixed function (FNV-1a), never `std`'s randomly seeded one. The bucket is
//! chosen by jump consistent hashing (Lamping and Veach, 2014): adding an instance moves only about
//! 1/n of the channels, and needs no table.

/// The index, among `shards` instances, of the one that holds `channel`. `shards` must be at least 1.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let buckets = i64::try_from(shards.max(1)).unwrap_or(i64::MAX);
    // `jump` returns a value below `buckets`, which came from a usize.
    usize::try_from(jump(fnv1a(channel.as_bytes()), buckets)).unwrap_or(0)
}

/// FNV-1a, 64 bits: stable across processes and versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
fn jump(mut key: u64, buckets: i64) -> i64 {
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The reference algorithm's arithmetic, in floating point on purpose.
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_matches_the_reference_implementation() {
        // Values computed with the paper's algorithm, independently of this code.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(1, 10), 6);
        assert_eq!(jump(0xdead_beef, 100), 87);
        assert_eq!(jump(u64::MAX, 1000), 313);
    }

    #[test]
    fn one_shard_takes_everything() {
        for c in ["a", "chat:lobby", ""] {
            assert_eq!(shard_of(c, 1), 0);
            assert_eq!(shard_of(c, 0), 0, "no shards is treated as one");
        }
    }

    #[test]
    fn channels_spread_evenly_and_adding_a_shard_moves_few() {
        let channels: Vec<String> = (0..10_000).map(|i| format!("chat:room{i}")).collect();
        let mut counts = [0_usize; 4];
        for c in &channels {
            counts[shard_of(c, 4)] += 1;
        }
        for n in counts {
            assert!((2_000..3_000).contains(&n), "uneven spread: {counts:?}");
        }
        let moved = channels
            .iter()
            .filter(|c| shard_of(c, 4) != shard_of(c, 5))
            .count();
        // Ideal is 1/5 of the channels; every one that moves goes to the new shard.
        assert!((1_500..2_500).contains(&moved), "moved {moved}");
        assert!(
            channels
                .iter()
                .filter(|c| shard_of(c, 4) != shard_of(c, 5))
                .all(|c| shard_of(c, 5) == 4)
        );
    }

    #[test]
    fn the_choice_is_stable_across_processes() {
        // Fixed values: a change here would split a running deployment's channels between nodes of
        // two versions.
        let picks: Vec<usize> = ["news", "chat:lobby", "user#42"]
            .iter()
            .map(|c| shard_of(c, 8))
            .collect();
        assert_eq!(picks, [3, 2, 2]);
    }
}
