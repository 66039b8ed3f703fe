//! Blast radius (SPEC 9.7): who can reach what under one configuration (the access matrix of
//! `check`), and what a change of configuration does to it (`certguard diff`, and the
//! `access changed` lines and counters of every reload).
//!
//! Access is compared, not text. A *selector* is an allow entry's keys and values in canonical
//! form; it reaches a route when the route serves some request at all (see
//! [`crate::policy::reach`]: a route that earlier routes shadow completely serves none). A diff
//! compares, per route name and selector, the requests (host, path and method classes) the
//! route serves with the selector in its `allow` list, under the old and the new
//! configuration. Reordering routes that do not overlap, reordering allow entries, or editing
//! anything that does not decide who reaches what is no change; moving a route above one it
//! shadows is. A route with `enforce: false` admits every verified client, so it counts as
//! granting the selector `authenticated: true`. Shadow rules grant nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::certs::{hex_lower, serial_hex, sha256};
use crate::config::{CaTrust, Config, Pin, PinnedTrust, RevocationDepth, TrustKind, TrustSource};
use crate::policy::deny::DenyList;
use crate::policy::reach::{self, Basis, Bits, Served};
use crate::policy::{AllowEntry, HostPattern, PathMatch, Policy, Route};

/// An allow entry's keys and values, canonical and in SPEC 2.1 key order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector(Vec<(&'static str, String)>);

impl Selector {
    /// The selector of an allow entry.
    pub fn of(entry: &AllowEntry) -> Selector {
        Selector(
            entry
                .matchers
                .iter()
                .map(|m| {
                    let text = m.to_string();
                    let value = text.split_once('=').map_or("", |(_, v)| v).to_owned();
                    (m.key(), value)
                })
                .collect(),
        )
    }

    /// `authenticated: true`: any verified client (what a route with `enforce: false` grants).
    pub fn anyone() -> Selector {
        Selector(vec![("authenticated", "true".to_owned())])
    }
}

impl fmt::Display for Selector {
    /// `trust=internal, cn=alice`, as `explain` and `check` write allow entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl Serialize for Selector {
    /// `{"trust": "internal", "cn": "alice"}`; `authenticated` is the boolean `true`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            if *k == "authenticated" {
                map.serialize_entry(k, &true)?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Every selector a route grants access to: its allow entries, and anyone when it does not
/// enforce.
fn selectors(route: &Route) -> BTreeSet<Selector> {
    let mut out: BTreeSet<Selector> = route.allow.iter().map(Selector::of).collect();
    if !route.enforce {
        out.insert(Selector::anyone());
    }
    out
}

/// A route as the matrix shows it, with `null` for what it leaves open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteRef {
    pub route: String,
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

impl RouteRef {
    pub fn of(route: &Route) -> RouteRef {
        let (path, path_prefix) = match &route.path {
            PathMatch::Any => (None, None),
            PathMatch::Exact(p) => (Some(p.clone()), None),
            PathMatch::Prefix(p) => (None, Some(p.clone())),
        };
        RouteRef {
            route: route.name.to_string(),
            host: route.host.as_ref().map(HostPattern::to_string),
            path,
            path_prefix,
            methods: route
                .methods
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.as_str().to_owned()).collect()),
        }
    }
}

/// One element of the access matrix: an allow entry and the routes it reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatrixRow {
    /// Key path of the entry, `routes[0].allow[1]`; `routes[2].enforce` for the access a
    /// route with `enforce: false` gives everyone.
    pub rule: String,
    pub selector: Selector,
    /// Empty when earlier routes shadow the entry's route completely.
    pub routes: Vec<RouteRef>,
}

