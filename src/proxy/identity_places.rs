//! Requests in flight upstream per client identity (`listen.max_inflight_per_identity`).
//!
//! `max_inflight_per_connection` bounds one connection and `upstreams.<name>.max_requests` all
//! clients together, but one identity may open any number of connections: without this limit
//! a single client certificate (a compromised or runaway client) can hold every upstream place
//! and starve every other identity. Identities are keyed by their certificate's SHA-256
//! fingerprint; an entry exists only while one of its requests holds or waits for a place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places of every identity with a request in flight.
#[derive(Default)]
pub struct IdentityPlaces {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

struct Entry {
    /// The limit the semaphore was made with: a reload that changes it starts a new one (the
    /// places already taken end on the old one).
    cap: usize,
    places: Arc<Semaphore>,
}

/// A place of one identity, given back when dropped.
pub struct IdentityPlace {
    permit: Option<OwnedSemaphorePermit>,
    key: Arc<str>,
    owner: Arc<IdentityPlaces>,
}

impl IdentityPlaces {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for `fingerprint` under `cap`, waiting until `deadline` at most.
    pub async fn acquire(
        self: &Arc<Self>,
        fingerprint: &str,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> Option<IdentityPlace> {
        let (key, places) = {
            let mut map = self.lock();
            match map.get_key_value(fingerprint) {
                Some((key, entry)) if entry.cap == cap => (key.clone(), entry.places.clone()),
                _ => {
                    let key: Arc<str> = Arc::from(fingerprint);
                    let places = Arc::new(Semaphore::new(cap));
                    map.insert(
                        key.clone(),
                        Entry {
                            cap,
                            places: places.clone(),
                        },
                    );
                    (key, places)
                }
            }
        };
        let permit = match places.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout_at(deadline, places.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        drop(places);
        match permit {
            Some(permit) => Some(IdentityPlace {
                permit: Some(permit),
                key,
                owner: self.clone(),
            }),
            None => {
                self.forget_if_unused(&key);
                None
            }
        }
    }

    /// Drop the entry of `key` when no request holds or waits for one of its places (each
    /// holds a reference to the semaphore).
    fn forget_if_unused(&self, key: &str) {
        let mut map = self.lock();
        if map
            .get(key)
            .is_some_and(|e| Arc::strong_count(&e.places) == 1)
        {
            map.remove(key);
        }
    }

    /// Identities with a request holding or waiting for a place.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for IdentityPlace {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.owner.forget_if_unused(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn each_identity_has_its_own_places_and_entries_go_when_unused() {
        let places = Arc::new(IdentityPlaces::default());
        let a1 = places.acquire("aa", 2, soon()).await.expect("first place");
        let a2 = places.acquire("aa", 2, soon()).await.expect("second place");
        assert!(places.acquire("aa", 2, soon()).await.is_none(), "a third");
        // Another identity is not affected.
        let b = places
            .acquire("bb", 2, soon())
            .await
            .expect("another identity");
        assert_eq!(places.len(), 2);
        drop(a1);
        let a3 = places
            .acquire("aa", 2, soon())
            .await
            .expect("a place came back");
        drop((a2, a3, b));
        assert!(
            places.is_empty(),
            "entries of identities without requests are dropped"
        );
        // A failed wait leaves nothing behind either.
        let c = places.acquire("cc", 1, soon()).await.expect("place");
        assert!(places.acquire("cc", 1, soon()).await.is_none());
        drop(c);
        assert!(places.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_place_given_back_and_a_new_cap_starts_afresh() {
        let places = Arc::new(IdentityPlaces::default());
        let held = places.acquire("aa", 1, soon()).await.expect("place");
        let waiter = {
            let places = places.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                places.acquire("aa", 1, deadline).await.is_some()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the place given back");
        assert!(places.is_empty());
        // A reload that raises the cap: new requests count against the new one.
        let old = places.acquire("aa", 1, soon()).await.expect("place");
        let new = places.acquire("aa", 2, soon()).await.expect("new cap");
        let new2 = places
            .acquire("aa", 2, soon())
            .await
            .expect("new cap, second");
        assert!(places.acquire("aa", 2, soon()).await.is_none());
        drop((old, new, new2));
        assert!(places.is_empty());
    }
}
