//! certguard: an mTLS-terminating reverse proxy with identity-based policy enforcement.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. The data path is:
//! [`server`] accepts and handshakes (verifiers in [`tls`]), [`identity`] turns the verified leaf
//! into an [`identity::Identity`], and [`proxy`] normalizes each request, asks [`policy`] for a
//! permit and forwards permitted requests upstream. Everything that reloads lives in one
//! [`snapshot::Snapshot`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod config;
pub mod devpki;
pub mod identity;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod tls;
