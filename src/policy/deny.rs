//! The deny list (SPEC 9.4): the emergency brake, checked before any route, at the handshake
//! and again whenever a connection's identity is re-checked.
//!
//! Entries that name a serial, a fingerprint or an SPKI hash are indexed by it, so that a list
//! of thousands of leaked certificates costs a few hash lookups per check, not a scan; only the
//! entries without such a key (SPIFFE ID patterns, names) are scanned.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AllowEntry, Matcher};
use crate::identity::Identity;

/// One `deny:` entry.
#[derive(Debug)]
pub struct DenyEntry {
    /// Its position in `deny:` (for `deny[i]` in logs and `explain`).
    pub index: usize,
    /// All of its keys must match (never `authenticated`, never empty).
    pub entry: AllowEntry,
    /// Free text for the audit line's `deny_reason`; never sent to a client.
    pub reason: Option<Arc<str>>,
}

/// Which indexed key an entry is filed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Serial,
    Fingerprint,
    Spki,
}

/// The compiled `deny:` list.
#[derive(Debug, Default)]
pub struct DenyList {
    entries: Vec<DenyEntry>,
    /// (key kind, canonical value) -> indices into `entries`, ascending.
    indexed: HashMap<(Key, String), Vec<usize>>,
    /// Entries without an indexed key, ascending.
    scanned: Vec<usize>,
}

fn serial_key(s: &str) -> String {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    digits.trim_start_matches('0').to_ascii_lowercase()
}

fn fingerprint_key(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

fn spki_key(s: &str) -> String {
    s.trim_end_matches('=').to_owned()
}

impl DenyList {
    /// Compile `entries` (in `deny:` order).
    pub fn new(entries: Vec<DenyEntry>) -> DenyList {
        let mut indexed: HashMap<(Key, String), Vec<usize>> = HashMap::new();
        let mut scanned = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let key = e.entry.matchers.iter().find_map(|m| match m {
                Matcher::Serial(s) => Some((Key::Serial, serial_key(s))),
                Matcher::Fingerprint(f) => Some((Key::Fingerprint, fingerprint_key(f))),
                Matcher::Spki(s) => Some((Key::Spki, spki_key(s))),
                _ => None,
            });
            match key {
                Some(k) => indexed.entry(k).or_default().push(i),
                None => scanned.push(i),
            }
        }
        DenyList {
            entries,
            indexed,
            scanned,
        }
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in `deny:` order.
    pub fn entries(&self) -> &[DenyEntry] {
        &self.entries
    }

    /// The first entry (in `deny:` order) that `id` matches.
    pub fn find(&self, id: &Identity) -> Option<&DenyEntry> {
        if self.entries.is_empty() {
            return None;
        }
        let c = &id.cert;
        let lookups = [
            (Key::Serial, serial_key(&c.serial)),
            (Key::Fingerprint, fingerprint_key(&c.fingerprint)),
            (Key::Spki, spki_key(&c.spki)),
        ];
        lookups
            .iter()
            .filter_map(|k| self.indexed.get(k))
            .flatten()
            .chain(&self.scanned)
            .copied()
            .filter(|&i| self.entries[i].entry.matches(id))
            .min()
            .map(|i| &self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Admission, CertInfo};

    fn identity(serial: &str, spiffe: Option<&str>, trust: &str) -> Identity {
        Identity::new(
            Admission {
                trust: trust.into(),
                pinned: None,
            },
            Arc::new(CertInfo {
                subject: "CN=x".into(),
                issuer: "CN=ca".into(),
                cn: vec!["x".into()],
                o: vec![],
                ou: vec![],
                san_dns: vec![],
                san_uri: spiffe.iter().map(|s| s.to_string()).collect(),
                san_email: vec![],
                san_ip: vec![],
                spiffe_id: spiffe.map(str::to_owned),
                fingerprint: "ab".repeat(32),
                spki: "c3BraQ==".into(),
                serial: serial.into(),
                not_before: 0,
                not_after: 1,
                chain_not_after: vec![1],
                chain: vec![],
            }),
        )
    }

    fn entry(index: usize, keys: &[(&str, &str)], reason: &str) -> DenyEntry {
        DenyEntry {
            index,
            entry: AllowEntry {
                matchers: keys
                    .iter()
                    .map(|(k, v)| Matcher::parse(k, v).unwrap())
                    .collect(),
            },
            reason: Some(reason.into()),
        }
    }

    #[test]
    fn indexed_and_scanned_entries_match_in_config_order() {
        let list = DenyList::new(vec![
            entry(
                0,
                &[("serial", "00:4F:2A:9C"), ("trust", "internal")],
                "leak",
            ),
            entry(
                1,
                &[("spiffe_id", "spiffe://example.org/ns/legacy/*")],
                "legacy",
            ),
            entry(2, &[("fingerprint", &"AB".repeat(32))], "fp"),
            entry(3, &[("serial", "4f2a9c")], "any source"),
        ]);
        let find = |id: &Identity| list.find(id).map(|e| e.index);
        // Serial case, colons and leading zeros do not matter; all keys must match.
        assert_eq!(find(&identity("4f2a9c", None, "internal")), Some(0));
        assert_eq!(find(&identity("4f2a9c", None, "lab")), Some(2));
        assert_eq!(
            find(&identity(
                "01",
                Some("spiffe://example.org/ns/legacy/svc"),
                "lab"
            )),
            Some(1)
        );
        let other = DenyList::new(vec![entry(0, &[("serial", "01")], "x")]);
        assert!(other.find(&identity("02", None, "internal")).is_none());
        assert!(DenyList::default()
            .find(&identity("01", None, "x"))
            .is_none());
    }

    #[test]
    fn ten_thousand_serials_are_indexed_not_scanned() {
        let entries: Vec<DenyEntry> = (0..10_000)
            .map(|i| entry(i, &[("serial", &format!("{:x}", i + 1))], "bulk"))
            .collect();
        let list = DenyList::new(entries);
        assert!(list.scanned.is_empty());
        assert_eq!(
            list.find(&identity("2710", None, "a")).map(|e| e.index),
            Some(9_999)
        );
        assert!(list.find(&identity("2711", None, "a")).is_none());
    }
}
