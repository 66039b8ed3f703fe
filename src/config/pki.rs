//! Reading the certificate material a config names: PEM certificate chains and bundles, private
//! keys, CRLs (PEM or DER) and pinned certificate files. Each function returns a message fit for
//! a [`super::ConfigError`]; none of them ever puts key material into a message.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};
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
/// can sign with and, when `chain` is given, to match the leaf certificate's public key.
pub fn parse_key_pem(
    path: &Path,
    bytes: &[u8],
    chain: Option<&[CertificateDer<'static>]>,
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
                    "{}: private key does not match the certificate in listen.cert",
                    path.display()
                ));
            }
            // Unknown: the key cannot tell its public half; the handshake will show a mismatch.
            Err(_) => {}
        }
    }
    Ok(key)
}

/// A CRL file, PEM (detected by `-----BEGIN`) or DER.
pub fn parse_crl(path: &Path, bytes: &[u8]) -> Result<CrlFile, String> {
    let is_pem = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"));
    let der = if is_pem {
        CertificateRevocationListDer::from_pem_slice(bytes).map_err(|e| match e {
            pem::Error::NoItemsFound => {
                format!("{}: no PEM X509 CRL block found", path.display())
            }
            other => format!("{}: invalid PEM: {}", path.display(), pem_error(&other)),
        })?
    } else {
        CertificateRevocationListDer::from(bytes.to_vec())
    };
    let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| format!("{}: not a valid X.509 CRL: {e}", path.display()))?;
    let issuer = rfc4514(crl.issuer());
    let issuer_raw = crl.issuer().as_raw().to_vec();
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().map(|t| t.timestamp());
    Ok(CrlFile {
        path: path.to_path_buf(),
        der,
        issuer,
        issuer_raw,
        this_update,
        next_update,
    })
}

/// A DN as RFC 4514 the way `openssl -nameopt RFC2253` prints it: last RDN first, `,` without
/// spaces, multi-valued RDNs joined with `+`, non-string values as `#` + hex DER.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|atv| {
                    let oid = atv.attr_type();
                    let key = match oid.to_id_string().as_str() {
                        "2.5.4.3" => "CN".to_string(),
                        "2.5.4.6" => "C".to_string(),
                        "2.5.4.7" => "L".to_string(),
                        "2.5.4.8" => "ST".to_string(),
                        "2.5.4.9" => "street".to_string(),
                        "2.5.4.10" => "O".to_string(),
                        "2.5.4.11" => "OU".to_string(),
                        "2.5.4.5" => "serialNumber".to_string(),
                        "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                        "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                        "1.2.840.113549.1.9.1" => "emailAddress".to_string(),
                        other => other.to_string(),
                    };
                    let value = match atv.as_str() {
                        Ok(s) => escape_rfc4514(s),
                        Err(_) => {
                            let hex: String =
                                atv.as_slice().iter().map(|b| format!("{b:02x}")).collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{key}={value}")
                })
                .collect();
            parts.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rfc4514(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let n = s.chars().count();
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
