//! Compiling the `routes:` section into a [`Policy`] and the `deny:` section into a
//! [`DenyList`]: patterns are parsed by [`crate::policy::pattern`], references to trust
//! sources, pinned names and upstreams are checked against what the file declares.

use std::sync::Arc;

use super::build::{Errs, Names};
use super::raw::{RawAllow, RawDeny, RawRoute};
use crate::policy::deny::{DenyEntry, DenyList};
use crate::policy::{AllowEntry, Matcher, PathMatch, Policy, Route, ShadowAllow};
use crate::request::normalize::{check_method, BadTarget};

/// Compile every route; errors are collected, broken routes are left out.
pub(super) fn compile(errs: &mut Errs, routes: Vec<RawRoute>, names: &Names) -> Policy {
    let mut out = Vec::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, r) in routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if errs.has(&key) && r == RawRoute::default() {
            continue; // not a mapping: already reported
        }
        let before = errs_len(errs);
        let name = match r.name.as_deref().map(str::trim) {
            None => {
                errs.required(&format!("{key}.name"), "a unique route name");
                None
            }
            Some("") => {
                errs.push(format!("{key}.name"), "must not be empty");
                None
            }
            Some("none") => {
                errs.push(
                    format!("{key}.name"),
                    "`none` is reserved (it is the metric label for requests without a route)",
                );
                None
            }
            Some(n) => {
                if let Some((_, first)) = seen.iter().find(|(s, _)| s == n) {
                    errs.push(
                        format!("{key}.name"),
                        format!("route name `{n}` is already used by routes[{first}]"),
                    );
                } else {
                    seen.push((n.to_string(), i));
                }
                Some(n.to_string())
            }
        };
        let host = r.host.as_deref().and_then(|h| {
            crate::policy::HostPattern::parse(h)
                .map_err(|e| errs.push(format!("{key}.host"), e))
                .ok()
        });
        let path = match (&r.path, &r.path_prefix) {
            (Some(_), Some(_)) => {
                errs.push(
                    format!("{key}.path_prefix"),
                    "a route takes `path` (exact) or `path_prefix`, not both",
                );
                PathMatch::Any
            }
            (Some(p), None) => PathMatch::exact(p.trim())
                .map_err(|e| errs.push(format!("{key}.path"), e))
                .unwrap_or(PathMatch::Any),
            (None, Some(p)) => PathMatch::prefix(p.trim())
                .map_err(|e| errs.push(format!("{key}.path_prefix"), e))
                .unwrap_or(PathMatch::Any),
            (None, None) => PathMatch::Any,
        };
        let methods = r.methods.as_ref().map(|list| {
            if list.is_empty() {
                errs.push(
                    format!("{key}.methods"),
                    "must not be empty (leave `methods` out to allow any method)",
                );
            }
            let mut out = Vec::new();
            for (j, m) in list.iter().enumerate() {
                let m = m.trim();
                let method =
                    http::Method::from_bytes(m.as_bytes()).map_err(|_| BadTarget::BadMethod);
                match method.and_then(|method| check_method(&method).map(|()| method)) {
                    Ok(method) => out.push(method),
                    Err(BadTarget::Connect) => errs.push(
                        format!("{key}.methods[{j}]"),
                        "CONNECT is not proxied (certguard refuses it with 400)",
                    ),
                    Err(_) => errs.push(
                        format!("{key}.methods[{j}]"),
                        format!("`{m}` is not an upper-case HTTP method token (e.g. GET)"),
                    ),
                }
            }
            // Frameworks serve HEAD with the GET handler (and nginx's `limit_except GET`
            // allows HEAD too): a route for GET must also be the route for HEAD, or HEAD
            // would fall through to a later, broader route and reach the same handler.
            if out.contains(&http::Method::GET) && !out.contains(&http::Method::HEAD) {
                out.push(http::Method::HEAD);
            }
            out
        });
        let upstream = match r.upstream.as_deref() {
            Some(u) if names.upstreams.iter().any(|n| n == u) => Some(u),
            Some(u) => {
                errs.push(
                    format!("{key}.upstream"),
                    format!("undefined upstream `{u}` (not in `upstreams:`)"),
                );
                None
            }
            None => {
                errs.required(&format!("{key}.upstream"), "the name of an upstream");
                None
            }
        };
        let allow = match r.allow {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(j, a)| allow_entry(errs, &format!("{key}.allow[{j}]"), a, names))
                .collect(),
            None => {
                errs.required(
                    &format!("{key}.allow"),
                    "a list of allow entries (`allow: []` denies everyone)",
                );
                Vec::new()
            }
        };
        let shadow_allow = r.shadow_allow.map(|list| {
            let entries = list
                .iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    allow_entry(errs, &format!("{key}.shadow_allow[{j}]"), a, names)
                })
                .collect();
            ShadowAllow::new(entries, &allow)
        });
        if let (Some(name), Some(upstream)) = (name, upstream) {
            if errs_len(errs) == before {
                out.push(Route {
                    name: Arc::from(name.as_str()),
                    host,
                    path,
                    methods,
                    upstream: Arc::from(upstream),
                    allow,
                    shadow_allow,
                    enforce: r.enforce.unwrap_or(true),
                });
            }
        }
    }
    Policy::new(out)
}

