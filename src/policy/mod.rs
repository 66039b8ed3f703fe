//! Compiled routes and allow rules. [`authorize`] is a pure function of (policy, identity,
//! normalized request) and is the only way to obtain a [`Permit`], which the forwarder requires.
//!
//! Patterns are parsed (and rejected) by the constructors in [`pattern`]; the config loader uses
//! them to compile the `routes:` section, so everything here is already valid.
#![warn(missing_docs)]

pub mod deny;
mod index;
pub mod pattern;
pub mod reach;

use std::fmt;

use crate::identity::Identity;

/// All routes in config order.
#[derive(Debug, Default)]
pub struct Policy {
    /// Routes; the first that fits a request decides. Build the policy with [`Policy::new`]
    /// (a policy whose routes changed after that falls back to scanning them).
    pub routes: Vec<Route>,
    /// Finds the first fitting route without scanning all of them.
    index: index::RouteIndex,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Unique name (also the `route` metric label).
    pub name: std::sync::Arc<str>,
    /// `host:`; `None` = any host, also none.
    pub host: Option<HostPattern>,
    /// `path:` / `path_prefix:`.
    pub path: PathMatch,
    /// `None` = any method.
    pub methods: Option<Vec<http::Method>>,
    /// Name of an upstream that exists in the config.
    pub upstream: std::sync::Arc<str>,
    /// Allowed if any entry matches; empty = nobody.
    pub allow: Vec<AllowEntry>,
    /// `shadow_allow`: candidate entries judged beside `allow` and counted, never enforced
    /// (SPEC 9.6); `None` when the route has none.
    pub shadow_allow: Option<ShadowAllow>,
    /// `enforce` (default true); false forwards what `allow` refuses, as `not_enforced`.
    pub enforce: bool,
}

/// `host:` of a route, lower-case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Exact, lower-case.
    Exact(String),
    /// `*.internal` stored as `internal`: exactly one extra label.
    Wildcard(String),
}

/// `path:` or `path_prefix:` of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Neither given: every path.
    Any,
    /// The normalized path must equal this.
    Exact(String),
    /// Segment-boundary prefix, stored without a trailing `/` (except the root `/`).
    Prefix(String),
}

/// A route's `shadow_allow` list, with each entry that repeats an `allow` entry linked to it:
/// candidate lists are usually the `allow` list with a few entries changed, and the verdict of
/// a repeated entry is already known from the `allow` pass whenever that pass reached it.
#[derive(Debug)]
pub struct ShadowAllow {
    entries: Vec<AllowEntry>,
    /// For each entry, the index of an identical `allow` entry (same keys and canonical values).
    same_as: Vec<Option<usize>>,
}

impl ShadowAllow {
    /// The shadow list `entries` of a route whose `allow` list is `allow`.
    pub fn new(entries: Vec<AllowEntry>, allow: &[AllowEntry]) -> ShadowAllow {
        let same_as = entries
            .iter()
            .map(|e| {
                let text = e.describe();
                allow.iter().position(|a| a.describe() == text)
            })
            .collect();
        ShadowAllow { entries, same_as }
    }

    /// The entries, in config order.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// Does any entry match `id`, given `allowed`, the index of the first `allow` entry that
    /// matched (`None`: the allow pass tried every entry and none matched)? A repeated entry
    /// whose twin the allow pass evaluated is not matched again.
    fn judge(&self, id: &Identity, allowed: Option<usize>) -> bool {
        self.entries
            .iter()
            .zip(&self.same_as)
            .any(|(entry, same)| match (same, allowed) {
                (Some(_), None) => false,
                (Some(j), Some(p)) if *j <= p => *j == p,
                _ => entry.matches(id),
            })
    }
}

/// One `allow` entry: all of its matchers must match.
#[derive(Debug)]
pub struct AllowEntry {
    /// The keys of the entry, in SPEC 2.1 order; never empty.
    pub matchers: Vec<Matcher>,
}