/// The access matrix of a policy: one row per allow entry (and per route with
/// `enforce: false`), in config order. `reached` is [`reach::reached`] of the policy.
pub fn matrix(policy: &Policy, reached: &[bool]) -> Vec<MatrixRow> {
    let mut out = Vec::new();
    for (i, route) in policy.routes.iter().enumerate() {
        let routes = || {
            if reached.get(i).copied().unwrap_or(false) {
                vec![RouteRef::of(route)]
            } else {
                Vec::new()
            }
        };
        for (j, entry) in route.allow.iter().enumerate() {
            out.push(MatrixRow {
                rule: format!("routes[{i}].allow[{j}]"),
                selector: Selector::of(entry),
                routes: routes(),
            });
        }
        if !route.enforce {
            out.push(MatrixRow {
                rule: format!("routes[{i}].enforce"),
                selector: Selector::anyone(),
                routes: routes(),
            });
        }
    }
    out
}

/// Methods as a diff reports them: `None` = every method; otherwise the methods, with `*`
/// standing for every method that neither configuration names.
pub type Methods = Option<Vec<String>>;

fn methods_of(bits: &Bits, basis: &Basis) -> Methods {
    let all = (0..basis.method_count()).all(|i| bits.get(i));
    (!all).then(|| {
        bits.iter()
            .map(|i| match basis.method(i) {
                Some(m) => m.as_str().to_owned(),
                None => "*".to_owned(),
            })
            .collect()
    })
}

/// `GET, HEAD`, `any method`, or `any method except GET, HEAD` (the methods a
/// configuration names that are not in `bits`).
fn methods_text(bits: &Bits, basis: &Basis) -> String {
    let other = basis.method_count() - 1;
    let named = |included: bool| -> Vec<&str> {
        (0..other)
            .filter(|i| bits.get(*i) == included)
            .filter_map(|i| basis.method(i).map(http::Method::as_str))
            .collect()
    };
    if !bits.get(other) {
        return named(true).join(", ");
    }
    match named(false) {
        none if none.is_empty() => "any method".to_owned(),
        except => format!("any method except {}", except.join(", ")),
    }
}

/// A (selector, route) pair that gained or lost access, and through which methods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    pub selector: Selector,
    pub route: String,
    pub methods: Methods,
    /// `methods` for people: `GET, HEAD`, `any method except POST`.
    #[serde(skip)]
    pub methods_text: String,
}

/// Kinds of [`Change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    RouteAdded,
    RouteRemoved,
    TrustSourceAdded,
    TrustSourceRemoved,
    TrustSourceChanged,
    DenyAdded,
    DenyRemoved,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::RouteAdded => "route_added",
            ChangeKind::RouteRemoved => "route_removed",
            ChangeKind::TrustSourceAdded => "trust_source_added",
            ChangeKind::TrustSourceRemoved => "trust_source_removed",
            ChangeKind::TrustSourceChanged => "trust_source_changed",
            ChangeKind::DenyAdded => "deny_added",
            ChangeKind::DenyRemoved => "deny_removed",
        }
    }
}

/// A change that is not a (selector, route) pair: routes and trust sources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub change: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    pub detail: String,
}

/// What a configuration change does to access.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccessDiff {
    pub gained: Vec<Access>,
    pub lost: Vec<Access>,
    pub changes: Vec<Change>,
}

