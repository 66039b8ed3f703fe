//! Revocation that keeps itself fresh (SPEC 9.2 and 9.3): CRLs fetched over HTTP (configured
//! URLs and allowed distribution points) and client OCSP. Everything here runs off the request
//! path; a handshake waits only for a first fetch it cannot do without, within its deadline.

pub mod ocsp;
