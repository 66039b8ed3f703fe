//! The development PKI of SPEC section 7, generated with rcgen: used by `certguard dev-certs`,
//! `certguard demo` and the test suite.
//!
//! [`TestCa`], [`LeafSpec`] and [`TestCert`] are the small builder the tests use to issue
//! client certificates with custom validity, EKU and SANs, and to make CRLs.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// File name and PEM contents of every file in the development PKI.
pub struct DevPki {
    /// `(file name, PEM contents)` in the order they are written.
    pub files: Vec<(&'static str, String)>,
}

/// Errors generating or writing the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
}

/// Validity of the development PKI (SPEC 7: long-lived so a committed copy keeps working).
const DEV_VALIDITY_DAYS: i64 = 3650;

/// Generate the whole PKI in memory.
pub fn generate() -> Result<DevPki, DevPkiError> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::days(1);
    let not_after = now + Duration::days(DEV_VALIDITY_DAYS);

    let root = TestCa::root_with_validity("certguard dev root CA", not_before, not_after)?;
    let inter =
        root.intermediate_with_validity("certguard dev intermediate CA", not_before, not_after)?;

    let mut server = LeafSpec::server("localhost");
    server.dns = vec!["localhost".into()];
    server.ips = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    server.not_before = not_before;
    server.not_after = not_after;
    let server = inter.issue(&server)?;

    let client = |cn: &str, ou: Option<&str>| {
        let mut s = LeafSpec::client(cn);
        s.not_before = not_before;
        s.not_after = not_after;
        if let Some(ou) = ou {
            s.ou = Some(ou.to_string());
        }
        s.uris = vec![format!("spiffe://dev.local/ns/default/sa/{cn}")];
        s
    };
    let alice = inter.issue(&client("alice", Some("payments")))?;
    let bob = inter.issue(&client("bob", None))?;
    let mut revoked_spec = LeafSpec::client("revoked");
    revoked_spec.not_before = not_before;
    revoked_spec.not_after = not_after;
    let revoked = inter.issue(&revoked_spec)?;
    let mut expired_spec = LeafSpec::client("expired");
    expired_spec.not_before = now - Duration::days(30);
    expired_spec.not_after = now - Duration::days(1);
    let expired = inter.issue(&expired_spec)?;

    let mut ci = LeafSpec::client("ci-runner");
    ci.not_before = not_before;
    ci.not_after = not_after;
    let ci = TestCert::self_signed(&ci)?;
    let mut rogue = LeafSpec::client("rogue");
    rogue.not_before = not_before;
    rogue.not_after = not_after;
    let rogue = TestCert::self_signed(&rogue)?;

    let ca_crl = root.crl_pem(&[], not_before, not_after)?;
    let inter_crl = inter.crl_pem(&[&revoked.serial], not_before, not_after)?;

    // CA-issued leaves are written with the intermediate after them, so that clients such as
    // curl (`--cert alice.crt`) present the whole chain: the trust anchor is the root alone.
    let with_chain = |leaf: &TestCert| format!("{}{}", leaf.cert_pem, inter.cert_pem);
    let server_chain = with_chain(&server);
    let files = vec![
        ("ca.crt", root.cert_pem.clone()),
        ("ca.key", root.key_pem()),
        ("intermediate.crt", inter.cert_pem.clone()),
        ("intermediate.key", inter.key_pem()),
        ("server.crt", server_chain),
        ("server.key", server.key_pem.clone()),
        ("alice.crt", with_chain(&alice)),
        ("alice.key", alice.key_pem.clone()),
        ("bob.crt", with_chain(&bob)),
        ("bob.key", bob.key_pem.clone()),
        ("revoked.crt", with_chain(&revoked)),
        ("revoked.key", revoked.key_pem.clone()),
        ("expired.crt", with_chain(&expired)),
        ("expired.key", expired.key_pem.clone()),
        ("ci-runner.crt", ci.cert_pem.clone()),
        ("ci-runner.key", ci.key_pem.clone()),
        ("rogue.crt", rogue.cert_pem.clone()),
        ("rogue.key", rogue.key_pem.clone()),
        ("ca.crl", ca_crl),
        ("intermediate.crl", inter_crl),
    ];
    Ok(DevPki { files })
}

