//! All trust sources of one snapshot behind one verifier, and the attribution of a rejected
//! certificate to the source that decided it (SPEC 3's "first rule that applies").

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{chain, pinned, provider, Outcome, Rejection, TlsError};
use crate::config;
use crate::identity::{Admission, CertInfo, Identity};
use crate::policy::deny::DenyList;
use crate::revocation::Revocation;

/// One configured trust source, built.
#[derive(Debug)]
enum Source {
    Ca(Box<chain::CaSource>),
    Pinned(pinned::PinnedSource),
}

impl Source {
    fn name(&self) -> &Arc<str> {
        match self {
            Source::Ca(s) => s.name(),
            Source::Pinned(s) => s.name(),
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        match self {
            Source::Ca(s) => s.verify(end_entity, intermediates, now),
            Source::Pinned(s) => s.verify(end_entity, now),
        }
    }
}

/// All trust sources of one snapshot behind one rustls client-certificate verifier.
#[derive(Debug)]
pub struct TrustVerifier {
    sources: Vec<Source>,
    /// Subjects of every CA source's anchors (the CertificateRequest hint list).
    hints: Vec<DistinguishedName>,
    pub(super) provider: Arc<CryptoProvider>,
    /// `deny:` (SPEC 9.4), applied after a source admitted a certificate.
    deny: Arc<DenyList>,
}

impl TrustVerifier {
    /// Build every trust source (webpki verifiers with parsed CRLs, decoded pins) once.
    ///
    /// CRLs are parsed here, once per snapshot (never per connection).
    pub fn new(sources: &[config::TrustSource]) -> Result<TrustVerifier, TlsError> {
        Self::build(sources, None)
    }

    /// [`TrustVerifier::new`], with the CRLs `revocation` fetched for each CA source (SPEC 9.2)
    /// beside the ones its files hold.
    ///
    /// Sources with `crl_distribution_points` fetch the distribution points their clients'
    /// certificates name, a handshake waiting at most `wait` for a first fetch.
    pub fn with_revocation(
        sources: &[config::TrustSource],
        revocation: &Arc<Revocation>,
        wait: std::time::Duration,
    ) -> Result<TrustVerifier, TlsError> {
        Self::build(sources, Some((revocation, wait)))
    }

    fn build(
        sources: &[config::TrustSource],
        revocation: Option<(&Arc<Revocation>, std::time::Duration)>,
    ) -> Result<TrustVerifier, TlsError> {
        let provider = provider();
        let mut built = Vec::with_capacity(sources.len());
        let mut hints = Vec::new();
        for source in sources {
            match &source.kind {
                config::TrustKind::Ca(ca) => {
                    let fetched = revocation
                        .map(|(r, _)| r.fetched_crls(&source.name, ca))
                        .unwrap_or_default();
                    let distribution_points =
                        revocation.map(|(r, wait)| chain::DistributionPoints {
                            allow: ca.crl_dp_allow.clone(),
                            revocation: r.clone(),
                            wait,
                            known: fetched.iter().map(|f| f.url.clone()).collect(),
                        });
                    let s = chain::CaSource::new(
                        source.name.clone(),
                        ca,
                        fetched.iter().map(|f| f.crl.der.clone()),
                        distribution_points,
                        provider.clone(),
                    )?;
                    hints.extend(s.root_hint_subjects().iter().cloned());
                    built.push(Source::Ca(Box::new(s)));
                }
                config::TrustKind::Pinned(p) => {
                    built.push(Source::Pinned(pinned::PinnedSource::new(
                        source.name.clone(),
                        p,
                    )));
                }
            }
        }
        Ok(TrustVerifier {
            sources: built,
            hints,
            provider,
            deny: Arc::default(),
        })
    }

    /// Refuse certificates that `deny` lists, once a source has admitted them.
    pub fn with_deny(mut self, deny: Arc<DenyList>) -> TrustVerifier {
        self.deny = deny;
        self
    }

