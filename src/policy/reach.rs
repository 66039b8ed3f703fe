//! Which requests reach which route (SPEC 9.7): the request space (host x path x method) cut
//! into finitely many cells, and for each route the cells where it is the first route that
//! fits. A route that earlier routes shadow completely serves no cell and is not reached.
//!
//! The cells come from the patterns themselves. Two requests whose host matches the same host
//! patterns, whose path matches the same path patterns and whose method is listed by the same
//! routes are routed alike, so one representative request per such class decides for all of
//! them. The classes are:
//!
//! * hosts: no Host at all; each exact host a route names; for each `*.suffix`, a label below
//!   it that no route names; a host that no pattern matches;
//! * paths: each exact path a route names; for each prefix (the root too), a fresh segment
//!   below it that no route names (that covers the prefix itself as well: it matches the same
//!   prefixes and no exact path, or it is one of the exact paths);
//! * methods: each method a route lists; a method that no route lists (there are always
//!   more: extension methods).
//!
//! Representatives are concrete requests, matched with the same pattern code as the running
//! proxy ([`Route::fits`] in three parts), so the result is exact, not an approximation. The
//! work is bounded by hosts x paths x methods of the configuration (each at most one more
//! than the patterns it names), with route sets as bit sets; it runs when a snapshot is built,
//! for `check` and for `diff`, never per request.

use std::collections::BTreeSet;

use http::Method;

use super::{HostPattern, PathMatch, Policy};

/// A fixed-size set of small integers (route or method indices).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// An empty set for indices below `n`.
    pub fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    /// Add `i`.
    pub fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// Whether `i` is in the set.
    pub fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The smallest element.
    pub fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    /// The elements, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| i * 64 + b)
        })
    }

    /// `self & other` into `out` (all three the same size).
    fn and_into(&self, other: &Bits, out: &mut Bits) {
        for ((o, a), b) in out.0.iter_mut().zip(&self.0).zip(&other.0) {
            *o = a & b;
        }
    }

    /// `self | other`.
    pub fn union(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a | b).collect())
    }

    /// `self & !other`.
    pub fn minus(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & !b).collect())
    }
}

/// The representative requests: one per class of hosts, paths and methods (see the module
/// documentation). Built from one or more policies, so that two policies can be compared cell
/// by cell.
#[derive(Debug)]
pub struct Basis {
    /// `None` = a request without a Host.
    hosts: Vec<Option<String>>,
    paths: Vec<String>,
    /// Every method some route lists, then one that none lists (the last).
    methods: Vec<Method>,
}