/// Generate and write into `dir` (created if missing); refuses to overwrite unless `force`.
///
/// Private keys are written with mode 0600 on Unix. Nothing is written when any target file
/// already exists and `force` is false.
pub fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, DevPkiError> {
    let pki = generate()?;
    fs::create_dir_all(dir).map_err(|source| DevPkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !force {
        for (name, _) in &pki.files {
            let path = dir.join(name);
            if path.exists() {
                return Err(DevPkiError::Exists(path));
            }
        }
    }
    let mut written = Vec::with_capacity(pki.files.len());
    for (name, contents) in &pki.files {
        let path = dir.join(name);
        let secret = name.ends_with(".key");
        write_file(&path, contents.as_bytes(), secret).map_err(|source| DevPkiError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        use std::os::unix::fs::PermissionsExt as _;
        if secret {
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        // `mode` only applies on creation; an overwritten key file is tightened too.
        if secret {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(contents)
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        let mut f = opts.open(path)?;
        f.write_all(contents)
    }
}

/// A fresh random positive serial number (16 bytes, high bit clear, first byte non-zero).
fn random_serial() -> Result<Vec<u8>, rcgen::Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(bytes.to_vec())
}

/// A certificate authority that can issue leaves, sub-CAs and CRLs (for dev-certs and tests).
pub struct TestCa {
    /// This CA's certificate.
    pub cert: CertificateDer<'static>,
    /// This CA's certificate as PEM.
    pub cert_pem: String,
    /// Certificates a leaf issued by this CA sends after itself: this CA (if it is not a root)
    /// and its parents below the root.
    pub chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A self-signed root CA valid from yesterday for ten years.
    pub fn root(cn: &str) -> Result<TestCa, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        Self::root_with_validity(cn, now - Duration::days(1), now + Duration::days(3650))
    }

    /// A self-signed root CA with the given validity.
    pub fn root_with_validity(
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<TestCa, rcgen::Error> {
        let params = ca_params(cn, not_before, not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            chain: Vec::new(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA issued by this CA, valid from yesterday for ten years.
    pub fn intermediate(&self, cn: &str) -> Result<TestCa, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.intermediate_with_validity(cn, now - Duration::days(1), now + Duration::days(3650))
    }

    /// An intermediate CA issued by this CA with the given validity.
    pub fn intermediate_with_validity(
        &self,
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<TestCa, rcgen::Error> {
        let params = ca_params(cn, not_before, not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(TestCa {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            chain,
            issuer: Issuer::new(params, key),
        })
    }

    /// This CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issue a leaf certificate described by `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Result<TestCert, rcgen::Error> {
        let (params, serial) = spec.params()?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(TestCert::new(cert.der().clone(), chain, key, serial))
    }

    /// A DER CRL by this CA listing `revoked` serials, valid from `this_update` to
    /// `next_update` (use a past `next_update` for an expired CRL).
    pub fn crl(
        &self,
        revoked: &[&[u8]],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<CertificateRevocationListDer<'static>, rcgen::Error> {
        Ok(self
            .crl_params(revoked, this_update, next_update)?
            .signed_by(&self.issuer)?
            .der()
            .clone())
    }

    /// Like [`TestCa::crl`], PEM encoded.
    pub fn crl_pem(
        &self,
        revoked: &[&[u8]],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, rcgen::Error> {
        self.crl_params(revoked, this_update, next_update)?
            .signed_by(&self.issuer)?
            .pem()
    }

    /// A CRL number that grows with time (nanoseconds since the epoch), so that each CRL
    /// issued later is newer, as a real CA's CRLs are.
    fn crl_params(
        &self,
        revoked: &[&[u8]],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<CertificateRevocationListParams, rcgen::Error> {
        Ok(CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number(OffsetDateTime::now_utc())),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        })
    }
}

fn ca_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certguard dev");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// What to put in a leaf certificate. Start from [`LeafSpec::client`] or
/// [`LeafSpec::server`] and change fields.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject CN.
    pub cn: String,
    /// Subject OU, if any.
    pub ou: Option<String>,
    /// Subject O, if any.
    pub o: Option<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// URI SANs (e.g. SPIFFE IDs).
    pub uris: Vec<String>,
    /// IP SANs.
    pub ips: Vec<std::net::IpAddr>,
    /// Email SANs.
    pub emails: Vec<String>,
    /// Extended key usages; empty means no EKU extension.
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// CRL distribution point URIs (none by default).
    pub crl_distribution_points: Vec<String>,
}

impl LeafSpec {
    /// A client certificate: EKU clientAuth, valid from yesterday for a year.
    pub fn client(cn: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn: cn.to_string(),
            ou: None,
            o: None,
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(365),
            crl_distribution_points: Vec::new(),
        }
    }

    /// A server certificate: EKU serverAuth, DNS SAN = `cn`.
    pub fn server(cn: &str) -> LeafSpec {
        let mut spec = LeafSpec::client(cn);
        spec.dns = vec![cn.to_string()];
        spec.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        spec
    }

    fn params(&self) -> Result<(CertificateParams, Vec<u8>), rcgen::Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.o {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.ou {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(DnType::CommonName, self.cn.as_str());
        params.distinguished_name = dn;
        for d in &self.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        for u in &self.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.as_str().try_into()?));
        }
        for e in &self.emails {
            params
                .subject_alt_names
                .push(SanType::Rfc822Name(e.as_str().try_into()?));
        }
        for ip in &self.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = self.eku.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        if !self.crl_distribution_points.is_empty() {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: self.crl_distribution_points.clone(),
            }];
        }
        Ok((params, serial))
    }
}

