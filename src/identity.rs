//! The verified client identity, extracted once per connection from the leaf certificate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

use crate::certs::{attr_text, hex_lower, name_to_rfc4514, serial_hex, sha256};

/// Fields of a client certificate that policy, XFCC, logs and the inventory use.
///
/// Built once per connection (or once per `explain` run) by [`CertInfo::from_chain`]; never
/// re-parsed per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN, RFC 4514 as `openssl -nameopt RFC2253` prints it (last RDN first).
    pub subject: String,
    /// Issuer DN, same form as `subject`.
    pub issuer: String,
    /// Subject commonName values, in certificate order.
    pub cn: Vec<String>,
    /// Subject organizationName values.
    pub o: Vec<String>,
    /// Subject organizationalUnitName values.
    pub ou: Vec<String>,
    /// DNS SANs, lower-cased.
    pub san_dns: Vec<String>,
    /// URI SANs, as written in the certificate.
    pub san_uri: Vec<String>,
    /// Email (rfc822Name) SANs.
    pub san_email: Vec<String>,
    /// IP address SANs.
    pub san_ip: Vec<IpAddr>,
    /// The SPIFFE ID (SPEC 9.5): set only when the leaf has exactly one URI SAN and it is a
    /// valid SPIFFE ID (X509-SVID shape); otherwise `None`, and the URI SANs are still in
    /// `san_uri`.
    pub spiffe_id: Option<String>,
    /// SHA-256 of the leaf DER, lowercase hex without colons.
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, standard base64 with padding.
    pub spki: String,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// notAfter of every certificate of the chain as presented (the leaf included), sorted
    /// ascending: each is a moment at which the connection's verdict may change, so an
    /// intermediate expiring cuts open connections just as the leaf expiring does.
    pub chain_not_after: Vec<i64>,
    /// The chain as presented: leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The parsed certificates of the connections open now, one per distinct chain: connections
/// that present the same chain (a client's pool, its reconnects) share one [`CertInfo`]
/// instead of each holding its own parse and its own copy of the chain (about 2 KB a
/// connection), and a returning chain is not parsed again.
///
/// Entries are weak: a `CertInfo` lives as long as a connection (or the inventory) holds it.
/// The key is SHA-256 over the presented chain (each certificate's length, then its DER), so
/// two chains share an entry only if they are byte for byte the same, and a `CertInfo` depends
/// on nothing but those bytes.
#[derive(Debug, Default)]
pub struct CertCache {
    inner: Mutex<CertCacheInner>,
}

#[derive(Debug, Default)]
struct CertCacheInner {
    entries: HashMap<[u8; 32], Weak<CertInfo>>,
    /// Entries at which the ones no connection holds any more are swept out next.
    sweep_at: usize,
}

/// The fewest entries a sweep waits for.
const CERT_CACHE_MIN_SWEEP: usize = 64;

