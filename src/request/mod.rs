//! The request as it arrived, judged before anything else looks at it: the method and target
//! normalized into one canonical form (`normalize`), the Host / `:authority` rules (`host`),
//! and HTTP/1 framing against request smuggling (`framing`). Pure functions of the request's
//! bytes and headers; nothing here knows about identities, policy or upstreams.

pub mod framing;
pub mod host;
pub mod normalize;