/// An issued leaf certificate with its key.
pub struct TestCert {
    /// The leaf.
    pub cert: CertificateDer<'static>,
    /// The leaf, then the issuing intermediates (not the root): what a client presents.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf as PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: PrivatePkcs8KeyDer<'static>,
    /// The serial number (big-endian bytes), for CRLs.
    pub serial: Vec<u8>,
}

impl TestCert {
    fn new(
        cert: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
        serial: Vec<u8>,
    ) -> TestCert {
        TestCert {
            cert_pem: crate::certs::pem_certificate(&cert),
            cert,
            chain,
            key_pem: key.serialize_pem(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
        }
    }

    /// A self-signed leaf (not a CA) described by `spec`, e.g. for pinning.
    pub fn self_signed(spec: &LeafSpec) -> Result<TestCert, rcgen::Error> {
        let (params, serial) = spec.params()?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        Ok(TestCert::new(der.clone(), vec![der], key, serial))
    }
}

/// The CRL number for a CRL issued at `at`: its Unix time in nanoseconds, as a positive DER
/// integer's bytes.
fn crl_number(at: OffsetDateTime) -> Vec<u8> {
    let n = u128::try_from(at.unix_timestamp_nanos()).unwrap_or(0);
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().map_or(true, |b| *b >= 0x80) {
        bytes.insert(0, 0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CertInfo;

    fn file<'a>(pki: &'a DevPki, name: &str) -> &'a str {
        &pki.files.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn dev_pki_matches_spec() {
        let pki = generate().unwrap();
        let names: Vec<_> = pki.files.iter().map(|(n, _)| *n).collect();
        for n in [
            "ca.crt",
            "ca.key",
            "intermediate.crt",
            "intermediate.key",
            "server.crt",
            "server.key",
            "alice.crt",
            "alice.key",
            "bob.crt",
            "bob.key",
            "revoked.crt",
            "revoked.key",
            "expired.crt",
            "expired.key",
            "ci-runner.crt",
            "ci-runner.key",
            "rogue.crt",
            "rogue.key",
            "ca.crl",
            "intermediate.crl",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        for (n, pem) in &pki.files {
            if n.ends_with(".key") {
                assert!(
                    pem.starts_with("-----BEGIN PRIVATE KEY-----"),
                    "{n} not PKCS#8"
                );
            }
        }
        assert_eq!(certs(file(&pki, "server.crt")).len(), 2);
        let server = CertInfo::from_chain(&certs(file(&pki, "server.crt"))).unwrap();
        assert_eq!(server.san_dns, vec!["localhost"]);
        assert_eq!(server.san_ip.len(), 2);

        let alice = CertInfo::from_chain(&certs(file(&pki, "alice.crt"))).unwrap();
        assert_eq!(alice.subject, "CN=alice,OU=payments");
        assert_eq!(
            alice.spiffe_id.as_deref(),
            Some("spiffe://dev.local/ns/default/sa/alice")
        );
        let bob = CertInfo::from_chain(&certs(file(&pki, "bob.crt"))).unwrap();
        assert_eq!(bob.subject, "CN=bob");
        assert_eq!(
            bob.spiffe_id.as_deref(),
            Some("spiffe://dev.local/ns/default/sa/bob")
        );
        let ci = CertInfo::from_chain(&certs(file(&pki, "ci-runner.crt"))).unwrap();
        assert_eq!(ci.subject, ci.issuer);
        let expired = CertInfo::from_chain(&certs(file(&pki, "expired.crt"))).unwrap();
        assert!(expired.not_after < OffsetDateTime::now_utc().unix_timestamp());
        assert!(alice.not_after - alice.not_before >= 3650 * 86400);
    }

    #[test]
    fn dev_pki_verifies_as_spec_says() {
        use std::sync::Arc;

        use rustls_pki_types::UnixTime;

        use crate::config::{self, CaTrust, Revocation, RevocationDepth, TrustKind};
        use crate::tls::{Outcome, TrustVerifier};

        let pki = generate().unwrap();
        let crl = |name: &str| {
            crate::config::pki::parse_crls(&PathBuf::from(name), file(&pki, name).as_bytes())
                .unwrap()
                .remove(0)
        };
        let pinned_ci = sha_of(&certs(file(&pki, "ci-runner.crt"))[0]);
        let sources = vec![
            config::TrustSource {
                name: Arc::from("internal"),
                kind: TrustKind::Ca(CaTrust {
                    ca_path: PathBuf::from("ca.crt"),
                    anchors: certs(file(&pki, "ca.crt")),
                    intermediates: vec![],
                    crls: vec![crl("intermediate.crl"), crl("ca.crl")],
                    crl_urls: vec![],
                    crl_cache_dir: None,
                    crl_dp_allow: vec![],
                    ocsp: None,
                    revocation: Revocation {
                        depth: RevocationDepth::Chain,
                        allow_unknown_status: false,
                        allow_expired_crl: false,
                    },
                    max_lifetime: None,
                }),
                spiffe_trust_domains: Vec::new(),
            },
            config::TrustSource {
                name: Arc::from("lab"),
                kind: TrustKind::Pinned(config::PinnedTrust {
                    entries: vec![config::PinnedEntry {
                        name: Arc::from("ci-runner"),
                        pin: config::Pin::Sha256(pinned_ci),
                        owner: None,
                        purpose: None,
                        review_by: None,
                    }],
                    check_validity: true,
                    on_overdue_review: config::OverdueAction::Warn,
                }),
                spiffe_trust_domains: Vec::new(),
            },
        ];
        let v = TrustVerifier::new(&sources).unwrap();
        let inter = certs(file(&pki, "intermediate.crt"));
        let check = |name: &str| {
            let leaf = certs(file(&pki, name)).remove(0);
            v.verify(&leaf, &inter, UnixTime::now())
        };
        assert_eq!(&*check("alice.crt").unwrap().trust, "internal");
        assert_eq!(&*check("bob.crt").unwrap().trust, "internal");
        assert_eq!(
            check("ci-runner.crt").unwrap().pinned.as_deref(),
            Some("ci-runner")
        );
        assert_eq!(check("revoked.crt").unwrap_err().outcome, Outcome::Revoked);
        assert_eq!(check("expired.crt").unwrap_err().outcome, Outcome::Expired);
        assert_eq!(
            check("rogue.crt").unwrap_err().outcome,
            Outcome::PinMismatch
        );
    }

    fn sha_of(c: &CertificateDer<'_>) -> [u8; 32] {
        crate::certs::sha256(c.as_ref())
    }

    #[test]
    fn write_refuses_existing_files_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs-dev");
        let written = write(&out, false).unwrap();
        assert_eq!(written.len(), 20);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(out.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = fs::read_to_string(out.join("ca.crt")).unwrap();
        assert!(matches!(write(&out, false), Err(DevPkiError::Exists(_))));
        assert_eq!(fs::read_to_string(out.join("ca.crt")).unwrap(), before);
        write(&out, true).unwrap();
        assert_ne!(fs::read_to_string(out.join("ca.crt")).unwrap(), before);
    }
}
