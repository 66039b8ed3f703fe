//! Server-side TLS: the client-certificate verifiers (CA chains with CRLs in `chain.rs`, pinned
//! certificates in `pinned.rs`, attribution across sources in `trust.rs`), the rustls
//! `ServerConfig` of each snapshot (`server_config.rs`), the handshake itself under its
//! deadline (`accept.rs`) and the outcome labels (`outcome.rs`).

pub mod accept;
pub mod chain;
pub mod memo;
pub mod outcome;
pub mod pinned;
pub mod server_config;
pub mod trust;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use outcome::Outcome;
pub use server_config::ServerTls;
pub use trust::TrustVerifier;

/// Why no trust source admitted a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The CA source that built a chain and then failed it; `None` is the `none` label.
    pub trust: Option<Arc<str>>,
    /// The handshake outcome label.
    pub outcome: Outcome,
    /// Human explanation for logs and `explain` (never sent to the client).
    pub detail: String,
    /// For `deny_listed`: the matching entry's `reason` (the audit field `deny_reason`).
    pub deny_reason: Option<Arc<str>>,
}

/// Errors building TLS state from a config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust source {name}: {reason}")]
    Trust { name: String, reason: String },
    #[error("server certificate/key: {0}")]
    ServerCert(String),
    /// The TLS client of an `https://` upstream could not be built.
    #[error("upstream {name}: {reason}")]
    Upstream { name: String, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every verifier and server config of certguard uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
