//! Which publications one receiver got, by sequence number: a bit per number, so duplicates and
//! reordering are counted exactly, at one bit per publication.

use anyhow::{Result, ensure};

/// The sequence numbers one receiver got.
#[derive(Default)]
pub struct Seen {
    /// Distinct sequence numbers received.
    pub distinct: u64,
    /// The highest received.
    pub max_seq: u64,
    /// One bit per sequence number.
    words: Vec<u64>,
    /// Deliveries received twice or more.
    pub duplicates: u64,
    /// Deliveries older than one already received.
    pub out_of_order: u64,
}

/// Fails unless `seq` is a sequence number below `max` (a larger one is a parse error, not a
/// publication, and would make the bitmap huge).
pub fn check(seq: u64, max: u64) -> Result<()> {
    ensure!(
        (1..max).contains(&seq),
        "sequence number {seq} out of range"
    );
    Ok(())
}

impl Seen {
    /// Records `seq` (checked with [`check`]); false when it had been received already.
    pub fn record(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.words[word] |= 1 << bit;
        self.distinct += 1;
        if seq < self.max_seq {
            self.out_of_order += 1;
        } else {
            self.max_seq = seq;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_reordering() {
        let mut seen = Seen::default();
        assert!(seen.record(2));
        assert!(seen.record(1));
        assert!(!seen.record(2));
        assert!(seen.record(200));
        assert_eq!(
            (
                seen.distinct,
                seen.max_seq,
                seen.duplicates,
                seen.out_of_order
            ),
            (3, 200, 1, 1)
        );
        assert!(check(0, 10).is_err() && check(10, 10).is_err() && check(9, 10).is_ok());
    }
}