/// Compile `deny:` (SPEC 9.4): each entry uses the allow-entry keys, needs at least one of
/// them, and may not use `authenticated` (a deny entry for everyone is not an emergency brake).
pub(super) fn compile_deny(errs: &mut Errs, deny: Vec<RawDeny>, names: &Names) -> DenyList {
    let mut out = Vec::new();
    for (i, d) in deny.into_iter().enumerate() {
        let key = format!("deny[{i}]");
        if errs.has(&key) && d == RawDeny::default() {
            continue; // not a mapping: already reported
        }
        if d.keys.authenticated.is_some() {
            errs.push(
                format!("{key}.authenticated"),
                "`authenticated` is not allowed in a deny entry: name the identity to deny",
            );
            continue;
        }
        if d.keys == RawAllow::default() {
            if !errs.has(&key) {
                errs.push(
                    &key,
                    "a deny entry needs at least one identity key (e.g. serial)",
                );
            }
            continue;
        }
        if let Some(entry) = allow_entry(errs, &key, &d.keys, names) {
            out.push(DenyEntry {
                index: i,
                entry,
                reason: d.reason.map(|r| Arc::from(r.as_str())),
            });
        }
    }
    DenyList::new(out)
}

fn errs_len(errs: &Errs) -> usize {
    errs.len()
}

fn allow_entry(errs: &mut Errs, key: &str, a: &RawAllow, names: &Names) -> Option<AllowEntry> {
    if errs.has(key) && *a == RawAllow::default() {
        return None; // not a mapping, or only unknown keys: already reported
    }
    let mut matchers = Vec::new();
    let mut ok = true;
    for (k, v) in a.string_keys() {
        let mk = format!("{key}.{k}");
        match Matcher::parse(k, v) {
            Ok(m) => matchers.push(m),
            Err(e) => {
                errs.push(mk, e);
                ok = false;
            }
        }
    }
    match a.authenticated {
        Some(true) => matchers.push(Matcher::Authenticated),
        Some(false) => {
            errs.push(
                format!("{key}.authenticated"),
                "`authenticated` must be `true` (leave the entry out to deny)",
            );
            ok = false;
        }
        None => {}
    }
    if matchers.is_empty() && ok && !errs.has(key) {
        errs.push(key, "an allow entry needs at least one key");
        return None;
    }
    let trust = matchers.iter().find_map(|m| match m {
        Matcher::Trust(t) => Some(t.clone()),
        _ => None,
    });
    if let Some(t) = &trust {
        if !names.trust.iter().any(|n| n == t) {
            errs.push(
                format!("{key}.trust"),
                format!("undefined trust source `{t}` (not in `trust:`)"),
            );
            ok = false;
        }
    }
    let pinned = matchers.iter().find_map(|m| match m {
        Matcher::Pinned(p) => Some(p.clone()),
        _ => None,
    });
    if let Some(p) = &pinned {
        match names.pinned.iter().find(|(n, _, _)| n == p) {
            None => {
                errs.push(
                    format!("{key}.pinned"),
                    format!("undefined pinned entry `{p}` (no `pinned:` list names it)"),
                );
                ok = false;
            }
            Some((_, source, _)) => {
                if let Some(t) = trust.as_ref().filter(|t| *t != source) {
                    errs.push(
                        format!("{key}.pinned"),
                        format!(
                            "pinned entry `{p}` belongs to trust source `{source}`, but the entry \
                             requires `trust: {t}`: it can never match"
                        ),
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(AllowEntry { matchers })
}