impl AccessDiff {
    /// Whether access is unchanged.
    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty() && self.changes.is_empty()
    }

    /// One line per change, for `certguard diff` and the reload log.
    pub fn lines(&self) -> Vec<String> {
        let pair = |sign: &str, a: &Access| {
            format!(
                "{sign} {} -> route {} ({})",
                a.selector, a.route, a.methods_text
            )
        };
        let mut out: Vec<String> = self.gained.iter().map(|a| pair("gained:", a)).collect();
        out.extend(self.lost.iter().map(|a| pair("lost:  ", a)));
        out.extend(self.changes.iter().map(|c| {
            let what = match (&c.route, &c.trust) {
                (Some(r), _) => format!(" route {r}"),
                (None, Some(t)) => format!(" trust source {t}"),
                (None, None) => String::new(),
            };
            format!("{}{what}: {}", c.change.as_str(), c.detail)
        }));
        out
    }

    /// The text report of `certguard diff`.
    pub fn text(&self) -> String {
        if self.is_empty() {
            return "access unchanged\n".to_owned();
        }
        let mut s = format!(
            "access changed: {} gained, {} lost, {} other change(s)\n",
            self.gained.len(),
            self.lost.len(),
            self.changes.len()
        );
        for line in self.lines() {
            s.push_str("  ");
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

/// What changing `old` into `new` does to access: selectors that gain or lose a route, routes
/// added or removed, trust sources added, removed or changed (anchors, CRLs, pins, settings).
pub fn diff(old: &Config, new: &Config) -> AccessDiff {
    let mut out = diff_policies(&old.policy, &new.policy);
    out.changes.extend(diff_trust(&old.trust, &new.trust));
    out.changes.extend(diff_deny(&old.deny, &new.deny));
    out
}

/// Deny entries added or removed, compared by what they match (their keys, in canonical
/// form); a changed `reason` or a moved entry changes no access.
fn diff_deny(old: &DenyList, new: &DenyList) -> Vec<Change> {
    let keys = |list: &DenyList| -> BTreeSet<String> {
        list.entries().iter().map(|e| e.entry.describe()).collect()
    };
    let (old, new) = (keys(old), keys(new));
    let change = |change, detail: &String| Change {
        change,
        route: None,
        trust: None,
        detail: detail.clone(),
    };
    new.difference(&old)
        .map(|d| change(ChangeKind::DenyAdded, d))
        .chain(
            old.difference(&new)
                .map(|d| change(ChangeKind::DenyRemoved, d)),
        )
        .collect()
}

/// The route and selector part of [`diff`].
pub fn diff_policies(old: &Policy, new: &Policy) -> AccessDiff {
    let basis = Basis::new(&[old, new]);
    let (served_old, served_new) = (reach::served(old, &basis), reach::served(new, &basis));
    let mut names: Vec<&str> = new.routes.iter().map(|r| &*r.name).collect();
    names.extend(
        old.routes
            .iter()
            .map(|r| &*r.name)
            .filter(|n| new.route(n).is_none()),
    );
    let position = |p: &Policy, name: &str| p.routes.iter().position(|r| &*r.name == name);
    let nothing = Served::default();
    let mut out = AccessDiff::default();
    for name in names {
        let (o, n) = (position(old, name), position(new, name));
        let route_change = |change, detail: &str| Change {
            change,
            route: Some(name.to_owned()),
            trust: None,
            detail: detail.to_owned(),
        };
        match (o, n) {
            (None, Some(i)) => out.changes.push(route_change(
                ChangeKind::RouteAdded,
                &new.routes[i].describe_match(),
            )),
            (Some(i), None) => out.changes.push(route_change(
                ChangeKind::RouteRemoved,
                &old.routes[i].describe_match(),
            )),
            _ => {}
        }
        let sel_old = o.map(|i| selectors(&old.routes[i])).unwrap_or_default();
        let sel_new = n.map(|i| selectors(&new.routes[i])).unwrap_or_default();
        let cells_old = o.map_or(&nothing, |i| &served_old[i]);
        let cells_new = n.map_or(&nothing, |i| &served_new[i]);
        for s in sel_old.union(&sel_new) {
            let before = if sel_old.contains(s) {
                cells_old
            } else {
                &nothing
            };
            let after = if sel_new.contains(s) {
                cells_new
            } else {
                &nothing
            };
            let gained = after.minus_methods(before, &basis);
            let lost = before.minus_methods(after, &basis);
            let access = |bits: &Bits| Access {
                selector: s.clone(),
                route: name.to_owned(),
                methods: methods_of(bits, &basis),
                methods_text: methods_text(bits, &basis),
            };
            if !gained.is_empty() {
                out.gained.push(access(&gained));
            }
            if !lost.is_empty() {
                out.lost.push(access(&lost));
            }
        }
    }
    out
}

/// The trust source part of [`diff`].
fn diff_trust(old: &[TrustSource], new: &[TrustSource]) -> Vec<Change> {
    let find = |list: &'_ [TrustSource], name: &str| -> Option<usize> {
        list.iter().position(|s| &*s.name == name)
    };
    let mut out = Vec::new();
    let change = |change, trust: &str, detail: String| Change {
        change,
        route: None,
        trust: Some(trust.to_owned()),
        detail,
    };
    for source in new {
        match find(old, &source.name) {
            None => out.push(change(
                ChangeKind::TrustSourceAdded,
                &source.name,
                kind_name(&source.kind).to_owned(),
            )),
            Some(i) => {
                for detail in source_changes(&old[i], source) {
                    out.push(change(ChangeKind::TrustSourceChanged, &source.name, detail));
                }
            }
        }
    }
    for source in old.iter().filter(|s| find(new, &s.name).is_none()) {
        out.push(change(
            ChangeKind::TrustSourceRemoved,
            &source.name,
            kind_name(&source.kind).to_owned(),
        ));
    }
    out
}

fn kind_name(kind: &TrustKind) -> &'static str {
    match kind {
        TrustKind::Ca(_) => "CA source",
        TrustKind::Pinned(_) => "pinned source",
    }
}