impl CertCache {
    /// The parsed `chain`: shared with the open connections that presented the same chain, or
    /// parsed now.
    pub fn get_or_parse(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<Arc<CertInfo>, IdentityError> {
        let key = chain_key(chain);
        if let Some(hit) = self.lock().entries.get(&key).and_then(Weak::upgrade) {
            return Ok(hit);
        }
        // Parsed outside the lock: other handshakes do not wait for it.
        let parsed = Arc::new(CertInfo::from_chain(chain)?);
        let mut inner = self.lock();
        if inner.entries.len() >= inner.sweep_at {
            inner.entries.retain(|_, cert| cert.strong_count() > 0);
            // A dead entry keeps only its allocation's header (the fields are dropped with
            // the last strong reference); sweeping after a quarter more entries bounds them.
            inner.sweep_at =
                inner.entries.len() + (inner.entries.len() / 4).max(CERT_CACHE_MIN_SWEEP);
        }
        // Another handshake may have parsed the same chain meanwhile: share the first.
        if let Some(existing) = inner.entries.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        inner.entries.insert(key, Arc::downgrade(&parsed));
        Ok(parsed)
    }

    /// Entries, dead ones not yet swept included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no chain was cached (or every entry was swept).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, CertCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// SHA-256 over each certificate's length (8 bytes, big-endian) and DER: chains that differ
/// anywhere, or only in where one certificate ends and the next begins, get different keys.
fn chain_key(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for cert in chain {
        ctx.update(&u64::try_from(cert.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(cert.as_ref());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Which trust source (and pinned entry) admitted a client: decided by the verifier itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Name of the trust source that admitted the client.
    pub trust: Arc<str>,
    /// For pinned sources, the name of the entry that matched.
    pub pinned: Option<Arc<str>>,
}

/// A client that passed a trust source: what the certificate says plus who admitted it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Name of the trust source whose verifier admitted the connection.
    pub trust: Arc<str>,
    /// For pinned sources, the name of the pinned entry that matched.
    pub pinned: Option<Arc<str>>,
    /// The parsed leaf certificate.
    pub cert: Arc<CertInfo>,
}

/// The leaf could not be parsed into a [`CertInfo`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no certificate presented")]
    Empty,
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
}

impl CertInfo {
    /// Parse the leaf (first element of `chain`) into the fields policy and logs use.
    ///
    /// The chain is copied as presented; only the leaf is parsed.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<CertInfo, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::Empty)?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| IdentityError::Parse(e.to_string()))?;

        let subject = name_to_rfc4514(x509.subject());
        let issuer = name_to_rfc4514(x509.issuer());
        let cn = attr_strings(x509.subject(), OID_CN);
        let o = attr_strings(x509.subject(), OID_O);
        let ou = attr_strings(x509.subject(), OID_OU);

        let mut san_dns = Vec::new();
        let mut san_uri = Vec::new();
        let mut san_email = Vec::new();
        let mut san_ip = Vec::new();
        let san = x509
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => san_dns.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => san_uri.push((*u).to_string()),
                    GeneralName::RFC822Name(e) => san_email.push((*e).to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            san_ip.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let spiffe_id = svid_spiffe_id(&san_uri).map(str::to_owned);

        Ok(CertInfo {
            subject,
            issuer,
            cn,
            o,
            ou,
            san_dns,
            san_uri,
            san_email,
            san_ip,
            spiffe_id,
            fingerprint: hex_lower(&sha256(leaf.as_ref())),
            spki: BASE64.encode(sha256(x509.public_key().raw)),
            serial: serial_hex(x509.raw_serial()),
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
            chain_not_after: chain_not_after(x509.validity().not_after.timestamp(), &chain[1..]),
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
        })
    }
}

/// The leaf's notAfter and that of every intermediate that parses, sorted. An intermediate
/// that does not parse cannot have been part of a verified path, so it sets no deadline.
fn chain_not_after(leaf: i64, intermediates: &[CertificateDer<'_>]) -> Vec<i64> {
    let mut out = Vec::with_capacity(1 + intermediates.len());
    out.push(leaf);
    out.extend(intermediates.iter().filter_map(|c| {
        let (_, x509) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
        Some(x509.validity().not_after.timestamp())
    }));
    out.sort_unstable();
    out
}

impl Identity {
    /// Combine the verifier's admission with the parsed leaf.
    pub fn new(admission: Admission, cert: Arc<CertInfo>) -> Identity {
        Identity {
            trust: admission.trust,
            pinned: admission.pinned,
            cert,
        }
    }
}

/// The SPIFFE ID of a leaf with these URI SANs: its only URI SAN, when that is a valid SPIFFE
/// ID (an X509-SVID carries exactly one URI SAN).
pub fn svid_spiffe_id(san_uri: &[String]) -> Option<&str> {
    match san_uri {
        [only] if spiffe_trust_domain(only).is_ok() => Some(only.as_str()),
        _ => None,
    }
}

/// Why a URI is not a valid SPIFFE ID (SPEC 9.5, after the SPIFFE ID standard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("does not start with `spiffe://`")]
    NotSpiffe,
    #[error("longer than 2048 bytes")]
    TooLong,
    #[error("has a fragment")]
    Fragment,
    #[error("has a query")]
    Query,
    #[error("has no trust domain")]
    EmptyTrustDomain,
    #[error("has userinfo in the trust domain")]
    Userinfo,
    #[error("has a port in the trust domain")]
    Port,
    #[error("has a trust domain that is not lower-case letters, digits, `.`, `-` and `_`")]
    TrustDomainChars,
    #[error("has no path")]
    NoPath,
    #[error("has an empty path segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("has a `.` or `..` path segment")]
    DotSegment,
    #[error("has a path character other than letters, digits, `.`, `-` and `_`")]
    PathChars,
}

/// The longest SPIFFE ID the standard allows, in bytes.
const SPIFFE_ID_MAX: usize = 2048;

/// Whether `td` is a valid SPIFFE trust domain: lower-case letters, digits, `.`, `-`, `_`.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// The trust domain of a valid SPIFFE ID: `spiffe://` + a lower-case trust domain + a path of
/// one or more segments, with no port, userinfo, query, fragment, or empty, `.` or `..`
/// segment, and no percent-encoding.
pub fn spiffe_trust_domain(uri: &str) -> Result<&str, SpiffeIdError> {
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or(SpiffeIdError::NotSpiffe)?;
    if uri.len() > SPIFFE_ID_MAX {
        return Err(SpiffeIdError::TooLong);
    }
    if rest.contains('#') {
        return Err(SpiffeIdError::Fragment);
    }
    if rest.contains('?') {
        return Err(SpiffeIdError::Query);
    }
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if !valid_trust_domain(td) {
        return Err(SpiffeIdError::TrustDomainChars);
    }
    let Some(path) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::NoPath);
    };
    for segment in path.split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            s if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
            {
                return Err(SpiffeIdError::PathChars)
            }
            _ => {}
        }
    }
    Ok(td)
}

