//! A map bounded in entries that, when full, makes room by forgetting the least recently used
//! entry, never all of them: tables keyed by what monitored processes choose (uids, cgroups)
//! stay bounded, and a process that makes many keys only pushes out the entries nobody used
//! for longest, not everyone's at once.
use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// At most `cap` entries; each use moves an entry to the back of the eviction order.
#[derive(Debug)]
pub struct LruMap<K, V> {
    cap: usize,
    /// Each entry with the tick of its last use.
    entries: HashMap<K, (V, u64)>,
    /// Keys by the tick of their last use: the first is the least recently used.
    order: BTreeMap<u64, K>,
    tick: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// An empty map that holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> LruMap<K, V> {
        LruMap { cap: cap.max(1), entries: HashMap::new(), order: BTreeMap::new(), tick: 0 }
    }

    /// The entry for `key`, marked as used now.
    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        let (value, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        self.tick += 1;
        *used = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(value)
    }

    /// The entry for `key`, made with `make` if there is none (forgetting the least recently
    /// used entry if the map is full), marked as used now.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(&key) {
            self.insert(key.clone(), make());
        }
        self.get(&key).expect("present: found or just inserted")
    }

    /// Sets the entry for `key`, marked as used now; when the map is full and `key` is new, the
    /// least recently used entry is forgotten first.
    pub fn insert(&mut self, key: K, value: V) {
        self.remove(&key);
        if self.entries.len() >= self.cap
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, self.tick));
    }

    /// Forgets the entry for `key` and returns it.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, used) = self.entries.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full, the map forgets the entry used longest ago (reading counts as use), and only it.
    #[test]
    fn a_full_map_forgets_the_least_recently_used_entry_only() {
        let mut map = LruMap::new(3);
        (1..=3).for_each(|key| map.insert(key, key * 10));
        assert_eq!(map.get(&1).copied(), Some(10));
        map.insert(4, 40);
        assert_eq!(map.len(), 3);
        assert!(map.get(&2).is_none(), "2 was used longest ago");
        assert_eq!([1, 3, 4].map(|key| map.get(&key).copied()), [Some(10), Some(30), Some(40)]);
        *map.get_or_insert_with(5, || 50) += 1;
        assert_eq!((map.get(&1).is_none(), map.get(&5).copied()), (true, Some(51)));
        map.insert(3, 31);
        assert_eq!((map.len(), map.remove(&3)), (3, Some(31)), "replacing an entry forgets none");
        assert_eq!(map.order.len(), map.entries.len());
    }
}
