//! Pinned trust sources: our own verifier over SHA-256 certificate or SPKI pins.
//!
//! Pins are compared in constant time. The handshake signature is still verified by rustls
//! (see the recording verifier in `server_config.rs`), so a client must hold the pinned key.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, UnixTime};
use subtle::ConstantTimeEq;

use super::{Outcome, Rejection};
use crate::certs::sha256;
use crate::config::{OverdueAction, Pin, PinnedTrust};
use crate::identity::Admission;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinKind {
    Cert,
    Spki,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    kind: PinKind,
    hash: [u8; 32],
    review_by: Option<time::Date>,
    /// When the entry becomes overdue for review ([`crate::config::PinnedEntry::overdue_from`]).
    overdue_from: Option<i64>,
}

/// One pinned trust source, built once per snapshot.
#[derive(Debug)]
pub struct PinnedSource {
    name: Arc<str>,
    entries: Vec<Entry>,
    check_validity: bool,
    on_overdue_review: OverdueAction,
}

impl PinnedSource {
    /// Build from the typed config (pins are already decoded there).
    pub fn new(name: Arc<str>, pinned: &PinnedTrust) -> PinnedSource {
        let entries = pinned
            .entries
            .iter()
            .map(|e| {
                let (kind, hash) = match &e.pin {
                    Pin::Cert { sha256, .. } => (PinKind::Cert, *sha256),
                    Pin::Sha256(h) => (PinKind::Cert, *h),
                    Pin::Spki(h) => (PinKind::Spki, *h),
                };
                Entry {
                    name: e.name.clone(),
                    kind,
                    hash,
                    review_by: e.review_by,
                    overdue_from: e.overdue_from(),
                }
            })
            .collect();
        PinnedSource {
            name,
            entries,
            check_validity: pinned.check_validity,
            on_overdue_review: pinned.on_overdue_review,
        }
    }