/// One key of an allow entry (SPEC 2.1), compiled.
#[derive(Debug)]
pub enum Matcher {
    /// `trust:` name of the admitting trust source.
    Trust(String),
    /// `pinned:` name of the matched pinned entry.
    Pinned(String),
    /// `subject:` full DN, exact.
    Subject(String),
    /// `issuer:` full DN, exact.
    Issuer(String),
    /// `cn:` any CN.
    Cn(Glob),
    /// `o:` any O.
    O(Glob),
    /// `ou:` any OU.
    Ou(Glob),
    /// `san_dns:` any DNS SAN.
    SanDns(DnsPattern),
    /// `san_uri:` any URI SAN.
    SanUri(UriPattern),
    /// `spiffe_id:` the spiffe:// URI SAN.
    SpiffeId(UriPattern),
    /// `san_email:` any email SAN.
    SanEmail(String),
    /// `san_ip:` any IP SAN inside this network.
    SanIp(ipnet::IpNet),
    /// Lowercase hex, no colons.
    Fingerprint(String),
    /// Standard base64 with padding of the SPKI SHA-256.
    Spki(String),
    /// Lowercase hex, no colons, no leading zero bytes.
    Serial(String),
    /// `authenticated: true`: any verified client.
    Authenticated,
}

/// `*` matches any run of characters anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

/// Exact DNS name, or `*.suffix` = exactly one label; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPattern {
    /// Exact name, lower-case.
    Exact(String),
    /// `*.suffix` stored as `suffix`: exactly one label.
    Wildcard(String),
}

/// Exact URI, or a prefix ending in `/*` = strictly below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPattern {
    /// Exact URI.
    Exact(String),
    /// Stored with the trailing `/` kept (`spiffe://x/ns/` for `spiffe://x/ns/*`).
    Below(String),
}

/// What policy needs from a request: already normalized.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// Request method.
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
    grant: Grant,
    shadow: Option<bool>,
}

/// Why a [`Permit`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// This allow entry (index into the route's `allow`) matched.
    Entry(usize),
    /// No allow entry matched, and the route has `enforce: false` (SPEC 9.6).
    NotEnforced,
}

impl<'p> Permit<'p> {
    /// The route that allowed the request.
    pub fn route(&self) -> &'p Route {
        self.route
    }
    /// Why the request was allowed.
    pub fn grant(&self) -> Grant {
        self.grant
    }
    /// Index of the allow entry that granted the request; `None` when it was not enforced.
    pub fn entry_index(&self) -> Option<usize> {
        match self.grant {
            Grant::Entry(i) => Some(i),
            Grant::NotEnforced => None,
        }
    }
    /// What the route's `shadow_allow` says (true = allowed); `None` without one.
    pub fn shadow(&self) -> Option<bool> {
        self.shadow
    }
}

/// Outcome of [`authorize`].
#[derive(Debug)]
pub enum Decision<'p> {
    /// A route matched and an allow entry granted it (or the route does not enforce).
    Allowed(Permit<'p>),
    /// A route matched but no allow entry did.
    NotAllowed {
        /// The route that matched.
        route: &'p Route,
        /// What the route's `shadow_allow` says; `None` without one.
        shadow: Option<bool>,
    },
    /// No route fits host, path and method (404).
    NoRoute,
}

/// First route whose host, path and method fit decides; allowed if any allow entry matches,
/// or if none does and the route has `enforce: false`. A route with `shadow_allow` also
/// judges the request by that list (one more pass over its entries); that verdict is
/// reported, never enforced.
pub fn authorize<'p>(policy: &'p Policy, id: &Identity, req: &RequestFacts<'_>) -> Decision<'p> {
    let Some(route) = policy.find_route(req) else {
        return Decision::NoRoute;
    };
    let allowed = route.allow.iter().position(|entry| entry.matches(id));
    let shadow = route.shadow_allow.as_ref().map(|s| s.judge(id, allowed));
    match allowed {
        Some(entry) => Decision::Allowed(Permit {
            route,
            grant: Grant::Entry(entry),
            shadow,
        }),
        None if !route.enforce => Decision::Allowed(Permit {
            route,
            grant: Grant::NotEnforced,
            shadow,
        }),
        None => Decision::NotAllowed { route, shadow },
    }
}

impl Policy {
    /// The policy of `routes`, in config order, indexed.
    pub fn new(routes: Vec<Route>) -> Policy {
        let index = index::RouteIndex::new(&routes);
        Policy { routes, index }
    }

    /// The first route whose host, path and method all fit the request.
    pub fn find_route(&self, req: &RequestFacts<'_>) -> Option<&Route> {
        self.index
            .find(&self.routes, req)
            .and_then(|i| self.routes.get(i))
    }

    /// The route with this name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name)
    }
}

impl Route {
    /// Do host, path and method all fit? A route with `host` never fits a request without one.
    pub fn fits(&self, req: &RequestFacts<'_>) -> bool {
        self.host.as_ref().map_or(true, |h| h.matches(req.host))
            && self.path.matches(req.path)
            && self
                .methods
                .as_ref()
                .map_or(true, |ms| ms.iter().any(|m| m == req.method))
    }

