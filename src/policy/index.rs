//! The route index: finds the first route (in config order) whose host, path and method fit a
//! request without looking at every route, so that the cost of a lookup depends on the depth of
//! the request path, not on the number of routes.
//!
//! Routes are filed by host (an exact host, a `*.suffix`, or any host) and, within that, by
//! path (an exact path, a `path_prefix`, or any path). A request looks in at most three host
//! buckets and, in each, at the exact-path list of its path, the prefix lists of each of its
//! segment-boundary prefixes and the any-path list: every route that can fit is in one of those
//! lists, each list is in config order, and [`Route::fits`] has the last word on each candidate,
//! so the answer is exactly the linear scan's (a property test checks it against the scan).
//! Hosts that are not in normalized form (upper case, a trailing dot) take the linear scan.

use crate::keyhash::ConfigMap;

use super::{HostPattern, PathMatch, RequestFacts, Route};

/// Routes of one host bucket, by path; every list holds route indices in config order.
#[derive(Debug, Default)]
struct Paths {
    exact: ConfigMap<String, Vec<usize>>,
    /// Keyed by the prefix as stored (no trailing `/`); the root `/` is in `any`.
    prefix: ConfigMap<String, Vec<usize>>,
    /// The distinct lengths of the keys of `prefix`, ascending.
    prefix_lens: Vec<usize>,
    /// Routes without a path, and `path_prefix: /`.
    any: Vec<usize>,
}

impl Paths {
    fn add(&mut self, path: &PathMatch, i: usize) {
        match path {
            PathMatch::Any => self.any.push(i),
            PathMatch::Prefix(p) if p == "/" => self.any.push(i),
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(i),
            PathMatch::Prefix(p) => {
                if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
                    self.prefix_lens.insert(at, p.len());
                }
                self.prefix.entry(p.clone()).or_default().push(i)
            }
        }
    }

    /// The lowest route index in this bucket that fits, if any is lower than `best`.
    fn first_fit(&self, routes: &[Route], req: &RequestFacts<'_>, best: &mut Option<usize>) {
        let path = req.path;
        consider(&self.any, routes, req, best);
        if let Some(list) = self.exact.get(path) {
            consider(list, routes, req, best);
        }
        // A route's prefix fits exactly when it is the path itself or one of its
        // segment-boundary prefixes ("/a/b/c": "/a/b/c", "/a/b", "/a"). Only those as long as
        // a stored prefix are looked up: at most one lookup per distinct prefix length in the
        // config, none longer than the longest prefix. (Every boundary prefix of a 64 KB path
        // of 32,000 segments, each hashed in full, is 1 GB of hashing for one request.)
        let bytes = path.as_bytes();
        for &len in &self.prefix_lens {
            let boundary = match bytes.get(len) {
                None if len == bytes.len() => true,
                None => break,
                Some(b) => *b == b'/',
            };
            // `len` is at a `/` or the end: a character boundary.
            if let (true, Some(prefix)) = (boundary && len > 0, path.get(..len)) {
                #[cfg(test)]
                tests::PREFIX_LOOKUPS.with(|n| n.set(n.get() + 1));
                if let Some(list) = self.prefix.get(prefix) {
                    consider(list, routes, req, best);
                }
            }
        }
    }
}