    /// The deny list a source's admission still has to pass: `deny_listed` with `trust` = the
    /// admitting source when an entry matches.
    fn check_deny(
        &self,
        admission: Admission,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Admission, Rejection> {
        if self.deny.is_empty() {
            return Ok(admission);
        }
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        let cert = match CertInfo::from_chain(&chain) {
            Ok(cert) => cert,
            Err(e) => {
                return Err(Rejection {
                    trust: Some(admission.trust),
                    outcome: Outcome::InvalidCert,
                    detail: e.to_string(),
                    deny_reason: None,
                })
            }
        };
        let identity = Identity::new(admission, Arc::new(cert));
        match self.deny.find(&identity) {
            None => Ok(Admission {
                trust: identity.trust,
                pinned: identity.pinned,
            }),
            Some(entry) => Err(Rejection {
                trust: Some(identity.trust.clone()),
                outcome: Outcome::DenyListed,
                detail: format!(
                    "deny[{}] ({}) matches: {}",
                    entry.index,
                    entry.entry.describe(),
                    entry.reason.as_deref().unwrap_or("no reason given")
                ),
                deny_reason: entry.reason.clone(),
            }),
        }
    }

    /// Verify a presented chain against every source in order; the first that admits wins.
    ///
    /// When none admits: the first failure (in config order) of a source that recognised the
    /// certificate (a CA source that built a chain to its anchors, or a pinned entry that
    /// matched) is reported with that source as `trust`; otherwise `pin_mismatch` for a
    /// self-signed certificate when a pinned source exists, else `unknown_issuer` (or
    /// `invalid_cert` when the certificate cannot be parsed), with `trust = None`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admission, Rejection> {
        let self_signed = match x509_parser::parse_x509_certificate(end_entity.as_ref()) {
            Ok((_, x509)) => x509.subject().as_raw() == x509.issuer().as_raw(),
            Err(e) => {
                return Err(Rejection {
                    trust: None,
                    outcome: Outcome::InvalidCert,
                    detail: format!("certificate cannot be parsed: {e}"),
                    deny_reason: None,
                })
            }
        };
        let mut attributed: Option<Rejection> = None;
        let mut unattributed: Vec<Rejection> = Vec::new();
        for source in &self.sources {
            match source.verify(end_entity, intermediates, now) {
                Ok(admission) => return self.check_deny(admission, end_entity, intermediates),
                Err(r) if r.trust.is_some() => {
                    if attributed.is_none() {
                        attributed = Some(r);
                    }
                }
                Err(r) => unattributed.push(r),
            }
        }
        if let Some(r) = attributed {
            return Err(r);
        }
        if let Some(r) = unattributed
            .iter()
            .find(|r| r.outcome == Outcome::InvalidCert)
        {
            return Err(r.clone());
        }
        let has_pinned = self.sources.iter().any(|s| matches!(s, Source::Pinned(_)));
        let outcome = if self_signed && has_pinned {
            Outcome::PinMismatch
        } else {
            Outcome::UnknownIssuer
        };
        let detail = if unattributed.is_empty() {
            "no trust source configured".to_string()
        } else {
            unattributed
                .iter()
                .map(|r| r.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(Rejection {
            trust: None,
            outcome,
            detail,
            deny_reason: None,
        })
    }

    /// The verdict of each source separately (for `explain`), in config order.
    pub fn verify_each(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<(Arc<str>, Result<Admission, Rejection>)> {
        self.sources
            .iter()
            .map(|s| (s.name().clone(), s.verify(end_entity, intermediates, now)))
            .collect()
    }

    /// Subjects of all CA sources' anchors, as sent in the CertificateRequest.
    pub fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
}

#[cfg(test)]
mod tests {
    use crate::tls::testing::*;

    #[test]
    fn mixed_sources_admit_by_the_right_source() {
        let p = pki();
        let other = TestCa::root("partner root").unwrap();
        let ci = TestCert::self_signed(&LeafSpec::client("ci-runner")).unwrap();
        let v = TrustVerifier::new(&[
            ca_source("internal", &p.root, vec![]),
            ca_source("partner", &other, vec![]),
            pinned_source(
                "lab",
                vec![entry("ci-runner", cert_pin(&ci), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        ca_admits(
            &v,
            &p.inter.issue(&LeafSpec::client("alice")).unwrap(),
            "internal",
        );
        ca_admits(
            &v,
            &other.issue(&LeafSpec::client("bob")).unwrap(),
            "partner",
        );
        let adm = verify(&v, &ci).unwrap();
        assert_eq!(
            (&*adm.trust, adm.pinned.as_deref()),
            ("lab", Some("ci-runner"))
        );
        assert_eq!(v.root_hint_subjects().len(), 2);

        // A failure of the source that built the chain is reported with that source.
        let mut spec = LeafSpec::client("old");
        (spec.not_before, spec.not_after) = past();
        let c = other.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), (Some("partner".into()), Outcome::Expired));

        // A CA that copies the partner root's name with another key: its expired or
        // serverAuth-only certificates were never signed by the partner, so the verifier's
        // first complaint (dates, EKU) is not the partner's failure; they are forgeries of its
        // name, `bad_signature`, as when their dates are fine.
        let impostor = TestCa::root("partner root").unwrap();
        let forged = (Some("partner".into()), Outcome::BadSignature);
        let c = impostor.issue(&spec).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        let mut sa = LeafSpec::client("sa");
        sa.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = impostor.issue(&sa).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        let c = impostor.issue(&LeafSpec::client("fine-dates")).unwrap();
        assert_eq!(rejected(&v, &c), forged);
        // ...while the real partner's serverAuth-only certificate is the partner's failure.
        let c = other.issue(&sa).unwrap();
        assert_eq!(
            rejected(&v, &c),
            (Some("partner".into()), Outcome::InvalidUsage)
        );

        let each = v.verify_each(&ci.chain[0], &[], now());
        let names: Vec<_> = each.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["internal", "partner", "lab"]);
        assert!(each[0].1.is_err() && each[1].1.is_err() && each[2].1.is_ok());
    }
}