impl Basis {
    /// The classes of every route of `policies`.
    pub fn new(policies: &[&Policy]) -> Basis {
        let routes = || policies.iter().flat_map(|p| p.routes.iter());
        let mut exact_hosts = BTreeSet::new();
        let mut wildcards = BTreeSet::new();
        let mut exact_paths = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let mut methods = BTreeSet::new();
        for r in routes() {
            match &r.host {
                Some(HostPattern::Exact(h)) => {
                    exact_hosts.insert(h.clone());
                }
                Some(HostPattern::Wildcard(s)) => {
                    wildcards.insert(s.clone());
                }
                None => {}
            }
            match &r.path {
                PathMatch::Exact(p) => {
                    exact_paths.insert(p.clone());
                }
                PathMatch::Prefix(p) => {
                    prefixes.insert(p.clone());
                }
                PathMatch::Any => {}
            }
            for m in r.methods.iter().flatten() {
                methods.insert(m.as_str().to_owned());
            }
        }

        let host_patterns: Vec<HostPattern> = exact_hosts
            .iter()
            .map(|h| HostPattern::Exact(h.clone()))
            .chain(wildcards.iter().map(|s| HostPattern::Wildcard(s.clone())))
            .collect();
        let matches_none = |h: &str| !host_patterns.iter().any(|p| p.matches(Some(h)));
        let mut hosts: Vec<Option<String>> = vec![None];
        hosts.extend(exact_hosts.iter().cloned().map(Some));
        for s in &wildcards {
            let label = (0..)
                .map(|n| format!("cg{n}.{s}"))
                .find(|h| !exact_hosts.contains(h));
            hosts.extend(label.map(Some));
        }
        // Three labels of which the last two vary with `n`: only finitely many patterns can
        // match one of these, so the search ends.
        hosts.extend(
            (0..)
                .map(|n| format!("cg{n}.cg{n}.cg{n}"))
                .find(|h| matches_none(h))
                .map(Some),
        );

        let named: Vec<&String> = exact_paths.iter().chain(prefixes.iter()).collect();
        let fresh_below = |p: &str| {
            (0..)
                .map(|n| {
                    if p == "/" {
                        format!("/~cg{n}")
                    } else {
                        format!("{p}/~cg{n}")
                    }
                })
                .find(|child| {
                    !named.iter().any(|s| {
                        s.as_str() == child
                            || s.strip_prefix(child.as_str())
                                .is_some_and(|r| r.starts_with('/'))
                    })
                })
        };
        let mut paths: BTreeSet<String> = exact_paths.clone();
        paths.extend(prefixes.iter().filter_map(|p| fresh_below(p)));
        // Below no prefix at all (or below `/` only).
        paths.extend(fresh_below("/"));

        let mut methods: Vec<Method> = methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let other = (1..)
            .map(|n| "OTHER".to_owned() + &"X".repeat(n))
            .find(|m| !methods.iter().any(|k| k.as_str() == m))
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        methods.extend(other);

        Basis {
            hosts,
            paths: paths.into_iter().collect(),
            methods,
        }
    }

    /// Number of method classes (the last is "a method no route lists").
    pub fn method_count(&self) -> usize {
        self.methods.len()
    }

    /// The method of class `i`; `None` for the class of methods no route lists.
    pub fn method(&self, i: usize) -> Option<&Method> {
        (i + 1 < self.methods.len()).then(|| &self.methods[i])
    }
}

/// The cells one route serves: for each (host class, path class), the method classes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served(Vec<((u32, u32), Bits)>);

impl Served {
    /// Whether the route serves any request at all.
    pub fn is_reached(&self) -> bool {
        !self.0.is_empty()
    }

    /// Every method class served somewhere.
    pub fn methods(&self, basis: &Basis) -> Bits {
        self.0
            .iter()
            .fold(Bits::new(basis.method_count()), |acc, (_, m)| acc.union(m))
    }

    /// The method classes of the cells `self` serves and `other` does not (both computed
    /// on the same basis).
    pub fn minus_methods(&self, other: &Served, basis: &Basis) -> Bits {
        let mut out = Bits::new(basis.method_count());
        for (cell, mine) in &self.0 {
            let theirs = other
                .0
                .binary_search_by(|(c, _)| c.cmp(cell))
                .ok()
                .map(|i| &other.0[i].1);
            let only = match theirs {
                Some(t) => mine.minus(t),
                None => mine.clone(),
            };
            out = out.union(&only);
        }
        out
    }
}

