//! Requests in flight upstream per client identity (`listen.max_inflight_per_identity`).
//!
//! `max_inflight_per_connection` bounds one connection and `upstreams.<name>.max_requests` all
//! clients together, but one identity may open any number of connections: without this limit
//! a single client certificate (a compromised or runaway client) can hold every upstream place
//! and starve every other identity. Identities are keyed by their certificate's SHA-256
//! fingerprint; an entry exists only while one of its requests holds or waits for a place
//! (counted, so that a request cancelled mid-wait leaves nothing behind).

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
    /// Requests holding or waiting for one of these places: the entry goes when none is left.
    users: usize,
}

impl Entry {
    fn new(cap: usize) -> Entry {
        Entry {
            cap,
            places: Arc::new(Semaphore::new(cap)),
            users: 0,
        }
    }
}

/// One request's claim on an identity's entry, from the start of its wait until its place is
/// given back; dropped early when the wait fails or the request is cancelled mid-wait (a reset
/// stream, a client gone).
struct User {
    key: Arc<str>,
    places: Arc<Semaphore>,
    owner: Arc<IdentityPlaces>,
}

/// A place of one identity, given back when dropped.
pub struct IdentityPlace {
    // Fields drop in order: the permit first, then the claim on the entry.
    _permit: OwnedSemaphorePermit,
    _user: User,
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
        let user = {
            let mut map = self.lock();
            let key = map
                .get_key_value(fingerprint)
                .map_or_else(|| Arc::from(fingerprint), |(key, _)| key.clone());
            let entry = map.entry(key.clone()).or_insert_with(|| Entry::new(cap));
            if entry.cap != cap {
                // A reload changed the cap: new requests count against the new limit.
                *entry = Entry::new(cap);
            }
            entry.users += 1;
            User {
                key,
                places: entry.places.clone(),
                owner: self.clone(),
            }
        };
        let permit = match user.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout_at(deadline, user.places.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        Some(IdentityPlace {
            _permit: permit,
            _user: user,
        })
    }

    /// Identities with a request holding or waiting for a place.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let mut map = self.owner.lock();
        if let Some(entry) = map.get_mut(&self.key) {
            // Users of a semaphore a reload replaced are no longer counted.
            if Arc::ptr_eq(&entry.places, &self.places) {
                entry.users = entry.users.saturating_sub(1);
                if entry.users == 0 {
                    map.remove(&self.key);
                }
            }
        }
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
    async fn a_wait_cancelled_midway_leaves_no_entry() {
        let places = Arc::new(IdentityPlaces::default());
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        // A request waits; another gives its place back while the first still waits, and
        // then the waiting request goes away (its stream was reset) before it ran again.
        let held = places.acquire("aa", 1, soon()).await.expect("place");
        let mut waiting = Box::pin(places.acquire("aa", 1, far));
        let polled = tokio::time::timeout(Duration::from_millis(20), &mut waiting).await;
        assert!(polled.is_err(), "it waits");
        drop(held);
        drop(waiting);
        assert!(
            places.is_empty(),
            "the cancelled waiter left its entry behind"
        );
        // A wait cut short by a timeout around it, while another request holds the place.
        let held = places.acquire("bb", 1, soon()).await.expect("place");
        let cut = tokio::time::timeout(Duration::from_millis(20), places.acquire("bb", 1, far));
        assert!(cut.await.is_err());
        assert_eq!(places.len(), 1);
        drop(held);
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
