//! Compiled routes and allow rules. [`authorize`] is a pure function of (policy, identity,
//! normalized request) and is the only way to obtain a [`Permit`], which the forwarder requires.

use crate::identity::Identity;

/// All routes in config order.
#[derive(Debug, Default)]
pub struct Policy {
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    pub name: std::sync::Arc<str>,
    pub host: Option<HostPattern>,
    pub path: PathMatch,
    /// `None` = any method.
    pub methods: Option<Vec<http::Method>>,
    /// Name of an upstream that exists in the config.
    pub upstream: std::sync::Arc<str>,
    pub allow: Vec<AllowEntry>,
}

/// `host:` of a route, lower-case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.internal` stored as `internal`: exactly one extra label.
    Wildcard(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Segment-boundary prefix, stored without a trailing `/` (except the root `/`).
    Prefix(String),
}

/// One `allow` entry: all of its matchers must match.
#[derive(Debug)]
pub struct AllowEntry {
    pub matchers: Vec<Matcher>,
}

/// One key of an allow entry (SPEC 2.1), compiled.
#[derive(Debug)]
pub enum Matcher {
    Trust(String),
    Pinned(String),
    Subject(String),
    Issuer(String),
    Cn(Glob),
    O(Glob),
    Ou(Glob),
    SanDns(DnsPattern),
    SanUri(UriPattern),
    SpiffeId(UriPattern),
    SanEmail(String),
    SanIp(ipnet::IpNet),
    /// Lowercase hex, no colons.
    Fingerprint(String),
    Spki(String),
    /// Lowercase hex, no colons, no leading zero bytes.
    Serial(String),
    Authenticated,
}

/// `*` matches any run of characters anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

/// Exact DNS name, or `*.suffix` = exactly one label; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPattern {
    Exact(String),
    Wildcard(String),
}

/// Exact URI, or a prefix ending in `/*` = strictly below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPattern {
    Exact(String),
    /// Stored with the trailing `/` kept (`spiffe://x/ns/` for `spiffe://x/ns/*`).
    Below(String),
}

/// What policy needs from a request: already normalized.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a http::Method,
    /// Normalized host (lower-case, no port, no trailing dot); `None` if the request had none.
    pub host: Option<&'a str>,
    /// Normalized path (no query).
    pub path: &'a str,
}

/// Proof that [`authorize`] allowed a request; only this module can create one.
#[derive(Debug)]
pub struct Permit<'p> {
    route: &'p Route,
    entry: usize,
}

impl<'p> Permit<'p> {
    pub fn route(&self) -> &'p Route {
        self.route
    }
    /// Index of the allow entry that granted the request.
    pub fn entry_index(&self) -> usize {
        self.entry
    }
}

#[derive(Debug)]
pub enum Decision<'p> {
    Allowed(Permit<'p>),
    /// A route matched but no allow entry did.
    NotAllowed { route: &'p Route },
    NoRoute,
}

/// First route whose host, path and method fit decides; allowed if any allow entry matches.
pub fn authorize<'p>(policy: &'p Policy, id: &Identity, req: &RequestFacts<'_>) -> Decision<'p> {
    let _ = (policy, id, req);
    todo!("policy helper")
}
