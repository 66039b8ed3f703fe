//! CA trust sources: `WebPkiClientVerifier` with CRLs, revocation settings and `max_lifetime`.