/// Added and removed elements of two sets, as `what: +a, +b, -c`; `None` when equal.
fn set_change(what: &str, old: &BTreeSet<String>, new: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<String> = new.difference(old).map(|x| format!("+{x}")).collect();
    parts.extend(old.difference(new).map(|x| format!("-{x}")));
    (!parts.is_empty()).then(|| format!("{what}: {}", parts.join(", ")))
}

fn value_change(what: &str, old: String, new: String) -> Option<String> {
    (old != new).then(|| format!("{what}: {old} -> {new}"))
}

/// Each way a trust source changed, one line each.
fn source_changes(old: &TrustSource, new: &TrustSource) -> Vec<String> {
    let domains = |s: &TrustSource| s.spiffe_trust_domains.iter().cloned().collect();
    let mut out: Vec<String> = Vec::new();
    match (&old.kind, &new.kind) {
        (TrustKind::Ca(a), TrustKind::Ca(b)) => out.extend(ca_changes(a, b)),
        (TrustKind::Pinned(a), TrustKind::Pinned(b)) => out.extend(pinned_changes(a, b)),
        (a, b) => out.push(format!("{} -> {}", kind_name(a), kind_name(b))),
    }
    out.extend(set_change(
        "spiffe_trust_domains",
        &domains(old),
        &domains(new),
    ));
    out
}

