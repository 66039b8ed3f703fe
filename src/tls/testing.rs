//! Fixtures for the verifier tests of `chain.rs`, `pinned.rs`, `trust.rs` and `tests.rs`:
//! trust sources built directly from rcgen certificates, without config files.

pub(crate) use std::path::PathBuf;
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration as StdDuration;

pub(crate) use rcgen::ExtendedKeyUsagePurpose;
pub(crate) use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
pub(crate) use time::{Duration, OffsetDateTime};

pub(crate) use super::{Outcome, Rejection, TrustVerifier};
pub(crate) use crate::certs::sha256;
pub(crate) use crate::config::{
    CaTrust, CrlFile, OverdueAction, Pin, PinnedEntry, PinnedTrust, Revocation, RevocationDepth,
    TrustKind, TrustSource,
};
pub(crate) use crate::devpki::{LeafSpec, TestCa, TestCert};
pub(crate) use crate::identity::Admission;

pub(crate) fn now() -> UnixTime {
    UnixTime::now()
}

/// `der` as the config loads a CRL file (issuer, dates, number and scope read from it).
pub(crate) fn crl_file(der: CertificateRevocationListDer<'static>) -> CrlFile {
    crate::config::pki::parse_crls(std::path::Path::new("test.crl"), der.as_ref())
        .unwrap()
        .remove(0)
}

pub(crate) fn ca_source(
    name: &str,
    ca: &TestCa,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> TrustSource {
    ca_source_with(name, ca, crls, default_revocation(), None)
}

pub(crate) fn default_revocation() -> Revocation {
    Revocation {
        depth: RevocationDepth::Chain,
        allow_unknown_status: false,
        allow_expired_crl: false,
    }
}

pub(crate) fn ca_source_with(
    name: &str,
    ca: &TestCa,
    crls: Vec<CertificateRevocationListDer<'static>>,
    revocation: Revocation,
    max_lifetime: Option<StdDuration>,
) -> TrustSource {
    TrustSource {
        name: name.into(),
        kind: TrustKind::Ca(CaTrust {
            ca_path: PathBuf::from("ca.crt"),
            anchors: vec![ca.cert.clone()],
            intermediates: vec![],
            crls: crls.into_iter().map(crl_file).collect(),
            crl_urls: vec![],
            crl_cache_dir: None,
            crl_dp_allow: vec![],
            ocsp: None,
            revocation,
            max_lifetime,
        }),
        spiffe_trust_domains: Vec::new(),
    }
}

pub(crate) fn entry(name: &str, pin: Pin, review_by: Option<time::Date>) -> PinnedEntry {
    PinnedEntry {
        name: name.into(),
        pin,
        owner: None,
        purpose: None,
        review_by,
    }
}

pub(crate) fn pinned_source(
    name: &str,
    entries: Vec<PinnedEntry>,
    check_validity: bool,
    on_overdue: OverdueAction,
) -> TrustSource {
    TrustSource {
        name: name.into(),
        kind: TrustKind::Pinned(PinnedTrust {
            entries,
            check_validity,
            on_overdue_review: on_overdue,
        }),
        spiffe_trust_domains: Vec::new(),
    }
}

pub(crate) fn cert_pin(c: &TestCert) -> Pin {
    Pin::Cert {
        path: PathBuf::from("pinned.crt"),
        sha256: sha256(c.cert.as_ref()),
        not_after: 0,
    }
}

pub(crate) fn spki_pin(c: &TestCert) -> Pin {
    let (_, x) = x509_parser::parse_x509_certificate(c.cert.as_ref()).unwrap();
    Pin::Spki(sha256(x.public_key().raw))
}

pub(crate) fn verify(v: &TrustVerifier, c: &TestCert) -> Result<Admission, Rejection> {
    v.verify(&c.chain[0], &c.chain[1..], now())
}

pub(crate) fn rejected(v: &TrustVerifier, c: &TestCert) -> (Option<String>, Outcome) {
    let r = verify(v, c).expect_err("should be rejected");
    (r.trust.map(|t| t.to_string()), r.outcome)
}

pub(crate) fn ca_admits(v: &TrustVerifier, c: &TestCert, name: &str) {
    let a = verify(v, c).expect("should be admitted");
    assert_eq!(&*a.trust, name);
    assert_eq!(a.pinned, None);
}

pub(crate) struct Pki {
    pub(crate) root: TestCa,
    pub(crate) inter: TestCa,
}

pub(crate) fn pki() -> Pki {
    let root = TestCa::root("test root").unwrap();
    let inter = root.intermediate("test intermediate").unwrap();
    Pki { root, inter }
}

pub(crate) fn past() -> (OffsetDateTime, OffsetDateTime) {
    let n = OffsetDateTime::now_utc();
    (n - Duration::days(30), n - Duration::days(1))
}
