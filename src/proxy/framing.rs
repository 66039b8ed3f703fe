//! Request framing checks against smuggling (SPEC 4 step 2): ambiguous bodies get 400.
//!
//! hyper already refuses most malformed framing on its own; this is the explicit, tested
//! statement of the rule, applied before anything is forwarded, so that a message whose length
//! two parsers could read differently never reaches an upstream.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Why a request's framing is ambiguous. Every variant is a 400 and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.3: a smuggling signal).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// `Transfer-Encoding` other than exactly `chunked`: a final coding that is not
    /// `chunked` (SPEC 4), `chunked` applied more than once, an empty or non-ASCII value, or
    /// another coding before `chunked` (`gzip, chunked`). certguard removes the chunking and
    /// `Transfer-Encoding` is hop-by-hop, so a `gzip` coding could not be relayed faithfully:
    /// the upstream would receive gzip bytes as a plain body.
    #[error("Transfer-Encoding other than chunked")]
    NotChunked,
    /// Several `Content-Length` values (header lines or a comma list) that differ, or a value
    /// that is not a plain decimal number.
    #[error("conflicting Content-Length values")]
    ConflictingLength,
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Check the request head's framing headers (HTTP/1.x only; HTTP/2 framing is by frames).
///
/// Transfer codings are read across every `Transfer-Encoding` line as one comma-separated
/// list, trimmed and case-insensitive; it must consist of `chunked` alone. Identical `Content-Length` values (`5, 5`, or two `5` lines) are accepted as
/// RFC 9110 8.6 allows; they are compared as numbers, and each must be ASCII digits only.
pub fn check(headers: &HeaderMap) -> Result<(), FramingError> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    if has_te && headers.contains_key(CONTENT_LENGTH) {
        return Err(FramingError::LengthAndChunked);
    }
    if has_te {
        check_transfer_encoding(headers)?;
    }
    check_content_length(headers)
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut codings = 0usize;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| FramingError::NotChunked)?;
        for coding in text.split(',').map(trim_ows).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(FramingError::NotChunked);
            }
            codings += 1;
        }
    }
    if codings == 1 {
        Ok(())
    } else {
        Err(FramingError::NotChunked)
    }
}

fn check_content_length(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| FramingError::ConflictingLength)?;
        for item in text.split(',').map(trim_ows) {
            // `u64::from_str` would also take a leading `+`; only digits are a length.
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::ConflictingLength);
            }
            let n: u64 = item.parse().map_err(|_| FramingError::ConflictingLength)?;
            match length {
                Some(prev) if prev != n => return Err(FramingError::ConflictingLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn table() {
        use FramingError::*;
        let cl = "content-length";
        let te = "transfer-encoding";
        type Case<'a> = (&'a [(&'a str, &'a [u8])], Result<(), FramingError>);
        let cases: &[Case] = &[
            (&[], Ok(())),
            (&[("host", b"a")], Ok(())),
            // Content-Length alone.
            (&[(cl, b"0")], Ok(())),
            (&[(cl, b"42")], Ok(())),
            (&[(cl, b"42"), (cl, b"42")], Ok(())),
            (&[(cl, b"42, 42")], Ok(())),
            (&[(cl, b"42,42"), (cl, b" 42 ")], Ok(())),
            (&[(cl, b"042"), (cl, b"42")], Ok(())),
            (&[(cl, b"42"), (cl, b"43")], Err(ConflictingLength)),
            (&[(cl, b"42, 43")], Err(ConflictingLength)),
            (&[(cl, b"42,")], Err(ConflictingLength)),
            (&[(cl, b"")], Err(ConflictingLength)),
            (&[(cl, b"abc")], Err(ConflictingLength)),
            (&[(cl, b"+42")], Err(ConflictingLength)),
            (&[(cl, b"-1")], Err(ConflictingLength)),
            (&[(cl, b"4 2")], Err(ConflictingLength)),
            (&[(cl, b"0x10")], Err(ConflictingLength)),
            (&[(cl, b"99999999999999999999999")], Err(ConflictingLength)),
            (&[(cl, b"4\xb2")], Err(ConflictingLength)),
            // Transfer-Encoding alone.
            (&[(te, b"chunked")], Ok(())),
            (&[(te, b"Chunked")], Ok(())),
            (&[(te, b" CHUNKED ")], Ok(())),
            (&[(te, b"chunked,")], Ok(())),
            (&[(te, b", chunked")], Ok(())),
            // Another coding before chunked could not be relayed faithfully.
            (&[(te, b"gzip, chunked")], Err(NotChunked)),
            (&[(te, b"gzip"), (te, b"chunked")], Err(NotChunked)),
            (&[(te, b"gzip,chunked,")], Err(NotChunked)),
            (&[(te, b"identity, chunked")], Err(NotChunked)),
            (&[(te, b"chunked, gzip")], Err(NotChunked)),
            (&[(te, b"chunked"), (te, b"gzip")], Err(NotChunked)),
            (&[(te, b"gzip")], Err(NotChunked)),
            (&[(te, b"identity")], Err(NotChunked)),
            (&[(te, b"")], Err(NotChunked)),
            (&[(te, b" , ")], Err(NotChunked)),
            (&[(te, b"chunked, chunked")], Err(NotChunked)),
            (&[(te, b"chunked"), (te, b"chunked")], Err(NotChunked)),
            (&[(te, b"xchunked")], Err(NotChunked)),
            (&[(te, b"chunked;q=1")], Err(NotChunked)),
            (&[(te, b"\"chunked\"")], Err(NotChunked)),
            (&[(te, b"chunk\xe9d")], Err(NotChunked)),
            // Both.
            (&[(cl, b"5"), (te, b"chunked")], Err(LengthAndChunked)),
            (&[(te, b"chunked"), (cl, b"0")], Err(LengthAndChunked)),
            (&[(te, b"gzip"), (cl, b"5")], Err(LengthAndChunked)),
            (&[(te, b""), (cl, b"abc")], Err(LengthAndChunked)),
        ];
        for (pairs, want) in cases {
            assert_eq!(&check(&headers(pairs)), want, "{pairs:?}");
        }
    }
}
