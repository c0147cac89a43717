//! Interned peer NIC paths and buffer locations. A slice carries a copyable
//! id instead of a shared string: queuing, posting and completing it then
//! touch no reference count that the submitting and polling threads share
//! (each such count is a cache line bouncing between cores, per slice).
//!
//! Append-only: one entry per distinct name ever used (peer NIC paths of
//! opened segments, locations of registered buffers), a few bytes each.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::id_map::fnv1a;

/// An interned name; valid for the table that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameId(u32);

impl Hash for NameId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One word: `IdHasher` mixes it in one multiply.
        state.write_u64(self.0 as u64);
    }
}

struct Entry {
    name: Arc<str>,
    hash: u64,
}

#[derive(Default)]
struct Inner {
    ids: HashMap<Arc<str>, NameId>,
    entries: Vec<Entry>,
}

#[derive(Default)]
pub struct Names {
    inner: RwLock<Inner>,
}

impl Names {
    /// The id of `name`, added if new.
    pub fn intern(&self, name: &str) -> NameId {
        if let Some(id) = self.inner.read().ids.get(name) {
            return *id;
        }
        let mut g = self.inner.write();
        if let Some(id) = g.ids.get(name) {
            return *id;
        }
        let id = NameId(g.entries.len() as u32);
        let name: Arc<str> = Arc::from(name);
        g.entries.push(Entry {
            hash: fnv1a(name.as_bytes()),
            name: name.clone(),
        });
        g.ids.insert(name, id);
        id
    }

    /// The name behind `id` ("?" for an id of another table).
    pub fn get(&self, id: NameId) -> Arc<str> {
        match self.inner.read().entries.get(id.0 as usize) {
            Some(e) => e.name.clone(),
            None => Arc::from("?"),
        }
    }

    /// A stable hash of the name (picks a peer path's posting thread).
    pub fn hash(&self, id: NameId) -> u64 {
        self.inner
            .read()
            .entries
            .get(id.0 as usize)
            .map_or(0, |e| e.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_name_gets_the_same_id_and_back() {
        let n = Names::default();
        let a = n.intern("host@mlx5_0");
        let b = n.intern("host@mlx5_1");
        assert_ne!(a, b);
        assert_eq!(n.intern("host@mlx5_0"), a);
        assert_eq!(&*n.get(a), "host@mlx5_0");
        assert_eq!(&*n.get(b), "host@mlx5_1");
        assert_eq!(n.hash(a), fnv1a(b"host@mlx5_0"));
        assert_eq!(&*Names::default().get(b), "?");
    }
}