    /// One-line summary of what the route matches, e.g.
    /// `host=orders.internal path_prefix=/orders methods=GET,HEAD`.
    pub fn describe_match(&self) -> String {
        let host = match &self.host {
            Some(h) => format!("host={h}"),
            None => "any host".to_string(),
        };
        let path = match &self.path {
            PathMatch::Any => "any path".to_string(),
            PathMatch::Exact(p) => format!("path={p}"),
            PathMatch::Prefix(p) => format!("path_prefix={p}"),
        };
        let methods = match &self.methods {
            Some(ms) => {
                let names: Vec<&str> = ms.iter().map(|m| m.as_str()).collect();
                format!("methods={}", names.join(","))
            }
            None => "any method".to_string(),
        };
        format!("{host} {path} {methods}")
    }
}

impl AllowEntry {
    /// Do all matchers match? An entry always has at least one (the loader rejects empty ones).
    pub fn matches(&self, id: &Identity) -> bool {
        !self.matchers.is_empty() && self.matchers.iter().all(|m| m.matches(id))
    }

    /// `trust=internal, spiffe_id=spiffe://...`: the entry as the config file spells it.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.matchers.iter().map(|m| m.to_string()).collect();
        parts.join(", ")
    }

    /// The keys that did not match, each as `key: want PATTERN, have VALUE`; empty = matched.
    pub fn mismatches(&self, id: &Identity) -> Vec<String> {
        self.matchers
            .iter()
            .filter(|m| !m.matches(id))
            .map(|m| {
                let want = m.to_string();
                let want = want
                    .split_once('=')
                    .map(|(_, v)| v.to_string())
                    .unwrap_or(want);
                format!("{}: want {}, have {}", m.key(), want, m.actual(id))
            })
            .collect()
    }

    /// The entry's `trust:` value, if it has one.
    pub fn trust_key(&self) -> Option<&str> {
        self.matchers.iter().find_map(Matcher::required_trust)
    }

    /// The entry's `pinned:` value, if it has one.
    pub fn pinned_key(&self) -> Option<&str> {
        self.matchers.iter().find_map(|m| match m {
            Matcher::Pinned(p) => Some(p.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.describe_match())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use http::Method;

    use super::*;
    use crate::identity::CertInfo;

    fn cert() -> CertInfo {
        CertInfo {
            subject: "CN=alice,OU=payments,O=acme".into(),
            issuer: "CN=Dev Intermediate,O=acme".into(),
            cn: vec!["alice".into()],
            o: vec!["acme".into()],
            ou: vec!["payments".into(), "risk".into()],
            san_dns: vec!["api.billing.svc.cluster.local".into()],
            san_uri: vec![
                "https://acme.example/alice".into(),
                "spiffe://dev.local/ns/default/sa/alice".into(),
            ],
            san_email: vec!["alice@Acme.example".into()],
            san_ip: vec!["10.1.2.3".parse::<IpAddr>().unwrap()],
            spiffe_id: Some("spiffe://dev.local/ns/default/sa/alice".into()),
            fingerprint: "ab".repeat(32),
            spki: "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".into(),
            serial: "1a2b".into(),
            not_before: 0,
            not_after: 4_000_000_000,
            chain_not_after: vec![4_000_000_000],
            chain: vec![],
        }
    }

    fn ca_id() -> Identity {
        Identity {
            trust: Arc::from("internal"),
            pinned: None,
            cert: Arc::new(cert()),
        }
    }

    fn pinned_id() -> Identity {
        Identity {
            trust: Arc::from("lab"),
            pinned: Some(Arc::from("ci-runner")),
            cert: Arc::new(CertInfo {
                subject: "CN=ci-runner".into(),
                issuer: "CN=ci-runner".into(),
                cn: vec!["ci-runner".into()],
                o: vec![],
                ou: vec![],
                san_dns: vec![],
                san_uri: vec![],
                san_email: vec![],
                san_ip: vec![],
                spiffe_id: None,
                ..cert()
            }),
        }
    }

    fn entry(keys: &[(&str, &str)]) -> AllowEntry {
        AllowEntry {
            matchers: keys
                .iter()
                .map(|(k, v)| Matcher::parse(k, v).unwrap())
                .collect(),
        }
    }

    fn route(
        name: &str,
        host: Option<&str>,
        path: PathMatch,
        methods: Option<&[Method]>,
        allow: Vec<AllowEntry>,
    ) -> Route {
        Route {
            name: Arc::from(name),
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path,
            methods: methods.map(|m| m.to_vec()),
            upstream: Arc::from("orders"),
            allow,
            shadow_allow: None,
            enforce: true,
        }
    }

    /// Routes matching on host/path/method, every one allowing `authenticated: true`.
    fn routing_policy() -> Policy {
        let any = || vec![entry(&[("authenticated", "true")])];
        Policy::new(vec![
            route(
                "orders-host",
                Some("orders.internal"),
                PathMatch::prefix("/orders").unwrap(),
                Some(&[Method::GET, Method::HEAD]),
                any(),
            ),
            route(
                "wild",
                Some("*.internal"),
                PathMatch::prefix("/w").unwrap(),
                None,
                any(),
            ),
            route(
                "status",
                None,
                PathMatch::exact("/status").unwrap(),
                None,
                any(),
            ),
            route(
                "orders-write",
                None,
                PathMatch::prefix("/orders").unwrap(),
                Some(&[Method::POST]),
                any(),
            ),
            route(
                "first",
                None,
                PathMatch::prefix("/dup").unwrap(),
                None,
                any(),
            ),
            route(
                "second",
                None,
                PathMatch::prefix("/dup").unwrap(),
                None,
                any(),
            ),
            route(
                "nobody",
                None,
                PathMatch::exact("/nobody").unwrap(),
                None,
                vec![],
            ),
        ])
    }

    #[test]
    fn routing_table() {
        let p = routing_policy();
        let id = ca_id();
        // (method, host, path, expected route or None)
        let rows: &[(Method, Option<&str>, &str, Option<&str>)] = &[
            (
                Method::GET,
                Some("orders.internal"),
                "/orders",
                Some("orders-host"),
            ),
            (
                Method::HEAD,
                Some("orders.internal"),
                "/orders/42",
                Some("orders-host"),
            ),
            (
                Method::GET,
                Some("orders.internal"),
                "/orders/",
                Some("orders-host"),
            ),
            (Method::GET, Some("orders.internal"), "/ordersX", None),
            (Method::GET, None, "/orders", None),
            (Method::GET, Some("other.example"), "/orders", None),
            // method mismatch falls through to later routes
            (
                Method::POST,
                Some("orders.internal"),
                "/orders",
                Some("orders-write"),
            ),
            (Method::DELETE, Some("orders.internal"), "/orders", None),
            (Method::GET, Some("a.internal"), "/w", Some("wild")),
            (Method::GET, Some("a.b.internal"), "/w", None),
            (Method::GET, Some("internal"), "/w", None),
            (Method::GET, None, "/status", Some("status")),
            (Method::GET, Some("anything"), "/status", Some("status")),
            (Method::GET, None, "/status/x", None),
            (Method::GET, None, "/dup/x", Some("first")),
        ];
        for (m, host, path, want) in rows {
            let req = RequestFacts {
                method: m,
                host: *host,
                path,
            };
            let got = match authorize(&p, &id, &req) {
                Decision::Allowed(permit) => Some(permit.route().name.to_string()),
                Decision::NotAllowed { route, .. } => panic!("{} denied", route.name),
                Decision::NoRoute => None,
            };
            assert_eq!(got.as_deref(), *want, "{m} {host:?} {path}");
        }
        let req = RequestFacts {
            method: &Method::GET,
            host: None,
            path: "/nobody",
        };
        assert!(
            matches!(authorize(&p, &id, &req), Decision::NotAllowed { route, .. } if &*route.name == "nobody")
        );
    }

    #[test]
    fn matcher_table() {
        let ca = ca_id();
        let pin = pinned_id();
        let fp_colons = "AB:".repeat(31) + "AB";
        let fp_other = "cd".repeat(32);
        // (allow entry keys, identity, expect allowed)
        type Row<'a> = (Vec<(&'a str, &'a str)>, &'a Identity, bool);
        let rows: Vec<Row> = vec![
            (vec![("trust", "internal")], &ca, true),
            (vec![("trust", "lab")], &ca, false),
            (vec![("pinned", "ci-runner")], &pin, true),
            (vec![("pinned", "ci-runner")], &ca, false),
            (vec![("trust", "lab"), ("pinned", "ci-runner")], &pin, true),
            (vec![("subject", "CN=alice,OU=payments,O=acme")], &ca, true),
            (
                vec![("subject", "CN=alice, OU=payments, O=acme")],
                &ca,
                false,
            ),
            (vec![("issuer", "CN=Dev Intermediate,O=acme")], &ca, true),
            (vec![("issuer", "CN=Other,O=acme")], &ca, false),
            (vec![("cn", "alice")], &ca, true),
            (vec![("cn", "ali*")], &ca, true),
            (vec![("cn", "bob")], &ca, false),
            (vec![("o", "ac*e")], &ca, true),
            (vec![("ou", "risk")], &ca, true),
            (vec![("ou", "ops")], &ca, false),
            (vec![("cn", "alice"), ("ou", "ops")], &ca, false),
            (
                vec![("san_dns", "API.billing.svc.cluster.local")],
                &ca,
                true,
            ),
            (vec![("san_dns", "*.billing.svc.cluster.local")], &ca, true),
            (vec![("san_dns", "*.svc.cluster.local")], &ca, false),
            (vec![("san_uri", "https://acme.example/alice")], &ca, true),
            (vec![("san_uri", "https://acme.example/*")], &ca, true),
            (
                vec![("san_uri", "https://acme.example/alice/*")],
                &ca,
                false,
            ),
            (
                vec![("spiffe_id", "spiffe://dev.local/ns/default/sa/alice")],
                &ca,
                true,
            ),
            (
                vec![("spiffe_id", "spiffe://dev.local/ns/default/*")],
                &ca,
                true,
            ),
            (
                vec![("spiffe_id", "spiffe://dev.local/ns/prod/*")],
                &ca,
                false,
            ),
            (
                vec![("spiffe_id", "spiffe://dev.local/ns/default/sa/alice")],
                &pin,
                false,
            ),
            (vec![("san_email", "alice@acme.example")], &ca, true),
            (vec![("san_email", "Alice@acme.example")], &ca, false),
            (vec![("san_ip", "10.1.2.3")], &ca, true),
            (vec![("san_ip", "10.0.0.0/8")], &ca, true),
            (vec![("san_ip", "192.168.0.0/16")], &ca, false),
            (vec![("fingerprint", &fp_colons)], &ca, true),
            (vec![("fingerprint", &fp_other)], &ca, false),
            (
                vec![("spki", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc")],
                &ca,
                true,
            ),
            (
                vec![("spki", "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=")],
                &ca,
                false,
            ),
            (vec![("serial", "00:1A:2B")], &ca, true),
            (vec![("serial", "1a2c")], &ca, false),
            (vec![("authenticated", "true")], &ca, true),
            (vec![("authenticated", "true")], &pin, true),
        ];
        for (keys, id, want) in rows {
            let p = Policy::new(vec![route(
                "r",
                None,
                PathMatch::Any,
                None,
                vec![entry(&keys)],
            )]);
            let req = RequestFacts {
                method: &Method::GET,
                host: None,
                path: "/",
            };
            let allowed = matches!(authorize(&p, id, &req), Decision::Allowed(_));
            assert_eq!(allowed, want, "{keys:?} for {}", id.cert.subject);
            let e = entry(&keys);
            assert_eq!(e.mismatches(id).is_empty(), want, "{keys:?}");
        }
    }

    #[test]
    fn any_entry_grants_and_reports_its_index() {
        let p = Policy::new(vec![route(
            "r",
            None,
            PathMatch::Any,
            None,
            vec![entry(&[("cn", "bob")]), entry(&[("ou", "payments")])],
        )]);
        let req = RequestFacts {
            method: &Method::GET,
            host: None,
            path: "/x",
        };
        match authorize(&p, &ca_id(), &req) {
            Decision::Allowed(permit) => assert_eq!(permit.entry_index(), Some(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shadow_allow_is_judged_beside_allow_and_enforce_false_grants() {
        let alice = ca_id();
        let ci = pinned_id();
        let req = RequestFacts {
            method: &Method::GET,
            host: None,
            path: "/x",
        };
        // (allow, shadow_allow, enforce, identity) -> (decision, grant, shadow)
        type Row<'a> = (
            Vec<AllowEntry>,
            Option<Vec<AllowEntry>>,
            bool,
            &'a Identity,
            (&'a str, Option<Grant>, Option<bool>),
        );
        let alice_only = || vec![entry(&[("cn", "alice")])];
        let internal = || vec![entry(&[("trust", "internal")])];
        let rows: Vec<Row> = vec![
            // No shadow list: nothing to report.
            (
                alice_only(),
                None,
                true,
                &alice,
                ("allowed", Some(Grant::Entry(0)), None),
            ),
            (alice_only(), None, true, &ci, ("denied", None, None)),
            // Tightening: the candidate list refuses what allow grants, and the reverse.
            (
                internal(),
                Some(alice_only()),
                true,
                &alice,
                ("allowed", Some(Grant::Entry(0)), Some(true)),
            ),
            (
                vec![entry(&[("authenticated", "true")])],
                Some(internal()),
                true,
                &ci,
                ("allowed", Some(Grant::Entry(0)), Some(false)),
            ),
            // Loosening: the candidate grants what allow refuses; allow still decides.
            (
                alice_only(),
                Some(vec![entry(&[("trust", "lab")])]),
                true,
                &ci,
                ("denied", None, Some(true)),
            ),
            (
                alice_only(),
                Some(vec![]),
                true,
                &ci,
                ("denied", None, Some(false)),
            ),
            // enforce: false forwards what allow refuses, and says so.
            (
                alice_only(),
                None,
                false,
                &ci,
                ("allowed", Some(Grant::NotEnforced), None),
            ),
            (
                alice_only(),
                None,
                false,
                &alice,
                ("allowed", Some(Grant::Entry(0)), None),
            ),
            (
                vec![],
                Some(internal()),
                false,
                &alice,
                ("allowed", Some(Grant::NotEnforced), Some(true)),
            ),
        ];
        for (i, (allow, shadow_allow, enforce, id, want)) in rows.into_iter().enumerate() {
            let mut r = route("r", None, PathMatch::Any, None, allow);
            r.shadow_allow = shadow_allow.map(|list| ShadowAllow::new(list, &r.allow));
            r.enforce = enforce;
            let p = Policy::new(vec![r]);
            let got = match authorize(&p, id, &req) {
                Decision::Allowed(permit) => ("allowed", Some(permit.grant()), permit.shadow()),
                Decision::NotAllowed { shadow, .. } => ("denied", None, shadow),
                Decision::NoRoute => ("no_route", None, None),
            };
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn shadow_entries_repeating_allow_entries_agree_with_matching_them() {
        let pool: [&[(&str, &str)]; 5] = [
            &[("cn", "alice")],
            &[("trust", "internal")],
            &[("trust", "lab")],
            &[("pinned", "ci-runner")],
            &[("ou", "risk"), ("trust", "internal")],
        ];
        // Every list of up to two distinct pool entries, in every order.
        let mut lists: Vec<Vec<usize>> = vec![vec![]];
        for a in 0..pool.len() {
            lists.push(vec![a]);
            for b in (0..pool.len()).filter(|b| *b != a) {
                lists.push(vec![a, b]);
            }
        }
        let make = |l: &[usize]| -> Vec<AllowEntry> { l.iter().map(|i| entry(pool[*i])).collect() };
        let ids = [ca_id(), pinned_id()];
        for allow in &lists {
            for shadow in &lists {
                let r = route("r", None, PathMatch::Any, None, make(allow));
                let s = ShadowAllow::new(make(shadow), &r.allow);
                for id in &ids {
                    let allowed = r.allow.iter().position(|e| e.matches(id));
                    let naive = s.entries().iter().any(|e| e.matches(id));
                    assert_eq!(
                        s.judge(id, allowed),
                        naive,
                        "allow {allow:?} shadow {shadow:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn explain_helpers() {
        let e = entry(&[
            ("trust", "internal"),
            ("spiffe_id", "spiffe://dev.local/ns/prod/*"),
        ]);
        assert_eq!(
            e.describe(),
            "trust=internal, spiffe_id=spiffe://dev.local/ns/prod/*"
        );
        assert_eq!(
            e.mismatches(&ca_id()),
            vec![
                "spiffe_id: want spiffe://dev.local/ns/prod/*, have spiffe://dev.local/ns/default/sa/alice"
                    .to_string()
            ]
        );
        let r = route(
            "orders-read",
            Some("orders.internal"),
            PathMatch::prefix("/orders").unwrap(),
            Some(&[Method::GET, Method::HEAD]),
            vec![],
        );
        assert_eq!(
            r.describe_match(),
            "host=orders.internal path_prefix=/orders methods=GET,HEAD"
        );
        let any = route("s", None, PathMatch::Any, None, vec![]);
        assert_eq!(any.describe_match(), "any host any path any method");
        assert_eq!(e.trust_key(), Some("internal"));
        assert_eq!(entry(&[("cn", "x")]).trust_key(), None);
        assert_eq!(entry(&[("pinned", "ci")]).pinned_key(), Some("ci"));
    }
}
