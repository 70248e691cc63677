//! [`SmallMap`]: a map by channel name for the per-client state, sized for the common case of one or a
//! few channels. A `HashMap` keeps its table (and its hasher's keys) once it has held an entry, so
//! a subscription that came and went, or one channel held for hours, costs a few hundred bytes of
//! table per client; with ten thousand idle clients that was a large part of their memory. Here a
//! few entries live in a vector searched in order, the allocation is released when the map is
//! emptied, and only a client with many channels gets a hash table.

use std::collections::HashMap;

/// Entries beyond which the map switches to a hash table.
const FEW: usize = 8;

/// A map from channel name to `V`: a vector up to [`FEW`] entries, a hash table beyond.
#[derive(Debug, Clone)]
pub enum SmallMap<V> {
    /// Few entries, searched in order.
    Few(Vec<(String, V)>),
    /// Many entries. Boxed, so that the map is the size of a vector (24 bytes rather than 56) in
    /// the per-client structs that hold several, most of them empty.
    #[allow(clippy::box_collection)] // on purpose: see above
    Many(Box<HashMap<String, V>>),
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<V> SmallMap<V> {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries held.
    pub fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        match self {
            Self::Few(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Self::Many(m) => m.get(key),
        }
    }

    /// The value of `key`, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match self {
            Self::Few(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            Self::Many(m) => m.get_mut(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self {
            Self::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < FEW {
                    // Grows one at a time: most clients hold one channel.
                    v.reserve_exact(1);
                    v.push((key, value));
                    return None;
                }
                let mut m: HashMap<String, V> = std::mem::take(v).into_iter().collect();
                m.insert(key, value);
                *self = Self::Many(Box::new(m));
                None
            }
            Self::Many(m) => m.insert(key, value),
        }
    }

    /// Removes `key`; returns its value. The memory is released when the map becomes empty, and a
    /// hash table that has shrunk to a few entries becomes a vector again.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let removed = match self {
            Self::Few(v) => {
                let at = v.iter().position(|(k, _)| k == key)?;
                Some(v.swap_remove(at).1)
            }
            Self::Many(m) => m.remove(key),
        };
        self.compact();
        removed
    }

    /// Removes every entry and releases the memory.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(k, _)| k)
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            Self::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn compact(&mut self) {
        match self {
            Self::Few(v) if v.is_empty() => *v = Vec::new(),
            Self::Few(v) if v.capacity() > v.len() * 2 => v.shrink_to_fit(),
            Self::Many(m) if m.len() <= FEW / 2 => {
                *self = Self::Few(std::mem::take(&mut **m).into_iter().collect());
            }
            _ => {}
        }
    }
}

/// The entries of a [`SmallMap`], by value.
#[derive(Debug)]
pub enum IntoIter<V> {
    /// Of a vector.
    Few(std::vec::IntoIter<(String, V)>),
    /// Of a hash table.
    Many(std::collections::hash_map::IntoIter<String, V>),
}

impl<V> Iterator for IntoIter<V> {
    type Item = (String, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Few(it) => it.next(),
            Self::Many(it) => it.next(),
        }
    }
}

impl<V> IntoIterator for SmallMap<V> {
    type Item = (String, V);
    type IntoIter = IntoIter<V>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Self::Few(v) => IntoIter::Few(v.into_iter()),
            Self::Many(m) => IntoIter::Many((*m).into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_the_size_of_a_vector() {
        // Several sit in every client's state and session, most of them empty.
        assert_eq!(
            std::mem::size_of::<SmallMap<u64>>(),
            std::mem::size_of::<Vec<(String, u64)>>()
        );
    }

    #[test]
    fn one_entry_costs_one_slot_and_nothing_once_removed() {
        let mut m = SmallMap::new();
        assert_eq!(m.insert("a".into(), 1), None);
        let SmallMap::Few(v) = &m else {
            panic!("one entry is a vector")
        };
        assert_eq!(v.capacity(), 1);
        assert_eq!(m.insert("a".into(), 2), Some(1));
        assert_eq!(m.get("a"), Some(&2));
        assert_eq!(m.remove("a"), Some(2));
        assert_eq!(m.remove("a"), None);
        let SmallMap::Few(v) = &m else {
            panic!("an empty map is a vector")
        };
        assert_eq!(v.capacity(), 0, "an emptied map releases its memory");
    }

    #[test]
    fn many_entries_switch_to_a_table_and_back() {
        let mut m = SmallMap::new();
        for i in 0..20 {
            m.insert(format!("c{i}"), i);
        }
        assert!(matches!(m, SmallMap::Many(_)));
        assert_eq!(m.len(), 20);
        for i in 0..20 {
            assert_eq!(m.get(&format!("c{i}")), Some(&i));
        }
        *m.get_mut("c3").unwrap_or(&mut 0) = 33;
        assert_eq!(m.get("c3"), Some(&33));
        for i in 0..17 {
            assert!(m.remove(&format!("c{i}")).is_some());
        }
        assert!(matches!(m, SmallMap::Few(_)), "back to a vector");
        let mut keys: Vec<_> = m.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["c17", "c18", "c19"]);
        let mut all: Vec<_> = m.into_iter().collect();
        all.sort();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], ("c17".to_owned(), 17));
    }

    #[test]
    fn clear_releases_everything() {
        let mut m = SmallMap::new();
        for i in 0..20 {
            m.insert(format!("c{i}"), i);
        }
        m.clear();
        assert!(m.is_empty());
        assert!(matches!(&m, SmallMap::Few(v) if v.capacity() == 0));
    }
}