fn ca_changes(old: &CaTrust, new: &CaTrust) -> Vec<String> {
    let anchors = |ca: &CaTrust| -> BTreeSet<String> {
        ca.anchors
            .iter()
            .map(|a| {
                let subject = crate::identity::CertInfo::from_chain(std::slice::from_ref(a))
                    .map(|i| i.subject)
                    .unwrap_or_default();
                format!("{subject} (sha256 {})", hex_lower(&sha256(a.as_ref())))
            })
            .collect()
    };
    let files =
        |ca: &CaTrust| -> BTreeSet<String> { ca.crls.iter().map(|c| c.file_name()).collect() };
    let intermediates = |ca: &CaTrust| -> BTreeSet<String> {
        ca.intermediates
            .iter()
            .map(|c| format!("sha256 {}", hex_lower(&sha256(c.as_ref()))))
            .collect()
    };
    let crl_urls =
        |ca: &CaTrust| -> BTreeSet<String> { ca.crl_urls.iter().map(|u| u.url.clone()).collect() };
    let dp_allow = |ca: &CaTrust| -> BTreeSet<String> { ca.crl_dp_allow.iter().cloned().collect() };
    let revoked = |ca: &CaTrust| -> BTreeSet<String> {
        ca.crls
            .iter()
            .flat_map(|c| {
                revoked_serials(c.der.as_ref())
                    .into_iter()
                    .map(move |s| format!("serial {s} by {}", c.issuer))
            })
            .collect()
    };
    let depth = |ca: &CaTrust| match ca.revocation.depth {
        RevocationDepth::Chain => "chain".to_owned(),
        RevocationDepth::EndEntity => "end_entity".to_owned(),
    };
    let word = |allow: bool| if allow { "allow" } else { "deny" }.to_owned();
    let lifetime = |ca: &CaTrust| {
        ca.max_lifetime
            .map(|d| format!("{}s", d.as_secs()))
            .unwrap_or_else(|| "none".to_owned())
    };
    [
        set_change("anchors", &anchors(old), &anchors(new)),
        set_change("intermediates", &intermediates(old), &intermediates(new)),
        set_change("CRL files", &files(old), &files(new)),
        set_change("crl_urls", &crl_urls(old), &crl_urls(new)),
        set_change(
            "crl_distribution_points.allow",
            &dp_allow(old),
            &dp_allow(new),
        ),
        set_change("revoked", &revoked(old), &revoked(new)),
        value_change("revocation.depth", depth(old), depth(new)),
        value_change(
            "revocation.unknown_status",
            word(old.revocation.allow_unknown_status),
            word(new.revocation.allow_unknown_status),
        ),
        value_change(
            "revocation.expired_crl",
            word(old.revocation.allow_expired_crl),
            word(new.revocation.allow_expired_crl),
        ),
        value_change("max_lifetime", lifetime(old), lifetime(new)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The serial numbers (hex) a CRL revokes; none for a CRL that does not parse (the loader
/// has refused those already).
fn revoked_serials(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    match x509_parser::revocation_list::CertificateRevocationList::from_der(der) {
        Ok((_, crl)) => crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn pinned_changes(old: &PinnedTrust, new: &PinnedTrust) -> Vec<String> {
    let pins = |p: &PinnedTrust| -> BTreeMap<String, String> {
        p.entries
            .iter()
            .map(|e| {
                let pin = match &e.pin {
                    Pin::Cert { sha256, .. } | Pin::Sha256(sha256) => {
                        format!("sha256 {}", hex_lower(sha256))
                    }
                    Pin::Spki(spki) => format!("spki_sha256 {}", hex_lower(spki)),
                };
                (e.name.to_string(), pin)
            })
            .collect()
    };
    let (a, b) = (pins(old), pins(new));
    let mut out = Vec::new();
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<BTreeSet<_>>();
    out.extend(set_change("pinned entries", &names(&a), &names(&b)));
    for (name, pin) in &b {
        if let Some(before) = a.get(name).filter(|before| *before != pin) {
            out.push(format!("pinned entry {name}: {before} -> {pin}"));
        }
    }
    out.extend(value_change(
        "check_validity",
        old.check_validity.to_string(),
        new.check_validity.to_string(),
    ));
    let action = |p: &PinnedTrust| format!("{:?}", p.on_overdue_review).to_ascii_lowercase();
    out.extend(value_change("on_overdue_review", action(old), action(new)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
  - name: orders-read
    host: orders.internal
    path_prefix: /orders
    methods: [GET]
    upstream: app
    allow:
      - { trust: internal, cn: alice }
      - { trust: internal, ou: payments }
  - name: orders-write
    path_prefix: /orders
    methods: [POST]
    upstream: app
    allow: [{ trust: internal, cn: alice }]
  - name: status
    path: /status
    upstream: app
    allow: [{ authenticated: true }]
";

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            let dir = tempfile::tempdir().unwrap();
            crate::devpki::write(&dir.path().join("pki"), false).unwrap();
            let other = crate::devpki::TestCa::root("other root").unwrap();
            std::fs::write(dir.path().join("pki/other.crt"), &other.cert_pem).unwrap();
            Dir(dir)
        }

        /// A config with these routes (a YAML list) and this `trust.internal.ca`.
        fn config(&self, routes: &str, ca: &str) -> Config {
            let yaml = format!(
                "listen: {{ cert: pki/server.crt, key: pki/server.key }}
trust:
  internal: {{ ca: pki/{ca}, crl: [pki/intermediate.crl, pki/ca.crl] }}
  lab:
    pinned: [{{ name: ci-runner, cert: pki/ci-runner.crt }}]
upstreams:
  app: {{ url: 'http://127.0.0.1:9000', timeout: 5s }}
routes:{routes}"
            );
            Config::from_yaml(&yaml, &self.0.path().join("c.yaml"))
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        }
    }

    #[test]
    fn diff_table() {
        let d = Dir::new();
        let base = d.config(BASE, "ca.crt");
        let swap = |s: &str, a: &str, b: &str| s.replacen(a, b, 1);
        let status = "  - name: status\n    path: /status\n    upstream: app\n    allow: [{ authenticated: true }]\n";
        let write = "  - name: orders-write\n    path_prefix: /orders\n    methods: [POST]\n    upstream: app\n    allow: [{ trust: internal, cn: alice }]\n";
        let no_status = BASE.replace(status, "");
        // (case, new routes, new CA file, expected lines)
        let rows: Vec<(&str, String, &str, Vec<&str>)> = vec![
            (
                "no-op: comments, entry order, unrelated route order, spelling",
                swap(
                    &BASE.replace(write, "").replace(status, &format!("{status}{write}")),
                    "      - { trust: internal, cn: alice }\n      - { trust: internal, ou: payments }",
                    "      # reviewed\n      - { ou: payments, trust: internal }\n      - { cn: alice, trust: internal }",
                )
                .replace("host: orders.internal", "host: Orders.Internal."),
                "ca.crt",
                vec![],
            ),
            (
                "route added",
                format!("{BASE}  - name: admin\n    path_prefix: /admin\n    upstream: app\n    allow: [{{ cn: root }}]\n"),
                "ca.crt",
                vec![
                    "gained: cn=root -> route admin (any method)",
                    "route_added route admin: any host path_prefix=/admin any method",
                ],
            ),
            (
                "route removed",
                no_status.clone(),
                "ca.crt",
                vec![
                    "lost:   authenticated=true -> route status (any method)",
                    "route_removed route status: any host path=/status any method",
                ],
            ),
            (
                "a catch-all moved above a route it shadows",
                format!("\n  - name: all\n    path_prefix: /\n    upstream: app\n    allow: [{{ trust: lab }}]{BASE}"),
                "ca.crt",
                vec![
                    "gained: trust=lab -> route all (any method)",
                    "lost:   trust=internal, cn=alice -> route orders-read (GET, HEAD)",
                    "lost:   trust=internal, ou=payments -> route orders-read (GET, HEAD)",
                    "lost:   trust=internal, cn=alice -> route orders-write (POST)",
                    "lost:   authenticated=true -> route status (any method)",
                    "route_added route all: any host path_prefix=/ any method",
                ],
            ),
            (
                "selector widened",
                BASE.replace(
                    "allow: [{ trust: internal, cn: alice }]",
                    "allow: [{ trust: internal, cn: 'ali*' }]",
                ),
                "ca.crt",
                vec![
                    "gained: trust=internal, cn=ali* -> route orders-write (POST)",
                    "lost:   trust=internal, cn=alice -> route orders-write (POST)",
                ],
            ),
            (
                "selector narrowed to nobody",
                BASE.replace("allow: [{ authenticated: true }]", "allow: []"),
                "ca.crt",
                vec!["lost:   authenticated=true -> route status (any method)"],
            ),
            (
                "method added",
                BASE.replace("methods: [GET]", "methods: [GET, PUT]"),
                "ca.crt",
                vec![
                    "gained: trust=internal, cn=alice -> route orders-read (PUT)",
                    "gained: trust=internal, ou=payments -> route orders-read (PUT)",
                ],
            ),
            (
                "methods restriction dropped: the other methods are gained",
                BASE.replace("    methods: [POST]\n", ""),
                "ca.crt",
                vec!["gained: trust=internal, cn=alice -> route orders-write (any method except POST)"],
            ),
            (
                "host changed",
                BASE.replace("host: orders.internal", "host: shop.internal"),
                "ca.crt",
                vec![
                    "gained: trust=internal, cn=alice -> route orders-read (GET, HEAD)",
                    "gained: trust=internal, ou=payments -> route orders-read (GET, HEAD)",
                    "lost:   trust=internal, cn=alice -> route orders-read (GET, HEAD)",
                    "lost:   trust=internal, ou=payments -> route orders-read (GET, HEAD)",
                ],
            ),
            (
                "enforce: false lets everyone in",
                BASE.replace(
                    "    methods: [POST]\n",
                    "    methods: [POST]\n    enforce: false\n    shadow_allow: [{ cn: bob }]\n",
                ),
                "ca.crt",
                vec!["gained: authenticated=true -> route orders-write (POST)"],
            ),
        ];
        for (case, routes, ca, want) in rows {
            let new = d.config(&routes, ca);
            let got = diff(&base, &new);
            assert_eq!(got.lines(), want, "{case}");
            assert_eq!(got.is_empty(), want.is_empty(), "{case}");
        }

        // Trust sources: the anchors of `internal` replaced.
        let anchors = diff(&base, &d.config(BASE, "other.crt"));
        assert!(anchors.gained.is_empty() && anchors.lost.is_empty());
        let lines = anchors.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("trust_source_changed trust source internal: anchors: +CN=other root,O=certguard dev (sha256 ")
                && lines[0].contains(", -CN=certguard dev root"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn diff_json_and_trust_sources() {
        let d = Dir::new();
        let base = d.config(BASE, "ca.crt");
        let new = d.config(
            &BASE.replace("methods: [GET]", "methods: [GET, PUT]"),
            "ca.crt",
        );
        let json = serde_json::to_value(diff(&base, &new)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "gained": [
                    {"selector": {"trust": "internal", "cn": "alice"}, "route": "orders-read", "methods": ["PUT"]},
                    {"selector": {"trust": "internal", "ou": "payments"}, "route": "orders-read", "methods": ["PUT"]},
                ],
                "lost": [],
                "changes": [],
            })
        );
        // A removed route, a removed source and an added one.
        let mut old = d.config(BASE, "ca.crt");
        old.trust.pop();
        let mut other = d.config(
            &BASE.replace(
                "allow: [{ authenticated: true }]",
                "allow: [{ authenticated: true }]\n    enforce: false",
            ),
            "ca.crt",
        );
        other.trust.remove(0);
        let json = serde_json::to_value(diff(&old, &other)).unwrap();
        assert_eq!(
            json["changes"],
            serde_json::json!([
                {"change": "trust_source_added", "trust": "lab", "detail": "pinned source"},
                {"change": "trust_source_removed", "trust": "internal", "detail": "CA source"},
            ])
        );
        // enforce: false on a route that authenticated: true already opens changes nothing.
        assert_eq!(json["gained"], serde_json::json!([]));
    }

    #[test]
    fn matrix_rows() {
        let d = Dir::new();
        let routes = format!(
            "{BASE}  - name: late\n    path: /status\n    upstream: app\n    allow: [{{ pinned: ci-runner }}]\n    enforce: false\n"
        );
        let c = d.config(&routes, "ca.crt");
        let reached = reach::reached(&c.policy);
        assert_eq!(reached, [true, true, true, false]);
        let json = serde_json::to_value(matrix(&c.policy, &reached)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"rule": "routes[0].allow[0]", "selector": {"trust": "internal", "cn": "alice"},
                 "routes": [{"route": "orders-read", "host": "orders.internal", "path": null,
                             "path_prefix": "/orders", "methods": ["GET", "HEAD"]}]},
                {"rule": "routes[0].allow[1]", "selector": {"trust": "internal", "ou": "payments"},
                 "routes": [{"route": "orders-read", "host": "orders.internal", "path": null,
                             "path_prefix": "/orders", "methods": ["GET", "HEAD"]}]},
                {"rule": "routes[1].allow[0]", "selector": {"trust": "internal", "cn": "alice"},
                 "routes": [{"route": "orders-write", "host": null, "path": null,
                             "path_prefix": "/orders", "methods": ["POST"]}]},
                {"rule": "routes[2].allow[0]", "selector": {"authenticated": true},
                 "routes": [{"route": "status", "host": null, "path": "/status",
                             "path_prefix": null, "methods": null}]},
                {"rule": "routes[3].allow[0]", "selector": {"pinned": "ci-runner"}, "routes": []},
                {"rule": "routes[3].enforce", "selector": {"authenticated": true}, "routes": []},
            ])
        );
    }
}
