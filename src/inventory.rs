//! The bounded inventory of client identities seen, served at `/identities` (SPEC 6).

use crate::identity::Identity;

/// Least recently seen identities are dropped first once `capacity` is reached.
pub struct Inventory {
    _private: (),
}

impl Inventory {
    pub fn new(capacity: usize) -> Inventory {
        let _ = capacity;
        todo!("metrics helper")
    }

    /// Note a handshake by this identity (creates the entry, updates `last_seen`).
    pub fn seen(&self, id: &Identity) {
        let _ = id;
        todo!("metrics helper")
    }

    /// Count one request decision for this identity.
    pub fn request(&self, id: &Identity, allowed: bool) {
        let _ = (id, allowed);
        todo!("metrics helper")
    }

    /// JSON array with exactly the SPEC 6 keys, most recently seen first.
    pub fn to_json(&self) -> String {
        todo!("metrics helper")
    }
}
