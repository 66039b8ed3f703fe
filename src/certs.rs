//! Certificate plumbing shared by every layer: hashes, hex, RFC 4514 names, RFC 3339 times
//! and PEM. A leaf module: it imports nothing from the crate.

use std::fmt::Write as _;

use aws_lc_rs::digest;
use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::x509::X509Name;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex without separators.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Uppercase hex without separators.
pub fn hex_upper(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// Serial number bytes as lowercase hex without leading zero bytes (`"0"` for zero).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        "0".to_string()
    } else {
        hex_lower(&raw[start..])
    }
}

/// The subject (RFC 4514) and notAfter (Unix seconds) of a certificate; `None` if it does not
/// parse (the config loader has refused those already).
pub fn subject_and_not_after(der: &[u8]) -> Option<(String, i64)> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        name_to_rfc4514(x509.subject()),
        x509.validity().not_after.timestamp(),
    ))
}

/// OpenSSL's short name for an attribute type (what `-nameopt RFC2253` prints).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.15" => "businessCategory",
        "2.5.4.16" => "postalAddress",
        "2.5.4.17" => "postalCode",
        "2.5.4.18" => "postOfficeBox",
        "2.5.4.19" => "physicalDeliveryOfficeName",
        "2.5.4.20" => "telephoneNumber",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.72" => "role",
        "2.5.4.97" => "organizationIdentifier",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return None,
    })
}

/// The value of a string-typed attribute as UTF-8, or `None` for non-string types.
pub fn attr_text(value: &Any<'_>) -> Option<String> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(value.data).ok().map(str::to_string),
        // T61String: OpenSSL treats the bytes as Latin-1.
        Tag::T61String => Some(value.data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            if value.data.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => {
            if value.data.len() % 4 != 0 {
                return None;
            }
            value
                .data
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// Format a Name the way `openssl x509 -nameopt RFC2253` does: RDNs in reverse order joined
/// by `,`, multi-valued RDNs joined by `+`, RFC 4514 escaping, bytes outside printable ASCII
/// as `\XX`, unknown attribute types as dotted OIDs with a `#`-hex DER value.
pub fn name_to_rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let value = atv.attr_value();
                    match (short_name(&oid), attr_text(value)) {
                        (Some(sn), Some(text)) => format!("{sn}={}", escape_value(&text)),
                        (sn, _) => {
                            let key = sn.map(str::to_string).unwrap_or(oid);
                            let der = value.to_der_vec().unwrap_or_default();
                            format!("{key}=#{}", hex_upper(&der))
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 escaping as OpenSSL's `ASN1_STRFLGS_RFC2253` applies it.
fn escape_value(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
    out
}

/// Earliest and latest instants RFC 3339 can write (years 0000 and 9999).
const MIN_RFC3339_UNIX: i64 = -62_167_219_200;
const MAX_RFC3339_UNIX: i64 = 253_402_300_799;

/// `unix_seconds` as RFC 3339 UTC (`...Z`), clamped to the years RFC 3339 can express.
pub fn rfc3339_unix(unix_seconds: i64) -> String {
    let t = unix_seconds.clamp(MIN_RFC3339_UNIX, MAX_RFC3339_UNIX);
    OffsetDateTime::from_unix_timestamp(t)
        .map(rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 UTC with whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// One certificate as PEM: base64 in 64-character lines, `\n` line ends.
pub fn pem_certificate(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    // base64 output is ASCII, so any byte offset is a char boundary.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_rules() {
        assert_eq!(escape_value("a+b;c<d>e\"f\\g"), r#"a\+b\;c\<d\>e\"f\\g"#);
        assert_eq!(escape_value("#x"), r"\#x");
        assert_eq!(escape_value("x#"), "x#");
        assert_eq!(escape_value(" x "), r"\ x\ ");
        assert_eq!(escape_value("café"), r"caf\C3\A9");
        assert_eq!(escape_value("a=b"), "a=b");
    }

    #[test]
    fn serial_forms() {
        assert_eq!(serial_hex(&[0, 0]), "0");
        assert_eq!(serial_hex(&[]), "0");
        assert_eq!(serial_hex(&[0, 0x01, 0xff]), "01ff");
        assert_eq!(serial_hex(&[0x7f]), "7f");
    }

    #[test]
    fn pem_lines_are_64_chars() {
        let der = vec![0xabu8; 100];
        let pem = pem_certificate(&der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        let body: Vec<usize> = lines[1..lines.len() - 1].iter().map(|l| l.len()).collect();
        assert_eq!(body, vec![64, 64, 8]);
        assert!(pem.ends_with("-----\n"));
        // Exactly 48 bytes: one full line, no empty line.
        assert_eq!(pem_certificate(&[0u8; 48]).lines().count(), 3);
    }
}
