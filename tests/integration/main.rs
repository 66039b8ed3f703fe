//! Integration tests: real TCP sockets, real TLS handshakes, certificates generated with rcgen
//! at test time, a real upstream, and curl as an external client. One binary, one module per
//! feature, so the whole stack is linked once.

mod attacks;
mod common;
mod data_path;
mod deploy;
mod faults;
mod first_request;
mod frameworks;
mod governance;
mod hardening;
mod lifecycle;
mod observability;
mod ocsp;
mod pinned;
mod revocation;
mod upstream_tls;
