//! Reading the certificate material a config names: PEM certificate chains and bundles, private
//! keys, CRLs (PEM or DER) and pinned certificate files. Each function returns a message fit for
//! a [`super::ConfigError`]; none of them ever puts key material into a message.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::CrlFile;

/// Every CERTIFICATE block of a PEM file, each checked to parse as X.509.
pub fn parse_cert_pem(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(bytes).enumerate() {
        let der =
            item.map_err(|e| format!("{}: invalid PEM: {}", path.display(), pem_error(&e)))?;
        if X509Certificate::from_der(&der).is_err() {
            return Err(format!(
                "{}: certificate #{} cannot be parsed as X.509",
                path.display(),
                i + 1
            ));
        }
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block found",
            path.display()
        ));
    }
    Ok(certs)
}

/// A PEM error without any file contents (an illegal section line could be part of a key).
fn pem_error(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section is missing its END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64",
        pem::Error::Io(_) => "read error",
        pem::Error::NoItemsFound => "no items found",
        _ => "malformed PEM",
    }
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file, checked to be a key type rustls
/// can sign with and, when `chain` is given, to match the leaf certificate's public key
/// (`cert_key` names the key path the chain came from, for the mismatch message).
pub fn parse_key_pem(
    path: &Path,
    bytes: &[u8],
    chain: Option<&[CertificateDer<'static>]>,
    cert_key: &str,
) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no private key found (expected PEM PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        other => format!("{}: invalid PEM: {}", path.display(), pem_error(&other)),
    })?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|_| {
        format!(
            "{}: unsupported or malformed private key (RSA, ECDSA P-256/P-384 and Ed25519 are supported)",
            path.display()
        )
    })?;
    if let Some(chain) = chain.filter(|c| !c.is_empty()) {
        let certified = rustls::sign::CertifiedKey::new(chain.to_vec(), signer);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(format!(
                    "{}: private key does not match the certificate in {cert_key}",
                    path.display()
                ));
            }
            // Unknown: the key cannot tell its public half; the handshake will show a mismatch.
            Err(_) => {}
        }
    }
    Ok(key)
}

/// The CRLs of one file: every `X509 CRL` block of a PEM file (a bundle of the root's and the
/// intermediates' CRLs is common, and ignoring all but the first would silently drop
/// revocations), or one DER CRL.
pub fn parse_crls(path: &Path, bytes: &[u8]) -> Result<Vec<CrlFile>, String> {
    let is_pem = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"));
    let ders = if is_pem {
        let mut ders = Vec::new();
        for item in CertificateRevocationListDer::pem_slice_iter(bytes) {
            ders.push(
                item.map_err(|e| format!("{}: invalid PEM: {}", path.display(), pem_error(&e)))?,
            );
        }
        if ders.is_empty() {
            return Err(format!("{}: no PEM X509 CRL block found", path.display()));
        }
        ders
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    let many = ders.len() > 1;
    ders.into_iter()
        .enumerate()
        .map(|(i, der)| {
            // The verifier parses CRLs with webpki, which is stricter than x509-parser (version
            // 2 only, nextUpdate required): refuse here what it would refuse, at this key.
            webpki::OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| {
                let which = if many {
                    format!(" (CRL #{})", i + 1)
                } else {
                    String::new()
                };
                format!(
                    "{}{which}: CRL not usable for verification: {e:?} \
                     (a v2 CRL with nextUpdate is required)",
                    path.display()
                )
            })?;
            let (issuer, issuer_raw, this_update, next_update, number, scope) = {
                let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| {
                    let which = if many {
                        format!(" (CRL #{})", i + 1)
                    } else {
                        String::new()
                    };
                    format!("{}{which}: not a valid X.509 CRL: {e}", path.display())
                })?;
                (
                    crate::certs::name_to_rfc4514(crl.issuer()),
                    crl.issuer().as_raw().to_vec(),
                    crl.last_update().timestamp(),
                    crl.next_update().map(|t| t.timestamp()),
                    crl.crl_number().map(|n| n.to_bytes_be()),
                    crl_scope(&crl),
                )
            };
            Ok(CrlFile {
                path: path.to_path_buf(),
                der,
                issuer,
                issuer_raw,
                this_update,
                next_update,
                number,
                scope,
            })
        })
        .collect()
}

/// [`CrlFile::scope`]: the raw issuing distribution point of `crl`, if any. (Not the
/// authority key identifier: webpki ignores it when it picks the CRL for a certificate, so two
/// CRLs that differ only there still hide one another.)
fn crl_scope(crl: &CertificateRevocationList<'_>) -> Vec<u8> {
    use x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT;
    crl.extensions()
        .iter()
        .find(|e| e.oid == OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
        .map(|e| e.value.to_vec())
        .unwrap_or_default()
}

/// Check that every certificate of an `intermediates` bundle is a CA certificate (basic
/// constraints `cA`): a leaf there would complete nothing, and is most likely a mistake.
pub fn check_intermediates(path: &Path, certs: &[CertificateDer<'static>]) -> Result<(), String> {
    for (i, cert) in certs.iter().enumerate() {
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            format!(
                "{}: certificate #{} cannot be parsed: {e}",
                path.display(),
                i + 1
            )
        })?;
        if !x509.is_ca() {
            return Err(format!(
                "{}: certificate #{} ({}) is not a CA certificate",
                path.display(),
                i + 1,
                crate::certs::name_to_rfc4514(x509.subject())
            ));
        }
    }
    Ok(())
}

/// Check that every certificate of a CA bundle is usable as a trust anchor (what the
/// verifier will require).
pub fn check_anchors(path: &Path, certs: &[CertificateDer<'static>]) -> Result<(), String> {
    for (i, cert) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| {
            format!(
                "{}: certificate #{} is not usable as a trust anchor: {e:?}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(())
}
