//! The per-request pipeline (`service.rs`): normalize, bind Host to SNI, re-check the
//! identity, authorize, forward; the bodies in flight (`stream.rs`), a form body's `_method`
//! field judged as it passes (`form.rs`); places in flight per identity (`identity_places.rs`);
//! upgraded WebSocket tunnels (`tunnel.rs`). The request-level
//! rules live in [`crate::request`], header rewriting in [`crate::headers`], the upstream
//! clients in [`crate::upstream`].

pub mod form;
pub mod identity_places;
pub mod refusal;
pub mod service;
pub mod stream;
pub mod tunnel;
