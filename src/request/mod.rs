//! The request as it arrived, judged before anything else looks at it: the method and target
//! normalized into one canonical form (`normalize`), the Host / `:authority` rules (`host`),
//! HTTP/1 framing against request smuggling (`framing`), and the `_method` field of a form
//! body (`form`). Pure functions of the request's
//! bytes and headers; nothing here knows about identities, policy or upstreams.

pub mod form;
pub mod framing;
pub mod host;
pub mod normalize;
