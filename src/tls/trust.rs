//! All trust sources of one snapshot behind one verifier, and the attribution of a rejected
//! certificate to the source that decided it (SPEC 3's "first rule that applies").

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{chain, pinned, provider, Outcome, Rejection, TlsError};
use crate::config;
use crate::identity::{self, Admission, CertInfo, Identity};
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
    /// The SPIFFE trust domains each source binds, in the order of `sources` (SPEC 9.5).
    domains: Vec<Vec<String>>,
    /// Every bound trust domain with the source it belongs to; empty when no source binds
    /// any, and then no certificate's URI SANs are even read.
    owners: Vec<(String, Arc<str>)>,
    /// Subjects of every CA source's anchors (the CertificateRequest hint list).
    hints: Vec<DistinguishedName>,
    pub(super) provider: Arc<CryptoProvider>,
    /// `deny:` (SPEC 9.4), applied after a source admitted a certificate.
    deny: Arc<DenyList>,
}

/// The most intermediate certificates a client may send with its leaf.
pub const MAX_INTERMEDIATES: usize = 8;

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
        Self::build(sources, Some((revocation, wait, true)))
    }

    /// [`TrustVerifier::with_revocation`] that never asks the network (`explain --offline`):
    /// the CRLs already fetched or cached still apply, OCSP and distribution points do not.
    pub fn offline(
        sources: &[config::TrustSource],
        revocation: &Arc<Revocation>,
    ) -> Result<TrustVerifier, TlsError> {
        Self::build(
            sources,
            Some((revocation, std::time::Duration::ZERO, false)),
        )
    }

    fn build(
        sources: &[config::TrustSource],
        revocation: Option<(&Arc<Revocation>, std::time::Duration, bool)>,
    ) -> Result<TrustVerifier, TlsError> {
        let provider = provider();
        let mut built = Vec::with_capacity(sources.len());
        let mut hints = Vec::new();
        let mut domains = Vec::with_capacity(sources.len());
        let mut owners = Vec::new();
        for source in sources {
            domains.push(source.spiffe_trust_domains.clone());
            owners.extend(
                source
                    .spiffe_trust_domains
                    .iter()
                    .map(|d| (d.clone(), source.name.clone())),
            );
            match &source.kind {
                config::TrustKind::Ca(ca) => {
                    let fetched = revocation
                        .map(|(r, _, _)| r.fetched_crls(&source.name, ca))
                        .unwrap_or_default();
                    let online = revocation
                        .filter(|(_, _, online)| *online)
                        .map(|(r, wait, _)| chain::Online {
                            allow: ca.crl_dp_allow.clone(),
                            revocation: r.clone(),
                            wait,
                            known: fetched.iter().map(|f| f.url.clone()).collect(),
                            ocsp: ca.ocsp.clone(),
                        });
                    let s = chain::CaSource::new(
                        source.name.clone(),
                        ca,
                        fetched.iter().map(|f| f.crl.clone()),
                        online,
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
            domains,
            owners,
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

    /// The verdict of source `i`, with the trust-domain bindings applied to an admission.
    fn verify_source(
        &self,
        i: usize,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        uris: &[String],
    ) -> Result<Admission, Rejection> {
        let admission = self.sources[i].verify(end_entity, intermediates, now)?;
        self.check_domains(i, &admission, uris)?;
        Ok(admission)
    }

    /// The trust-domain bindings for an admission by source `i` (nothing to do without any).
    fn check_domains(
        &self,
        i: usize,
        admission: &Admission,
        uris: &[String],
    ) -> Result<(), Rejection> {
        match self.domains.get(i) {
            Some(bound) if !self.owners.is_empty() => {
                check_trust_domains(&admission.trust, bound, &self.owners, uris)
            }
            _ => Ok(()),
        }
    }

    /// The leaf's URI SANs, read only when some source binds trust domains.
    fn uris_to_check(&self, leaf: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
        if self.owners.is_empty() {
            return Vec::new();
        }
        let Ok(Some(san)) = leaf.subject_alternative_name() else {
            return Vec::new();
        };
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect()
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
        // Path building tries the candidates the client sent, for every source and again to
        // attribute a failure: a long list of forged intermediates with one subject would
        // make each handshake cost many signature checks. No real client path needs more
        // (webpki accepts at most 6 intermediates on a path).
        if intermediates.len() > MAX_INTERMEDIATES {
            return Err(Rejection {
                trust: None,
                outcome: Outcome::InvalidCert,
                detail: format!(
                    "the client sent {} intermediate certificates, more than {MAX_INTERMEDIATES}",
                    intermediates.len()
                ),
                deny_reason: None,
            });
        }
        let (self_signed, uris) = match x509_parser::parse_x509_certificate(end_entity.as_ref()) {
            Ok((_, x509)) => (
                x509.subject().as_raw() == x509.issuer().as_raw(),
                self.uris_to_check(&x509),
            ),
            Err(e) => {
                return Err(Rejection {
                    trust: None,
                    outcome: Outcome::InvalidCert,
                    detail: format!("certificate cannot be parsed: {e}"),
                    deny_reason: None,
                })
            }
        };
        // A source that admitted the chain but whose trust-domain rules refuse it: the most
        // specific verdict, unless a later source admits the certificate outright (the same
        // CA may back a source with bindings and one without).
        let mut domain_refusal: Option<Rejection> = None;
        let mut attributed: Option<Rejection> = None;
        let mut unattributed: Vec<Rejection> = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            match source.verify(end_entity, intermediates, now) {
                Ok(admission) => match self.check_domains(i, &admission, &uris) {
                    Ok(()) => return self.check_deny(admission, end_entity, intermediates),
                    Err(r) => {
                        domain_refusal.get_or_insert(r);
                    }
                },
                Err(r) if r.trust.is_some() => {
                    if attributed.is_none() {
                        attributed = Some(r);
                    }
                }
                Err(r) => unattributed.push(r),
            }
        }
        if let Some(r) = domain_refusal.or(attributed) {
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
        let uris = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map(|(_, x509)| self.uris_to_check(&x509))
            .unwrap_or_default();
        (0..self.sources.len())
            .map(|i| {
                let verdict = self.verify_source(i, end_entity, intermediates, now, &uris);
                (self.sources[i].name().clone(), verdict)
            })
            .collect()
    }

    /// Subjects of all CA sources' anchors, as sent in the CertificateRequest.
    pub fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
}

/// SPEC 9.5 for a certificate that source `admitted` (binding the domains `bound`) admitted,
/// given every binding of the snapshot and the leaf's URI SANs:
///
/// * a SPIFFE ID in a trust domain bound to another source: `trust_domain_mismatch`;
/// * a source with bindings and a SPIFFE ID outside them: `trust_domain_mismatch`;
/// * a source with bindings and a `spiffe` URI SAN that is not a valid SPIFFE ID: `invalid_cert`.
///
/// Every `spiffe` URI SAN counts, not only a well-formed SVID's single one: `san_uri` rules
/// see all of them. A malformed one is read leniently (`SPIFFE://Example.ORG:8/x`), so it
/// cannot dodge another source's binding. Details name config values only, never
/// certificate text.
fn check_trust_domains(
    admitted: &Arc<str>,
    bound: &[String],
    owners: &[(String, Arc<str>)],
    uris: &[String],
) -> Result<(), Rejection> {
    let refuse = |outcome, detail: String| {
        Err(Rejection {
            trust: Some(admitted.clone()),
            outcome,
            detail,
            deny_reason: None,
        })
    };
    for uri in uris.iter().filter(|u| identity::is_spiffe_uri(u)) {
        let (domain, invalid) = match identity::spiffe_trust_domain(uri) {
            Ok(td) => (td.to_owned(), None),
            Err(e) => (
                identity::loose_trust_domain(uri).unwrap_or_default(),
                Some(e),
            ),
        };
        if let Some(e) = invalid.filter(|_| !bound.is_empty()) {
            return refuse(
                Outcome::InvalidCert,
                format!(
                    "a spiffe URI SAN is not a valid SPIFFE ID (it {e}), and {admitted} binds \
                     trust domains"
                ),
            );
        }
        match owners.iter().find(|(d, _)| *d == domain) {
            Some((_, owner)) if owner != admitted => {
                return refuse(
                    Outcome::TrustDomainMismatch,
                    format!(
                        "the SPIFFE ID is in trust domain `{domain}`, which belongs to trust \
                         source {owner}, not {admitted}"
                    ),
                );
            }
            Some(_) => {}
            None if !bound.is_empty() => {
                return refuse(
                    Outcome::TrustDomainMismatch,
                    format!(
                        "the SPIFFE ID is outside {admitted}'s trust domains ({})",
                        bound.join(", ")
                    ),
                );
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MAX_INTERMEDIATES;
    use crate::tls::testing::*;

    #[test]
    fn a_client_sending_more_than_eight_intermediates_is_refused_before_path_building() {
        let p = pki();
        let v = TrustVerifier::new(&[ca_source("internal", &p.root, vec![])]).unwrap();
        let alice = p.inter.issue(&LeafSpec::client("alice")).unwrap();
        let intermediate = alice.chain[1].clone();
        let padded = |n: usize| vec![intermediate.clone(); n];
        let admitted = v.verify(&alice.chain[0], &padded(MAX_INTERMEDIATES), now());
        assert_eq!(&*admitted.unwrap().trust, "internal");
        let refused = v
            .verify(&alice.chain[0], &padded(MAX_INTERMEDIATES + 1), now())
            .unwrap_err();
        assert_eq!(
            (refused.trust, refused.outcome),
            (None, Outcome::InvalidCert)
        );
    }

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

    fn bound(
        mut source: crate::config::TrustSource,
        domains: &[&str],
    ) -> crate::config::TrustSource {
        source.spiffe_trust_domains = domains.iter().map(|d| d.to_string()).collect();
        source
    }

    fn with_uris(ca: &TestCa, cn: &str, uris: &[&str]) -> TestCert {
        let mut spec = LeafSpec::client(cn);
        spec.uris = uris.iter().map(|u| u.to_string()).collect();
        ca.issue(&spec).unwrap()
    }

    #[test]
    fn spiffe_trust_domains_belong_to_one_source() {
        let p = pki();
        let partner = TestCa::root("partner root").unwrap();
        let mut rogue = LeafSpec::client("rogue");
        rogue.uris = vec!["spiffe://example.org/ns/prod/sa/billing".into()];
        let rogue = TestCert::self_signed(&rogue).unwrap();
        let v = TrustVerifier::new(&[
            bound(
                ca_source("internal", &p.root, vec![]),
                &["example.org", "corp.example"],
            ),
            ca_source("partner", &partner, vec![]),
            pinned_source(
                "lab",
                vec![entry("rogue", cert_pin(&rogue), None)],
                true,
                OverdueAction::Warn,
            ),
        ])
        .unwrap();
        let mismatch = |t: &str| (Some(t.to_string()), Outcome::TrustDomainMismatch);
        let svid = "spiffe://example.org/ns/prod/sa/billing";
        // The bound source's own IDs, and certificates without any.
        ca_admits(&v, &with_uris(&p.inter, "a", &[svid]), "internal");
        ca_admits(
            &v,
            &with_uris(&p.inter, "b", &["spiffe://corp.example/x"]),
            "internal",
        );
        ca_admits(&v, &with_uris(&p.inter, "c", &[]), "internal");
        ca_admits(
            &v,
            &with_uris(&p.inter, "d", &["https://example.org/x"]),
            "internal",
        );
        // Another CA minting an ID of a bound domain: refused, counted for the admitting source.
        assert_eq!(
            rejected(&v, &with_uris(&partner, "e", &[svid])),
            mismatch("partner")
        );
        // ... also when the ID hides among other URI SANs or is spelled loosely.
        let hidden = with_uris(&partner, "f", &["https://partner.example/x", svid]);
        assert_eq!(rejected(&v, &hidden), mismatch("partner"));
        let loose = with_uris(&partner, "g", &["SPIFFE://Example.ORG:443/ns/prod"]);
        assert_eq!(rejected(&v, &loose), mismatch("partner"));
        // A pinned key holder claiming the bound domain.
        assert_eq!(rejected(&v, &rogue), mismatch("lab"));
        // Unbound domains stay open to every source; a source without bindings tolerates
        // malformed spiffe URIs (they are only san_uri values there).
        ca_admits(
            &v,
            &with_uris(&partner, "h", &["spiffe://partner.example/x"]),
            "partner",
        );
        ca_admits(
            &v,
            &with_uris(&partner, "i", &["spiffe://partner.example//x"]),
            "partner",
        );
        // The bound source refuses IDs outside its domains, and malformed spiffe URIs.
        let outside = with_uris(&p.inter, "j", &["spiffe://partner.example/x"]);
        assert_eq!(rejected(&v, &outside), mismatch("internal"));
        let malformed = with_uris(&p.inter, "k", &["spiffe://example.org/ns/"]);
        assert_eq!(
            rejected(&v, &malformed),
            (Some("internal".to_string()), Outcome::InvalidCert)
        );
        // `explain` sees the same verdicts per source.
        let each = v.verify_each(&outside.chain[0], &outside.chain[1..], now());
        assert_eq!(
            each[0].1.as_ref().unwrap_err().outcome,
            Outcome::TrustDomainMismatch
        );

        // The same CA behind a bound source and an unbound one: an ID outside the bindings is
        // the unbound source's to admit, an ID inside them the bound source's.
        let v = TrustVerifier::new(&[
            bound(ca_source("prod", &p.root, vec![]), &["example.org"]),
            ca_source("any", &p.root, vec![]),
        ])
        .unwrap();
        ca_admits(&v, &with_uris(&p.inter, "l", &[svid]), "prod");
        ca_admits(
            &v,
            &with_uris(&p.inter, "m", &["spiffe://other.example/x"]),
            "any",
        );
    }
}