/// Lower `best` to the first index of `list` (config order) that fits, when it is lower.
fn consider(list: &[usize], routes: &[Route], req: &RequestFacts<'_>, best: &mut Option<usize>) {
    for &i in list {
        if best.is_some_and(|b| i >= b) {
            return;
        }
        if routes[i].fits(req) {
            *best = Some(i);
            return;
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// How many routes were indexed: a policy whose routes changed since is scanned.
    len: usize,
    exact_host: ConfigMap<String, Paths>,
    /// `*.suffix`, keyed by `suffix`.
    wildcard_host: ConfigMap<String, Paths>,
    any_host: Paths,
}

impl RouteIndex {
    /// Index `routes`.
    pub fn new(routes: &[Route]) -> RouteIndex {
        let mut index = RouteIndex {
            len: routes.len(),
            ..RouteIndex::default()
        };
        for (i, route) in routes.iter().enumerate() {
            let paths = match &route.host {
                None => &mut index.any_host,
                Some(HostPattern::Exact(h)) => {
                    index.exact_host.entry(h.to_ascii_lowercase()).or_default()
                }
                Some(HostPattern::Wildcard(s)) => index
                    .wildcard_host
                    .entry(s.to_ascii_lowercase())
                    .or_default(),
            };
            paths.add(&route.path, i);
        }
        index
    }

    /// The index of the first route that fits `req`, exactly as a scan of `routes` in order
    /// would find it.
    pub fn find(&self, routes: &[Route], req: &RequestFacts<'_>) -> Option<usize> {
        let normalized = !matches!(
            req.host,
            Some(h) if h.ends_with('.') || h.bytes().any(|b| b.is_ascii_uppercase())
        );
        if self.len != routes.len() || !normalized {
            return routes.iter().position(|r| r.fits(req));
        }
        let mut best = None;
        self.any_host.first_fit(routes, req, &mut best);
        if let Some(host) = req.host {
            if let Some(paths) = self.exact_host.get(host) {
                paths.first_fit(routes, req, &mut best);
            }
            if let Some(paths) = host
                .split_once('.')
                .and_then(|(_, suffix)| self.wildcard_host.get(suffix))
            {
                paths.first_fit(routes, req, &mut best);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Method;
    use proptest::prelude::*;

    use super::*;

    fn route(
        i: usize,
        host: Option<HostPattern>,
        path: PathMatch,
        methods: Option<Vec<Method>>,
    ) -> Route {
        Route {
            name: Arc::from(format!("r{i}").as_str()),
            host,
            path,
            methods,
            upstream: Arc::from("up"),
            allow: Vec::new(),
            shadow_allow: None,
            enforce: true,
        }
    }

    thread_local! {
        /// Prefix lookups made by this thread's [`Paths::first_fit`] calls.
        pub(super) static PREFIX_LOOKUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A deep path costs no more lookups than the config has prefix lengths: a 64 KB path of
    /// 32,000 segments once meant 32,000 lookups, each hashing its prefix in full (quadratic:
    /// seconds of CPU for one request of an authenticated client).
    #[test]
    fn a_deep_path_is_looked_up_once_per_prefix_length() {
        let routes: Vec<Route> = ["/a", "/a/a", "/b", "/a/a/a/a/x", "/api/v1"]
            .iter()
            .enumerate()
            .map(|(i, p)| route(i, None, PathMatch::Prefix((*p).to_owned()), None))
            .collect();
        let index = RouteIndex::new(&routes);
        let lengths = 4; // 2, 4, 7 and 10 bytes
        let get = Method::GET;
        for (path, want) in [
            ("/a".repeat(32_000), Some(0)),
            (format!("/a/a/a/a/x{}", "/a".repeat(32_000)), Some(0)),
            ("/c".repeat(32_000), None),
            ("/api/v1/".repeat(8_000), Some(4)),
        ] {
            let req = RequestFacts {
                method: &get,
                host: Some("x.internal"),
                path: &path,
            };
            PREFIX_LOOKUPS.with(|n| n.set(0));
            assert_eq!(index.find(&routes, &req), want, "{}", &path[..20]);
            assert_eq!(
                index.find(&routes, &req),
                routes.iter().position(|r| r.fits(&req))
            );
            let lookups = PREFIX_LOOKUPS.with(|n| n.get());
            assert!(
                (1..=2 * lengths).contains(&lookups),
                "{lookups} prefix lookups for {}...",
                &path[..20]
            );
        }
    }

    const SEGMENTS: &[&str] = &["a", "b", "api", "v1"];
    const HOSTS: &[&str] = &[
        "x.internal",
        "y.internal",
        "internal",
        "a.b.internal",
        "other",
    ];

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(SEGMENTS), 0..4)
            .prop_map(|segs| format!("/{}", segs.join("/")))
    }

    fn route_strategy(
    ) -> impl Strategy<Value = (Option<HostPattern>, PathMatch, Option<Vec<Method>>)> {
        let host = prop_oneof![
            Just(None),
            prop::sample::select(HOSTS).prop_map(|h| Some(HostPattern::Exact(h.to_owned()))),
            prop::sample::select(&["internal", "b.internal"][..])
                .prop_map(|s| Some(HostPattern::Wildcard(s.to_owned()))),
        ];
        let path = prop_oneof![
            Just(PathMatch::Any),
            path_strategy().prop_map(PathMatch::Exact),
            path_strategy().prop_map(PathMatch::Prefix),
        ];
        let methods = prop_oneof![
            Just(None),
            Just(Some(vec![Method::GET])),
            Just(Some(vec![Method::POST, Method::DELETE])),
        ];
        (host, path, methods)
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]
        /// The index finds exactly the route the linear scan finds.
        #[test]
        fn the_index_agrees_with_the_scan(
            specs in prop::collection::vec(route_strategy(), 0..24),
            requests in prop::collection::vec(
                (prop::option::of(prop::sample::select(HOSTS)), path_strategy(), any::<bool>()),
                1..16,
            ),
        ) {
            let routes: Vec<Route> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (h, p, m))| route(i, h, p, m))
                .collect();
            let index = RouteIndex::new(&routes);
            for (host, path, get) in requests {
                let method = if get { Method::GET } else { Method::POST };
                let req = RequestFacts { method: &method, host, path: &path };
                let scan = routes.iter().position(|r| r.fits(&req));
                prop_assert_eq!(index.find(&routes, &req), scan, "{:?} {}", host, path);
            }
        }
    }

    #[test]
    fn hosts_not_in_normal_form_and_changed_routes_are_scanned() {
        let mut routes = vec![route(
            0,
            Some(HostPattern::Exact("x.internal".into())),
            PathMatch::Any,
            None,
        )];
        let index = RouteIndex::new(&routes);
        let req = |host| RequestFacts {
            method: &Method::GET,
            host: Some(host),
            path: "/",
        };
        assert_eq!(index.find(&routes, &req("x.internal")), Some(0));
        assert_eq!(index.find(&routes, &req("X.Internal")), Some(0));
        assert_eq!(index.find(&routes, &req("x.internal.")), Some(0));
        routes.insert(0, route(1, None, PathMatch::Any, None));
        assert_eq!(
            index.find(&routes, &req("x.internal")),
            Some(0),
            "scanned, not stale"
        );
    }
}
