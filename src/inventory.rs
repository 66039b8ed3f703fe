//! The bounded inventory of client identities seen, served at `/identities` (SPEC 6).
//!
//! An entry is one certificate as admitted by one trust source (and pinned entry): the key is
//! `(fingerprint, trust, pinned)`, so the same certificate admitted by two sources is listed
//! twice. Memory is bounded by `capacity`; the least recently seen entry is dropped first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::certs::{rfc3339, rfc3339_unix};
use serde::Serialize;
use time::OffsetDateTime;

use crate::identity::{CertInfo, Identity};

/// How recently an identity must have been seen to count as expiring (SPEC 9.8: 24 hours).
const SEEN_WITHIN: i64 = 86_400;

/// What identifies an inventory entry: one certificate as admitted by one source.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    fingerprint: String,
    trust: Arc<str>,
    pinned: Option<Arc<str>>,
}

/// Only the first 16 characters of the fingerprint: a SHA-256 in hex, so they spread keys as
/// well as all of it would, at a quarter of the hashing on every request. Equality still
/// compares the whole key; the same certificate admitted by two sources shares a hash.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let fp = self.fingerprint.as_bytes();
        fp[..fp.len().min(16)].hash(state);
    }
}

impl Key {
    fn of(id: &Identity) -> Key {
        Key {
            fingerprint: id.cert.fingerprint.clone(),
            trust: id.trust.clone(),
            pinned: id.pinned.clone(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Position in `Inner::order`; larger is more recent.
    seq: u64,
    cert: Arc<CertInfo>,
    first_seen: OffsetDateTime,
    last_seen: OffsetDateTime,
    requests_allowed: u64,
    requests_denied: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Recency order: sequence number of the last touch -> key. The first element is the least
    /// recently seen entry. Always holds exactly one element per entry.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
}

impl Inner {
    /// The most recently seen entry, when it is `id`'s: one lookup, no key to build.
    fn recent_mut(&mut self, id: &Identity) -> Option<&mut Entry> {
        let (_, recent) = self.order.last_key_value()?;
        if recent.fingerprint == id.cert.fingerprint
            && recent.trust == id.trust
            && recent.pinned == id.pinned
        {
            self.entries.get_mut(recent)
        } else {
            None
        }
    }

    /// Find or create the entry for `id`, mark it as the most recently seen at `now`, evicting
    /// the least recently seen entry if a new one does not fit. `None` only when capacity is 0.
    fn touch(&mut self, id: &Identity, now: OffsetDateTime, capacity: usize) -> Option<&mut Entry> {
        if capacity == 0 {
            return None;
        }
        // Fast path, the common case under load: the most recently seen entry again. No key
        // to allocate, nothing to reorder.
        if let Some((_, recent)) = self.order.last_key_value() {
            if recent.fingerprint == id.cert.fingerprint
                && recent.trust == id.trust
                && recent.pinned == id.pinned
                && self.entries.contains_key(recent)
            {
                let entry = self.entries.get_mut(recent)?;
                entry.last_seen = now;
                return Some(entry);
            }
        }
        let key = Key::of(id);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old_seq) = self.entries.get(&key).map(|e| e.seq) {
            self.order.remove(&old_seq);
        } else {
            while self.entries.len() >= capacity {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        self.order.insert(seq, key.clone());
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            seq,
            cert: id.cert.clone(),
            first_seen: now,
            last_seen: now,
            requests_allowed: 0,
            requests_denied: 0,
        });
        entry.seq = seq;
        entry.last_seen = now;
        // Same fingerprint means same certificate; keep the newest parse anyway.
        entry.cert = id.cert.clone();
        Some(entry)
    }
}

/// Least recently seen identities are dropped first once `capacity` is reached.
///
/// All methods take a short `std::sync::Mutex`; none is ever held across an `.await`.
#[derive(Debug)]
pub struct Inventory {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// One `/identities` element, with exactly the SPEC 6 keys in that order.
#[derive(Serialize)]
struct EntryJson<'a> {
    trust: &'a str,
    pinned: Option<&'a str>,
    subject: &'a str,
    spiffe_id: Option<&'a str>,
    san_dns: &'a [String],
    fingerprint: &'a str,
    serial: &'a str,
    not_after: String,
    first_seen: String,
    last_seen: String,
    requests_allowed: u64,
    requests_denied: u64,
    routes: Vec<String>,
}

/// An entry copied out of the lock, for [`Inventory::to_json`].
struct Copied {
    key: Key,
    cert: Arc<CertInfo>,
    first_seen: OffsetDateTime,
    last_seen: OffsetDateTime,
    requests_allowed: u64,
    requests_denied: u64,
}

impl Inventory {
    /// An empty inventory holding at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> Inventory {
        Inventory {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The maximum number of entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of entries currently held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no identity has been recorded (or all were evicted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Note a handshake by this identity (creates the entry, updates `last_seen`).
    pub fn seen(&self, id: &Identity) {
        self.seen_at(id, OffsetDateTime::now_utc());
    }

    /// Count one request decision for this identity.
    ///
    /// Also refreshes `last_seen`, and re-creates the entry if it was evicted since the
    /// handshake (a long-lived connection must not vanish from the inventory).
    pub fn request(&self, id: &Identity, allowed: bool) {
        self.request_at(id, allowed, OffsetDateTime::now_utc());
    }

    /// JSON array with exactly the SPEC 6 keys and `routes` (SPEC 9.7: what `routes_for`
    /// says the identity may reach), most recently seen first.
    ///
    /// The entries are copied out under the lock (cheap: `Arc`s and counters), and the routes
    /// are computed after it is released: requests update the inventory, and must not wait
    /// for inventory size x routes matches.
    pub fn to_json(&self, routes_for: impl Fn(&Identity) -> Vec<Arc<str>>) -> String {
        let copied: Vec<Copied> = {
            let inner = self.lock();
            inner
                .order
                .values()
                .rev()
                .filter_map(|key| {
                    let e = inner.entries.get(key)?;
                    Some(Copied {
                        key: key.clone(),
                        cert: e.cert.clone(),
                        first_seen: e.first_seen,
                        last_seen: e.last_seen,
                        requests_allowed: e.requests_allowed,
                        requests_denied: e.requests_denied,
                    })
                })
                .collect()
        };
        let items: Vec<EntryJson<'_>> = copied
            .iter()
            .map(|c| EntryJson {
                trust: &c.key.trust,
                pinned: c.key.pinned.as_deref(),
                subject: &c.cert.subject,
                spiffe_id: c.cert.spiffe_id.as_deref(),
                san_dns: &c.cert.san_dns,
                fingerprint: &c.key.fingerprint,
                serial: &c.cert.serial,
                not_after: rfc3339_unix(c.cert.not_after),
                first_seen: rfc3339(c.first_seen),
                last_seen: rfc3339(c.last_seen),
                requests_allowed: c.requests_allowed,
                requests_denied: c.requests_denied,
                routes: routes_for(&Identity {
                    trust: c.key.trust.clone(),
                    pinned: c.key.pinned.clone(),
                    cert: c.cert.clone(),
                })
                .iter()
                .map(|r| r.to_string())
                .collect(),
            })
            .collect();
        serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_owned())
    }

    /// SPEC 9.8: per trust source, the identities seen in the last 24 hours whose notAfter
    /// falls within each of `windows` (seconds from `now`, Unix seconds), in that order.
    /// Windows are cumulative: each counts the shorter ones too. Certificates already expired
    /// are in no window.
    pub fn expiring<const N: usize>(
        &self,
        now: i64,
        windows: [i64; N],
    ) -> std::collections::BTreeMap<Arc<str>, [u64; N]> {
        let since = now.saturating_sub(SEEN_WITHIN);
        let mut out: std::collections::BTreeMap<Arc<str>, [u64; N]> = Default::default();
        let inner = self.lock();
        for (key, e) in &inner.entries {
            if e.last_seen.unix_timestamp() < since || e.cert.not_after < now {
                continue;
            }
            let counts = out.entry(key.trust.clone()).or_insert([0; N]);
            for (count, window) in counts.iter_mut().zip(windows) {
                if e.cert.not_after <= now.saturating_add(window) {
                    *count += 1;
                }
            }
        }
        out
    }

    fn seen_at(&self, id: &Identity, now: OffsetDateTime) {
        self.lock().touch(id, now, self.capacity);
    }

    fn request_at(&self, id: &Identity, allowed: bool, now: OffsetDateTime) {
        let mut inner = self.lock();
        let entry = match inner.recent_mut(id) {
            Some(e) => {
                e.last_seen = now;
                Some(e)
            }
            None => inner.touch(id, now, self.capacity),
        };
        if let Some(e) = entry {
            if allowed {
                e.requests_allowed += 1;
            } else {
                e.requests_denied += 1;
            }
        }
    }

    /// Nothing under this lock panics on peer input. Should a panic poison it anyway, the worst
    /// left behind is one entry missing from the recency order, so keep serving.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use time::macros::datetime;

    fn cert(fp: &str) -> Arc<CertInfo> {
        Arc::new(CertInfo {
            subject: format!("CN={fp},OU=payments"),
            issuer: "CN=ca".into(),
            cn: vec![fp.into()],
            o: vec![],
            ou: vec!["payments".into()],
            san_dns: vec![format!("{fp}.svc")],
            san_uri: vec![],
            san_email: vec![],
            san_ip: vec![],
            spiffe_id: Some(format!("spiffe://dev.local/sa/{fp}")),
            fingerprint: fp.into(),
            spki: "AAAA".into(),
            serial: "1f".into(),
            not_before: 0,
            not_after: 1_893_456_000, // 2030-01-01T00:00:00Z
            chain_not_after: vec![1_893_456_000],
            chain: vec![],
        })
    }

    fn id(fp: &str, trust: &str, pinned: Option<&str>) -> Identity {
        Identity {
            trust: trust.into(),
            pinned: pinned.map(Into::into),
            cert: cert(fp),
        }
    }

    fn parse(inv: &Inventory) -> Vec<Value> {
        let routes = |id: &Identity| -> Vec<Arc<str>> {
            if id.pinned.is_some() {
                vec![Arc::from("deploy")]
            } else {
                vec![Arc::from("api"), Arc::from("status")]
            }
        };
        match serde_json::from_str(&inv.to_json(routes)) {
            Ok(Value::Array(items)) => items,
            other => panic!("not a JSON array: {other:?}"),
        }
    }

    fn fingerprints(inv: &Inventory) -> Vec<String> {
        parse(inv)
            .iter()
            .map(|v| v["fingerprint"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn json_objects_have_exactly_the_spec_keys() {
        let inv = Inventory::new(10);
        inv.seen_at(
            &id("aa", "internal", None),
            datetime!(2025-03-01 10:00:00.25 UTC),
        );
        inv.seen_at(
            &id("bb", "lab", Some("ci-runner")),
            datetime!(2025-03-01 10:00:01 UTC),
        );
        let items = parse(&inv);
        assert_eq!(items.len(), 2);
        let mut keys: Vec<&str> = match &items[0] {
            Value::Object(m) => m.keys().map(String::as_str).collect(),
            other => panic!("not an object: {other}"),
        };
        keys.sort_unstable();
        let mut want = vec![
            "trust",
            "pinned",
            "subject",
            "spiffe_id",
            "san_dns",
            "fingerprint",
            "serial",
            "not_after",
            "first_seen",
            "last_seen",
            "requests_allowed",
            "requests_denied",
            "routes",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);

        let pinned = &items[0];
        assert_eq!(pinned["trust"], "lab");
        assert_eq!(pinned["pinned"], "ci-runner");
        let ca = &items[1];
        assert_eq!(ca["trust"], "internal");
        assert_eq!(ca["pinned"], Value::Null);
        assert_eq!(ca["subject"], "CN=aa,OU=payments");
        assert_eq!(ca["spiffe_id"], "spiffe://dev.local/sa/aa");
        assert_eq!(ca["san_dns"], serde_json::json!(["aa.svc"]));
        assert_eq!(ca["serial"], "1f");
        assert_eq!(ca["not_after"], "2030-01-01T00:00:00Z");
        assert_eq!(ca["first_seen"], "2025-03-01T10:00:00Z");
        assert_eq!(ca["last_seen"], "2025-03-01T10:00:00Z");
        assert_eq!(ca["requests_allowed"], 0);
        assert_eq!(ca["requests_denied"], 0);
        assert_eq!(ca["routes"], serde_json::json!(["api", "status"]));
        assert_eq!(pinned["routes"], serde_json::json!(["deploy"]));
    }

    #[test]
    fn null_spiffe_id_and_extreme_not_after() {
        let inv = Inventory::new(1);
        let mut c = (*cert("aa")).clone();
        c.spiffe_id = None;
        c.not_after = i64::MAX;
        inv.seen(&Identity {
            trust: "internal".into(),
            pinned: None,
            cert: Arc::new(c),
        });
        let items = parse(&inv);
        assert_eq!(items[0]["spiffe_id"], Value::Null);
        assert_eq!(items[0]["not_after"], "9999-12-31T23:59:59Z");
    }

    #[test]
    fn counts_and_timestamps() {
        let inv = Inventory::new(10);
        let alice = id("aa", "internal", None);
        inv.seen_at(&alice, datetime!(2025-03-01 10:00:00 UTC));
        inv.request_at(&alice, true, datetime!(2025-03-01 10:00:01 UTC));
        inv.request_at(&alice, true, datetime!(2025-03-01 10:00:02 UTC));
        inv.request_at(&alice, false, datetime!(2025-03-01 10:00:03 UTC));
        assert_eq!(inv.len(), 1);
        let items = parse(&inv);
        assert_eq!(items[0]["requests_allowed"], 2);
        assert_eq!(items[0]["requests_denied"], 1);
        assert_eq!(items[0]["first_seen"], "2025-03-01T10:00:00Z");
        assert_eq!(items[0]["last_seen"], "2025-03-01T10:00:03Z");
    }

    #[test]
    fn same_cert_from_two_sources_is_two_entries() {
        let inv = Inventory::new(10);
        inv.seen(&id("aa", "internal", None));
        inv.seen(&id("aa", "lab", Some("x")));
        inv.seen(&id("aa", "lab", Some("y")));
        inv.seen(&id("aa", "internal", None));
        assert_eq!(inv.len(), 3);
        let items = parse(&inv);
        assert_eq!(items[0]["trust"], "internal");
        assert_eq!(items[1]["pinned"], "y");
        assert_eq!(items[2]["pinned"], "x");
    }

    #[test]
    fn evicts_least_recently_seen_first() {
        let inv = Inventory::new(3);
        let (a, b, c, d, e) = (
            id("a", "t", None),
            id("b", "t", None),
            id("c", "t", None),
            id("d", "t", None),
            id("e", "t", None),
        );
        inv.seen(&a);
        inv.seen(&b);
        inv.seen(&c);
        assert_eq!(fingerprints(&inv), ["c", "b", "a"]);

        // Touching `a` by handshake makes `b` the oldest.
        inv.seen(&a);
        inv.seen(&d);
        assert_eq!(inv.len(), 3);
        assert_eq!(fingerprints(&inv), ["d", "a", "c"]);

        // Touching `c` by a request makes `a` the oldest.
        inv.request(&c, false);
        inv.seen(&e);
        assert_eq!(fingerprints(&inv), ["e", "c", "d"]);

        // A request by an evicted identity brings it back, as the most recent, with fresh counts.
        inv.request(&a, true);
        assert_eq!(fingerprints(&inv), ["a", "e", "c"]);
        let items = parse(&inv);
        assert_eq!(items[0]["requests_allowed"], 1);
        assert_eq!(items[2]["requests_denied"], 1);
    }

    #[test]
    fn expiring_counts_recent_identities_by_window() {
        let inv = Inventory::new(10);
        let now = datetime!(2030-01-01 00:00:00 UTC);
        let t = now.unix_timestamp();
        let day = 86_400;
        let with = |fp: &str, trust: &str, not_after: i64| {
            let mut c = (*cert(fp)).clone();
            c.not_after = not_after;
            Identity {
                trust: trust.into(),
                pinned: None,
                cert: Arc::new(c),
            }
        };
        // (identity, last seen)
        for (id, seen) in [
            (with("h12", "internal", t + day / 2), now),
            (with("d3", "internal", t + 3 * day), now),
            (
                with("d7", "internal", t + 7 * day),
                now - time::Duration::hours(23),
            ),
            (with("d20", "lab", t + 20 * day), now),
            (with("d90", "internal", t + 90 * day), now),
            (with("gone", "internal", t - 1), now),
            (
                with("stale", "internal", t + day),
                now - time::Duration::hours(25),
            ),
        ] {
            inv.seen_at(&id, seen);
        }
        let got = inv.expiring(t, [day, 7 * day, 30 * day]);
        let want: std::collections::BTreeMap<Arc<str>, [u64; 3]> = [
            (Arc::from("internal"), [1, 3, 3]),
            (Arc::from("lab"), [0, 0, 1]),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let inv = Inventory::new(0);
        inv.seen(&id("a", "t", None));
        inv.request(&id("a", "t", None), true);
        assert!(inv.is_empty());
        assert_eq!(inv.to_json(|_| Vec::new()), "[]");
    }
}