    /// The source's name from the config.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Check the leaf against the pins. A rejection carries `trust = Some(name)` when an entry
    /// matched and then failed (dates, overdue review); `pin_mismatch` has `trust = None`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        let (_, x509) =
            x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|e| Rejection {
                trust: None,
                outcome: Outcome::InvalidCert,
                detail: format!("certificate cannot be parsed: {e}"),
                deny_reason: None,
            })?;
        let cert_hash = sha256(end_entity.as_ref());
        let spki_hash = sha256(x509.public_key().raw);

        // Compare against every entry so timing does not reveal which entry matched.
        let mut matched: Option<&Entry> = None;
        for entry in &self.entries {
            let candidate = match entry.kind {
                PinKind::Cert => &cert_hash,
                PinKind::Spki => &spki_hash,
            };
            let eq: bool = entry.hash.ct_eq(candidate).into();
            if eq && matched.is_none() {
                matched = Some(entry);
            }
        }
        let Some(entry) = matched else {
            return Err(Rejection {
                trust: None,
                outcome: Outcome::PinMismatch,
                detail: format!("certificate matches no pin of {}", self.name),
                deny_reason: None,
            });
        };
        let reject = |outcome: Outcome, detail: String| Rejection {
            trust: Some(self.name.clone()),
            outcome,
            detail,
            deny_reason: None,
        };

        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if self.check_validity {
            let v = x509.validity();
            if now_secs < v.not_before.timestamp() {
                return Err(reject(
                    Outcome::NotYetValid,
                    format!("pinned certificate {} is not valid yet", entry.name),
                ));
            }
            if now_secs > v.not_after.timestamp() {
                return Err(reject(
                    Outcome::Expired,
                    format!("pinned certificate {} has expired", entry.name),
                ));
            }
        }
        if self.on_overdue_review == OverdueAction::Deny
            && entry.overdue_from.is_some_and(|from| now_secs >= from)
        {
            return Err(reject(
                Outcome::ReviewOverdue,
                format!(
                    "pinned entry {} was due for review on {}",
                    entry.name,
                    entry.review_by.map(|d| d.to_string()).unwrap_or_default()
                ),
            ));
        }
        Ok(Admission {
            trust: self.name.clone(),
            pinned: Some(entry.name.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::tls::testing::*;

    #[test]
    fn pinned_by_cert_sha256_and_spki() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let b = TestCert::self_signed(&LeafSpec::client("b")).unwrap();
        let c = TestCert::self_signed(&LeafSpec::client("c")).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![
                entry("by-cert", cert_pin(&a), None),
                entry("by-sha256", Pin::Sha256(sha256(b.cert.as_ref())), None),
                entry("by-spki", spki_pin(&c), None),
            ],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        for (cert, name) in [(&a, "by-cert"), (&b, "by-sha256"), (&c, "by-spki")] {
            let adm = verify(&v, cert).unwrap();
            assert_eq!(&*adm.trust, "lab");
            assert_eq!(adm.pinned.as_deref(), Some(name));
        }
        assert!(v.root_hint_subjects().is_empty());
    }

    #[test]
    fn first_matching_pin_wins() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![
                entry("first", spki_pin(&a), None),
                entry("second", cert_pin(&a), None),
            ],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        assert_eq!(verify(&v, &a).unwrap().pinned.as_deref(), Some("first"));
    }

    #[test]
    fn pin_mismatch() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let rogue = TestCert::self_signed(&LeafSpec::client("rogue")).unwrap();
        let p = pki();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            pinned_source(
                "lab",
                vec![entry("a", cert_pin(&a), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        assert_eq!(rejected(&v, &rogue), (None, Outcome::PinMismatch));
        // Not self-signed and no chain: unknown_issuer even with a pinned source.
        let other = TestCa::root("other").unwrap();
        let c = other.issue(&LeafSpec::client("x")).unwrap();
        assert_eq!(rejected(&v, &c), (None, Outcome::UnknownIssuer));
    }

    #[test]
    fn pinned_expired_and_check_validity_off() {
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let old = TestCert::self_signed(&spec).unwrap();
        let entries = || vec![entry("old", cert_pin(&old), None)];
        let v = TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Warn)])
            .unwrap();
        assert_eq!(rejected(&v, &old), (Some("lab".into()), Outcome::Expired));
        let v = TrustVerifier::new(&[pinned_source("lab", entries(), false, OverdueAction::Warn)])
            .unwrap();
        assert_eq!(verify(&v, &old).unwrap().pinned.as_deref(), Some("old"));

        let mut spec = LeafSpec::client("future");
        spec.not_before = OffsetDateTime::now_utc() + Duration::days(2);
        let future = TestCert::self_signed(&spec).unwrap();
        let v = TrustVerifier::new(&[pinned_source(
            "lab",
            vec![entry("future", cert_pin(&future), None)],
            true,
            OverdueAction::Warn,
        )])
        .unwrap();
        assert_eq!(
            rejected(&v, &future),
            (Some("lab".into()), Outcome::NotYetValid)
        );
    }

    #[test]
    fn review_overdue_warn_and_deny() {
        let a = TestCert::self_signed(&LeafSpec::client("a")).unwrap();
        let today = OffsetDateTime::now_utc().date();
        let overdue = Some(today - Duration::days(1));
        let entries = || {
            vec![
                entry("a", cert_pin(&a), overdue),
                entry(
                    "fresh",
                    Pin::Sha256([7; 32]),
                    Some(today + Duration::days(10)),
                ),
                entry("due-today", Pin::Sha256([8; 32]), Some(today)),
            ]
        };
        let warn =
            TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Warn)])
                .unwrap();
        assert_eq!(verify(&warn, &a).unwrap().pinned.as_deref(), Some("a"));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let overdue: Vec<String> = entries()
            .iter()
            .filter(|e| e.overdue_at(now))
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(overdue, ["a"], "due today is not overdue yet");

        let deny =
            TrustVerifier::new(&[pinned_source("lab", entries(), true, OverdueAction::Deny)])
                .unwrap();
        assert_eq!(
            rejected(&deny, &a),
            (Some("lab".into()), Outcome::ReviewOverdue)
        );
    }
}