/// For each route of a policy (in order), the cells of `basis` it serves.
pub fn served(policy: &Policy, basis: &Basis) -> Vec<Served> {
    let n = policy.routes.len();
    let fit = |pred: &dyn Fn(&super::Route) -> bool| {
        let mut b = Bits::new(n);
        for (i, r) in policy.routes.iter().enumerate() {
            if pred(r) {
                b.set(i);
            }
        }
        b
    };
    let hosts: Vec<Bits> = basis
        .hosts
        .iter()
        .map(|h| fit(&|r| r.host.as_ref().map_or(true, |p| p.matches(h.as_deref()))))
        .collect();
    let paths: Vec<Bits> = basis
        .paths
        .iter()
        .map(|p| fit(&|r| r.path.matches(p)))
        .collect();
    let methods: Vec<Bits> = basis
        .methods
        .iter()
        .map(|m| fit(&|r| r.methods.as_ref().map_or(true, |ms| ms.contains(m))))
        .collect();
    let mut out = vec![Served::default(); n];
    let (mut hp, mut hpm) = (Bits::new(n), Bits::new(n));
    let mut firsts: Vec<(usize, usize)> = Vec::with_capacity(methods.len());
    for (h, host_fit) in hosts.iter().enumerate() {
        if host_fit.is_empty() {
            continue;
        }
        for (p, path_fit) in paths.iter().enumerate() {
            host_fit.and_into(path_fit, &mut hp);
            if hp.is_empty() {
                continue;
            }
            firsts.clear();
            for (m, method_fit) in methods.iter().enumerate() {
                hp.and_into(method_fit, &mut hpm);
                if let Some(route) = hpm.first() {
                    firsts.push((route, m));
                }
            }
            firsts.sort_unstable();
            let cell = (index(h), index(p));
            for group in firsts.chunk_by(|a, b| a.0 == b.0) {
                let mut mask = Bits::new(methods.len());
                for (_, m) in group {
                    mask.set(*m);
                }
                out[group[0].0].0.push((cell, mask));
            }
        }
    }
    out
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Whether each route of `policy` is reached (not shadowed completely by earlier routes).
pub fn reached(policy: &Policy) -> Vec<bool> {
    let basis = Basis::new(&[policy]);
    served(policy, &basis)
        .iter()
        .map(Served::is_reached)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::{RequestFacts, Route};

    fn route(name: &str, host: Option<&str>, path: PathMatch, methods: Option<&[&str]>) -> Route {
        Route {
            name: Arc::from(name),
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path,
            methods: methods.map(|ms| {
                ms.iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                    .collect()
            }),
            upstream: Arc::from("app"),
            allow: vec![],
            shadow_allow: None,
            enforce: true,
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::prefix(p).unwrap()
    }

    fn exact(p: &str) -> PathMatch {
        PathMatch::exact(p).unwrap()
    }

    /// The reach computed on cells agrees with routing each representative request.
    fn check_against_find_route(policy: &Policy) {
        let basis = Basis::new(&[policy]);
        let served = served(policy, &basis);
        for (h, host) in basis.hosts.iter().enumerate() {
            for (p, path) in basis.paths.iter().enumerate() {
                for (m, method) in basis.methods.iter().enumerate() {
                    let req = RequestFacts {
                        method,
                        host: host.as_deref(),
                        path,
                    };
                    let want = policy
                        .routes
                        .iter()
                        .position(|r| policy.find_route(&req).is_some_and(|f| std::ptr::eq(f, r)));
                    let got = served.iter().position(|s| {
                        s.0.iter()
                            .any(|(c, ms)| *c == (index(h), index(p)) && ms.get(m))
                    });
                    assert_eq!(got, want, "{method} {host:?} {path}");
                }
            }
        }
    }

    #[test]
    fn shadowing_table() {
        // (routes, which are reached)
        type Row = (Vec<Route>, Vec<bool>);
        let rows: Vec<Row> = vec![
            // A catch-all first shadows everything after it.
            (
                vec![
                    route("all", None, PathMatch::Any, None),
                    route("x", None, prefix("/x"), None),
                ],
                vec![true, false],
            ),
            // ... but not before it.
            (
                vec![
                    route("x", None, prefix("/x"), None),
                    route("all", None, PathMatch::Any, None),
                ],
                vec![true, true],
            ),
            // `path_prefix: /` is a catch-all for paths.
            (
                vec![
                    route("root", None, prefix("/"), None),
                    route("s", None, exact("/status"), None),
                ],
                vec![true, false],
            ),
            // An exact path inside a prefix; the prefix itself stays reached.
            (
                vec![
                    route("s", None, exact("/x"), None),
                    route("x", None, prefix("/x"), None),
                ],
                vec![true, true],
            ),
            // Same prefix, methods: GET first leaves other methods to the second.
            (
                vec![
                    route("get", None, prefix("/x"), Some(&["GET", "HEAD"])),
                    route("any", None, prefix("/x"), None),
                ],
                vec![true, true],
            ),
            // Two method routes together cover a third.
            (
                vec![
                    route("get", None, prefix("/x"), Some(&["GET"])),
                    route("post", None, prefix("/x"), Some(&["POST"])),
                    route("both", None, prefix("/x/y"), Some(&["POST", "GET"])),
                ],
                vec![true, true, false],
            ),
            // Any method is never covered by listed methods.
            (
                vec![
                    route("get", None, prefix("/x"), Some(&["GET", "POST", "PUT"])),
                    route("any", None, prefix("/x"), None),
                ],
                vec![true, true],
            ),
            // A route with a host leaves requests without one (and other hosts) to the next.
            (
                vec![
                    route("h", Some("a.internal"), PathMatch::Any, None),
                    route("any", None, PathMatch::Any, None),
                ],
                vec![true, true],
            ),
            // A wildcard host covers an exact host one label below it, not two.
            (
                vec![
                    route("w", Some("*.internal"), PathMatch::Any, None),
                    route("a", Some("a.internal"), prefix("/a"), None),
                    route("ab", Some("a.b.internal"), prefix("/a"), None),
                ],
                vec![true, false, true],
            ),
            // An exact host does not cover a wildcard.
            (
                vec![
                    route("a", Some("a.internal"), PathMatch::Any, None),
                    route("w", Some("*.internal"), PathMatch::Any, None),
                ],
                vec![true, true],
            ),
            // A shorter prefix covers a longer one on segment boundaries only.
            (
                vec![
                    route("orders", None, prefix("/orders"), None),
                    route("v2", None, prefix("/orders/v2"), None),
                    route("ordersx", None, prefix("/ordersx"), None),
                ],
                vec![true, false, true],
            ),
            // An exact path covers the same exact path, not the prefix.
            (
                vec![
                    route("e", None, exact("/a"), None),
                    route("e2", None, exact("/a"), None),
                    route("p", None, prefix("/a"), None),
                ],
                vec![true, false, true],
            ),
        ];
        for (i, (routes, want)) in rows.into_iter().enumerate() {
            let policy = Policy::new(routes);
            assert_eq!(reached(&policy), want, "row {i}");
            check_against_find_route(&policy);
        }
    }

    #[test]
    fn method_classes_and_differences() {
        let old = Policy::new(vec![route("x", None, prefix("/x"), Some(&["GET", "HEAD"]))]);
        let new = Policy::new(vec![route("x", None, prefix("/x"), None)]);
        let basis = Basis::new(&[&old, &new]);
        assert_eq!(basis.method_count(), 3);
        assert_eq!(basis.method(0), Some(&Method::GET));
        assert_eq!(basis.method(2), None, "the class of unlisted methods");
        let (o, n) = (&served(&old, &basis)[0], &served(&new, &basis)[0]);
        let gained: Vec<usize> = n.minus_methods(o, &basis).iter().collect();
        assert_eq!(gained, [2]);
        assert!(o.minus_methods(n, &basis).is_empty());
        assert_eq!(n.methods(&basis).iter().count(), 3);
    }

    #[test]
    fn bits() {
        let mut b = Bits::new(130);
        assert!(b.is_empty());
        assert_eq!(b.first(), None);
        b.set(129);
        b.set(3);
        assert_eq!(b.first(), Some(3));
        assert_eq!(b.iter().collect::<Vec<_>>(), [3, 129]);
        assert!(b.get(129) && !b.get(128));
        let mut c = Bits::new(130);
        c.set(3);
        assert_eq!(b.minus(&c).iter().collect::<Vec<_>>(), [129]);
        assert_eq!(c.union(&b), b);
    }
}