/// Whether a URI SAN uses the `spiffe` scheme, in any case (`SPIFFE://` too: URI schemes are
/// case-insensitive, so a relying party other than certguard may read it as one).
pub fn is_spiffe_uri(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("spiffe://"))
}

/// The trust domain a `spiffe` URI names, read leniently for URIs that are not valid SPIFFE
/// IDs (`SPIFFE://Example.ORG:8/x?y`): the authority without userinfo or port, lower-cased.
/// Trust-domain bindings use it so that a malformed ID cannot slip past them.
pub fn loose_trust_domain(uri: &str) -> Option<String> {
    if !is_spiffe_uri(uri) {
        return None;
    }
    let rest = uri.get(9..)?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

const OID_CN: &str = "2.5.4.3";
const OID_O: &str = "2.5.4.10";
const OID_OU: &str = "2.5.4.11";

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn attr_strings(name: &X509Name<'_>, oid: &str) -> Vec<String> {
    name.iter_attributes()
        .filter(|a| a.attr_type().to_id_string() == oid)
        .filter_map(|a| attr_text(a.attr_value()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;
    use crate::devpki::{LeafSpec, TestCa, TestCert};

    fn self_signed(dn: DistinguishedName, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x00, 0x0a, 0xbc]));
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn connections_presenting_the_same_chain_share_one_parse() {
        let root = TestCa::root("root").unwrap();
        let inter = root.intermediate("inter").unwrap();
        let alice = inter.issue(&LeafSpec::client("alice")).unwrap();
        let bob = inter.issue(&LeafSpec::client("bob")).unwrap();
        let cache = CertCache::default();

        let first = cache.get_or_parse(&alice.chain).unwrap();
        let again = cache.get_or_parse(&alice.chain.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.cn, vec!["alice"]);
        assert_eq!(first.chain, alice.chain);

        // The same leaf without its intermediate is another chain: parsed on its own.
        let leaf_only = cache.get_or_parse(&alice.chain[..1]).unwrap();
        assert!(!Arc::ptr_eq(&first, &leaf_only));
        assert_eq!(leaf_only.chain.len(), 1);
        assert_eq!(first.chain.len(), 2);

        let other = cache.get_or_parse(&bob.chain).unwrap();
        assert_eq!(other.cn, vec!["bob"]);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_chain_that_does_not_parse_is_an_error_and_not_cached() {
        let cache = CertCache::default();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            cache.get_or_parse(std::slice::from_ref(&garbage)),
            Err(IdentityError::Parse(_))
        ));
        assert!(matches!(cache.get_or_parse(&[]), Err(IdentityError::Empty)));
        assert!(cache.is_empty());
    }

    #[test]
    fn chains_no_connection_holds_are_swept_and_parsed_again() {
        let root = TestCa::root("root").unwrap();
        let cache = CertCache::default();
        let held = root.issue(&LeafSpec::client("held")).unwrap();
        let held_info = cache.get_or_parse(&held.chain).unwrap();
        let extra = 10;
        for i in 0..CERT_CACHE_MIN_SWEEP + extra {
            let leaf = root.issue(&LeafSpec::client(&format!("c{i}"))).unwrap();
            let info = cache.get_or_parse(&leaf.chain).unwrap();
            assert_eq!(info.cn, vec![format!("c{i}")]);
            // `info` is dropped here: no connection holds this chain any more.
        }
        // The sweep when the cache had CERT_CACHE_MIN_SWEEP entries (held, c0..c62) kept only
        // the held chain; c63 onwards are still there, dead, until the next sweep.
        assert_eq!(cache.len(), 1 + 1 + extra);
        assert!(Arc::ptr_eq(
            &held_info,
            &cache.get_or_parse(&held.chain).unwrap()
        ));

        // A chain whose last holder is gone is parsed again, to the same content.
        let gone = root.issue(&LeafSpec::client("gone")).unwrap();
        let before = cache.get_or_parse(&gone.chain).unwrap();
        let copy = (*before).clone();
        drop(before);
        assert_eq!(*cache.get_or_parse(&gone.chain).unwrap(), copy);
    }

    #[test]
    fn dn_is_rfc4514_last_rdn_first_with_escaping() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "acme");
        dn.push(DnType::OrganizationalUnitName, "payments");
        dn.push(DnType::CommonName, "Doe, John");
        let der = self_signed(dn, vec![]);
        let info = CertInfo::from_chain(&[der]).unwrap();
        assert_eq!(info.subject, r"CN=Doe\, John,OU=payments,O=acme,C=US");
        assert_eq!(info.issuer, info.subject);
        assert_eq!(info.cn, vec!["Doe, John"]);
        assert_eq!(info.o, vec!["acme"]);
        assert_eq!(info.ou, vec!["payments"]);
        assert_eq!(info.serial, "0abc"); // leading zero bytes dropped, not nibbles
    }

    #[test]
    fn other_attribute_names_and_unknown_oids() {
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
            "example",
        );
        dn.push(DnType::StateOrProvinceName, "CA");
        dn.push(DnType::LocalityName, "SF");
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("a@b.c".try_into().unwrap()),
        );
        dn.push(DnType::CustomDnType(vec![1, 2, 3, 4]), "zz");
        dn.push(DnType::CommonName, "x");
        let info = CertInfo::from_chain(&[self_signed(dn, vec![])]).unwrap();
        // 1.2.3.4 = UTF8String "zz" dumped as DER: 0c 02 7a 7a.
        assert_eq!(
            info.subject,
            "CN=x,1.2.3.4=#0C027A7A,emailAddress=a@b.c,L=SF,ST=CA,DC=example"
        );
    }

    #[test]
    fn sans_fingerprint_spki_validity() {
        let ca = TestCa::root("root").unwrap();
        let mut spec = LeafSpec::client("alice");
        spec.ou = Some("payments".into());
        spec.dns = vec!["Alice.Example.COM".into()];
        spec.uris = vec![
            "https://example.com/x".into(),
            "spiffe://dev.local/ns/default/sa/alice".into(),
        ];
        spec.emails = vec!["alice@example.com".into()];
        spec.ips = vec![
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv6Addr::LOCALHOST.into(),
        ];
        let cert = ca.issue(&spec).unwrap();
        let info = CertInfo::from_chain(&cert.chain).unwrap();
        assert_eq!(info.subject, "CN=alice,OU=payments");
        assert_eq!(info.issuer, "CN=root,O=certguard dev");
        assert_eq!(info.san_dns, vec!["alice.example.com"]);
        assert_eq!(info.san_uri.len(), 2);
        // Two URI SANs: not an X509-SVID, so no SPIFFE ID (both URIs stay in san_uri).
        assert_eq!(info.spiffe_id, None);
        assert_eq!(info.san_email, vec!["alice@example.com"]);
        assert_eq!(info.san_ip, spec.ips);
        assert_eq!(info.fingerprint, hex_lower(&sha256(cert.cert.as_ref())));
        assert_eq!(info.fingerprint.len(), 64);
        let (_, x) = x509_parser::parse_x509_certificate(cert.cert.as_ref()).unwrap();
        assert_eq!(info.spki, BASE64.encode(sha256(x.public_key().raw)));
        assert!(info.spki.ends_with('='));
        assert_eq!(info.serial, hex_lower(&cert.serial));
        assert_eq!(info.not_before, spec.not_before.unix_timestamp());
        assert_eq!(info.not_after, spec.not_after.unix_timestamp());
        assert_eq!(info.chain, cert.chain);
    }

    #[test]
    fn spiffe_id_syntax() {
        use SpiffeIdError::*;
        let rows: &[(&str, Result<&str, SpiffeIdError>)] = &[
            ("spiffe://example.org/ns/prod/sa/billing", Ok("example.org")),
            ("spiffe://example.org/a", Ok("example.org")),
            ("spiffe://my-td_1.example/A.b-c_D/e", Ok("my-td_1.example")),
            ("https://example.org/a", Err(NotSpiffe)),
            ("SPIFFE://example.org/a", Err(NotSpiffe)),
            ("spiffe:/example.org/a", Err(NotSpiffe)),
            ("spiffe://example.org/a#frag", Err(Fragment)),
            ("spiffe://example.org/a?x=1", Err(Query)),
            ("spiffe:///a", Err(EmptyTrustDomain)),
            ("spiffe://user@example.org/a", Err(Userinfo)),
            ("spiffe://example.org:443/a", Err(Port)),
            ("spiffe://Example.org/a", Err(TrustDomainChars)),
            ("spiffe://exa%6dple.org/a", Err(TrustDomainChars)),
            ("spiffe://example.org", Err(NoPath)),
            ("spiffe://example.org/", Err(EmptySegment)),
            ("spiffe://example.org/a/", Err(EmptySegment)),
            ("spiffe://example.org//a", Err(EmptySegment)),
            ("spiffe://example.org/a/./b", Err(DotSegment)),
            ("spiffe://example.org/..", Err(DotSegment)),
            ("spiffe://example.org/a%2Fb", Err(PathChars)),
            ("spiffe://example.org/a b", Err(PathChars)),
            ("spiffe://example.org/caf\u{e9}", Err(PathChars)),
        ];
        for (uri, want) in rows {
            assert_eq!(spiffe_trust_domain(uri), *want, "{uri}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(spiffe_trust_domain(&long), Err(TooLong));

        // The X509-SVID shape: exactly one URI SAN, and a valid one.
        let one = |u: &str| vec![u.to_owned()];
        assert_eq!(
            svid_spiffe_id(&one("spiffe://example.org/a")),
            Some("spiffe://example.org/a")
        );
        assert_eq!(svid_spiffe_id(&one("spiffe://example.org/a/")), None);
        assert_eq!(svid_spiffe_id(&[]), None);
        let two = vec![
            "spiffe://example.org/a".to_owned(),
            "https://x/y".to_owned(),
        ];
        assert_eq!(svid_spiffe_id(&two), None);

        // Lenient reading, for bindings: whatever a relying party might take as the domain.
        for (uri, want) in [
            ("spiffe://example.org/a", Some("example.org")),
            ("SPIFFE://Example.ORG./x", Some("example.org")),
            ("spiffe://u@example.org:8443/x?q", Some("example.org")),
            ("spiffe://example.org", Some("example.org")),
            ("https://example.org/a", None),
        ] {
            assert_eq!(loose_trust_domain(uri).as_deref(), want, "{uri}");
        }
        assert!(valid_trust_domain("example.org"));
        assert!(!valid_trust_domain(""));
        assert!(!valid_trust_domain("Example.org"));
        assert!(!valid_trust_domain("example.org:80"));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            CertInfo::from_chain(&[]),
            Err(IdentityError::Empty)
        ));
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        assert!(matches!(
            CertInfo::from_chain(&[garbage]),
            Err(IdentityError::Parse(_))
        ));
    }

    #[test]
    fn identity_new_takes_admission() {
        let c = TestCert::self_signed(&LeafSpec::client("ci")).unwrap();
        let info = Arc::new(CertInfo::from_chain(&c.chain).unwrap());
        let id = Identity::new(
            Admission {
                trust: "lab".into(),
                pinned: Some("ci".into()),
            },
            info.clone(),
        );
        assert_eq!(&*id.trust, "lab");
        assert_eq!(id.pinned.as_deref(), Some("ci"));
        assert_eq!(id.cert, info);
    }
}
