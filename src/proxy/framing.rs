//! Request framing checks against smuggling (SPEC 4 step 2): ambiguous bodies get 400.

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    NotChunked,
    #[error("conflicting Content-Length values")]
    ConflictingLength,
}

/// Check the request head's framing headers (HTTP/1.x only; HTTP/2 framing is by frames).
pub fn check(headers: &http::HeaderMap) -> Result<(), FramingError> {
    let _ = headers;
    todo!("proxy helper")
}
