//! Micro-benchmarks of the pure per-request work (normalize, authorize, header rewriting), each
//! measured next to a baseline in the same run so that results read as ratios.
//!
//! The machine these run on is shared and noisy, so absolute times say little; what is
//! reported (in a table after criterion's own output) is `subject / baseline`, both measured in
//! the same process a few seconds apart:
//!
//! | group       | subject                                   | baseline                          |
//! |-------------|-------------------------------------------|-----------------------------------|
//! | `normalize` | `proxy::normalize::normalize` on a `Uri`  | parsing the same target as a `Uri` |
//! | `authorize` | `policy::authorize` on a 50-route policy  | linear scan of the route paths     |
//! | `headers`   | XFCC element, hop-by-hop strip, forward   | cloning the request's header map  |
//! | `shadow`    | `authorize`, every route with `shadow_allow` (a tightened copy of `allow`, and a list sharing nothing with it) | the same policy without it |
//!
//! The `shadow` group is also measured as paired ratios (both sides timed in interleaved
//! rounds, so that they share the machine's load), printed last.
//! | `scaling`   | `authorize` at 1,000 and 10,000 routes; the deny lookup at 1,000 and 10,000 entries | the same at 50 routes, 10 entries |
//!
//! `cargo bench --bench request_path` runs them (about a minute and a half on 2 cores, once
//! built); `cargo bench --bench request_path -- authorize` runs one group, and the table then
//! shows only what this run measured. `cargo test --all-targets` runs each benchmark once as a
//! smoke test, and the setup asserts that every case really takes the code path its name says
//! (allowed, denied, no route, rejected target). Ratios of ~1.5x move between runs on a busy
//! machine; compare runs by ratio, and distrust small differences.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};

use certguard::config::{Config, XfccField};
use certguard::headers::{apply_forward, strip_hop_by_hop, xfcc_element};
use certguard::identity::{CertInfo, Identity};
use certguard::policy::{authorize, Decision, PathMatch, Policy, RequestFacts};
use certguard::request::normalize::normalize;

/// Pairs of (subject, baseline) benchmark ids, recorded as benchmarks are registered, read back
/// after the run to print ratios.
#[derive(Default)]
struct Pairs(Vec<Pair>);

struct Pair {
    group: &'static str,
    case: String,
    /// Criterion's id below the group: `function/parameter` or just `function`.
    subject: String,
    baseline: String,
}

impl Pairs {
    fn add(&mut self, group: &'static str, case: &str, subject: String, baseline: String) {
        self.0.push(Pair {
            group,
            case: case.to_owned(),
            subject,
            baseline,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// normalize

/// Request targets: what clients usually send, and what someone probing for a policy bypass
/// sends. The `rejected_*` cases end in a 400.
const TARGETS: &[(&str, &str, bool)] = &[
    ("typical", "/api/v1/orders/12345/items?limit=50&offset=100", true),
    (
        "long_typical",
        "/api/v2/tenants/acme-corp/projects/billing-service/environments/production/deployments/\
         2024-06-01T12-00-00/artifacts/build-logs/stage-3/step-17/output.txt?download=1",
        true,
    ),
    ("percent_encoded", "/api/v1/%7Ealice/caf%C3%A9/%61%62%63/r%C3%A9sum%C3%A9.pdf", true),
    ("dot_segments", "/api/./v1/../v1//orders/./12345/../12345/items/", true),
    (
        "adversarial_dots",
        "/a/b/c/d/e/f/g/h/../../../../../../../../x/./y/./z/%2e/%2E%2e/../i/j/k/l/m/n/o/p/../../../..\
         /q/r/s/t/u/v/w/x/y/z/../../../../../../../../../../a/b/c/d/e/f/g/h/../../../../../../../..",
        true,
    ),
    (
        "adversarial_slashes",
        "//////////////////////////////////////////////////////////////////////////////////////////\
         ////api//////v1//////orders////////////////////////////////////////////////////////items",
        true,
    ),
    ("rejected_encoded_slash", "/api/v1/public/..%2F..%2Fadmin/secrets", false),
    ("rejected_above_root", "/api/../../../../../../etc/passwd", false),
];

fn bench_normalize(c: &mut Criterion, pairs: &mut Pairs) {
    let mut group = c.benchmark_group("normalize");
    for &(case, target, accepted) in TARGETS {
        let uri: Uri = target.parse().expect("benchmark target parses as a Uri");
        assert_eq!(
            normalize(&Method::GET, &uri).is_ok(),
            accepted,
            "normalize({target}) should be {}",
            if accepted { "accepted" } else { "rejected" }
        );
        group.bench_with_input(BenchmarkId::new("uri_parse", case), target, |b, t| {
            b.iter(|| black_box(t).parse::<Uri>())
        });
        group.bench_with_input(BenchmarkId::new("normalize", case), &uri, |b, u| {
            b.iter(|| normalize(black_box(&Method::GET), black_box(u)))
        });
        pairs.add(
            "normalize",
            case,
            format!("normalize/{case}"),
            format!("uri_parse/{case}"),
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// PKI and config for authorize and headers

/// A CA, a server certificate and a client leaf made with rcgen, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    /// Client leaf then CA, as a client would present them.
    client_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench root CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "acme");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params =
        CertificateParams::new(vec!["api.billing.svc.cluster.local".to_owned()])
            .expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "alice");
    client_params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "payments");
    client_params
        .distinguished_name
        .push(DnType::OrganizationName, "acme");
    client_params.subject_alt_names.push(SanType::URI(
        "spiffe://dev.local/ns/default/sa/alice"
            .try_into()
            .expect("URI SAN"),
    ));
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");

    let write = |name: &str, text: String| {
        std::fs::write(dir.path().join(name), text).expect("write PEM");
    };
    write("ca.crt", ca_cert.pem());
    write(
        "server.crt",
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    );
    write("server.key", server_key.serialize_pem());
    Pki {
        client_chain: vec![client_cert.der().clone(), ca_cert.der().clone()],
        dir,
    }
}

/// Number of `/api/svcNN` routes before `status` and the `admin.internal` catch-all.
const SERVICE_ROUTES: usize = 48;

/// Which `shadow_allow` list every service route gets (SPEC 9.6's candidate rules). Both are
/// as long as the route's `allow` list and match neither alice nor bob, so the shadow pass
/// never stops early.
#[derive(Clone, Copy, Debug)]
enum Shadow {
    None,
    /// The usual candidate: the `allow` list with alice's entry narrowed to carol.
    Tightened,
    /// The worst case: five entries that share nothing with `allow`.
    Disjoint,
}

/// A realistic 50-route policy: per-service prefixes (some method-restricted, some bound to a
/// host), each with several allow entries of different kinds, the last of which lets alice in,
/// so an allowed request walks every entry (and the `shadow` list, if any); then an exact
/// `/status` and a host-bound catch-all.
fn policy_yaml_with(shadow: Shadow) -> String {
    let mut y = String::from(
        "listen:\n  address: \"127.0.0.1:0\"\n  cert: server.crt\n  key: server.key\n\
         trust:\n  internal:\n    ca: ca.crt\n  lab:\n    pinned:\n      - name: ci-runner\n        \
         sha256: \"",
    );
    y.push_str(&"ab".repeat(32));
    y.push_str("\"\nroutes:\n");
    for i in 0..SERVICE_ROUTES {
        y.push_str(&format!(
            "  - name: svc{i:02}\n    path_prefix: /api/svc{i:02}\n"
        ));
        if i % 4 == 1 {
            y.push_str("    methods: [GET, HEAD]\n");
        }
        if i % 6 == 5 {
            y.push_str("    host: \"*.internal\"\n");
        }
        y.push_str(&format!(
            "    upstream: app\n    allow:\n      \
             - trust: internal\n        spiffe_id: \"spiffe://dev.local/ns/svc{i:02}/*\"\n      \
             - cn: \"svc{i:02}-*\"\n        ou: payments\n      \
             - san_dns: \"*.svc{i:02}.svc.cluster.local\"\n      \
             - pinned: ci-runner\n      \
             - trust: internal\n        spiffe_id: \"spiffe://dev.local/ns/default/sa/alice\"\n"
        ));
        match shadow {
            Shadow::None => {}
            Shadow::Tightened => y.push_str(&format!(
                "    shadow_allow:\n      \
                 - trust: internal\n        spiffe_id: \"spiffe://dev.local/ns/svc{i:02}/*\"\n      \
                 - cn: \"svc{i:02}-*\"\n        ou: payments\n      \
                 - san_dns: \"*.svc{i:02}.svc.cluster.local\"\n      \
                 - pinned: ci-runner\n      \
                 - trust: internal\n        spiffe_id: \"spiffe://dev.local/ns/default/sa/carol\"\n"
            )),
            Shadow::Disjoint => y.push_str(&format!(
                "    shadow_allow:\n      \
                 - trust: lab\n      \
                 - o: \"svc{i:02}-team\"\n        ou: payments\n      \
                 - san_uri: \"https://svc{i:02}.example/*\"\n      \
                 - serial: \"0a0b0c\"\n      \
                 - trust: internal\n        cn: carol\n"
            )),
        }
    }
    y.push_str(
        "  - name: status\n    path: /status\n    upstream: app\n    allow:\n      \
         - authenticated: true\n\
         \x20 - name: admin\n    host: admin.internal\n    path_prefix: /\n    upstream: app\n    \
         allow:\n      - trust: internal\n        cn: alice\n        ou: \"pay*\"\n\
         upstreams:\n  app:\n    url: http://127.0.0.1:9000\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         reload:\n  watch: false\n",
    );
    y
}

fn load_config(dir: &Path) -> Config {
    load_config_with(dir, Shadow::None)
}

fn load_config_with(dir: &Path, shadow: Shadow) -> Config {
    let path = dir.join("certguard.yaml");
    let yaml = policy_yaml_with(shadow);
    std::fs::write(&path, &yaml).expect("write config");
    match Config::from_yaml(&yaml, &path) {
        Ok(config) => config,
        Err(errors) => panic!("benchmark config is invalid:\n{errors}"),
    }
}

fn alice(chain: Vec<rustls_pki_types::CertificateDer<'static>>) -> Identity {
    Identity {
        trust: Arc::from("internal"),
        pinned: None,
        cert: Arc::new(CertInfo {
            subject: "CN=alice,OU=payments,O=acme".into(),
            issuer: "O=acme,CN=bench root CA".into(),
            cn: vec!["alice".into()],
            o: vec!["acme".into()],
            ou: vec!["payments".into()],
            san_dns: vec!["api.billing.svc.cluster.local".into()],
            san_uri: vec!["spiffe://dev.local/ns/default/sa/alice".into()],
            san_email: vec![],
            san_ip: vec![],
            spiffe_id: Some("spiffe://dev.local/ns/default/sa/alice".into()),
            fingerprint: "3fa2".repeat(16),
            spki: "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".into(),
            serial: "1a2b3c4d5e6f".into(),
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            chain_not_after: vec![2_000_000_000],
            chain,
        }),
    }
}

fn bob() -> Identity {
    Identity {
        trust: Arc::from("internal"),
        pinned: None,
        cert: Arc::new(CertInfo {
            subject: "CN=bob,O=acme".into(),
            issuer: "O=acme,CN=bench root CA".into(),
            cn: vec!["bob".into()],
            o: vec!["acme".into()],
            ou: vec![],
            san_dns: vec![],
            san_uri: vec!["spiffe://dev.local/ns/default/sa/bob".into()],
            san_email: vec![],
            san_ip: vec![],
            spiffe_id: Some("spiffe://dev.local/ns/default/sa/bob".into()),
            fingerprint: "c0de".repeat(16),
            spki: "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=".into(),
            serial: "0badcafe".into(),
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            chain_not_after: vec![2_000_000_000],
            chain: vec![],
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// authorize

/// The baseline: the cheapest route lookup imaginable, a linear scan comparing the route path
/// strings (segment-boundary prefix or exact), ignoring host, method and allow entries.
fn linear_path_scan(paths: &[(bool, String)], path: &str) -> Option<usize> {
    paths.iter().position(|(exact, p)| {
        if *exact {
            path == p
        } else {
            p == "/"
                || (path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
        }
    })
}

fn bench_authorize(c: &mut Criterion, pairs: &mut Pairs, config: &Config, alice: &Identity) {
    let bob = bob();
    let policy = &config.policy;
    assert_eq!(
        policy.routes.len(),
        SERVICE_ROUTES + 2,
        "a ~50-route policy"
    );
    let paths: Vec<(bool, String)> = policy
        .routes
        .iter()
        .map(|r| match &r.path {
            PathMatch::Any => (false, "/".to_owned()),
            PathMatch::Exact(p) => (true, p.clone()),
            PathMatch::Prefix(p) => (false, p.clone()),
        })
        .collect();

    let get = Method::GET;
    // (case, identity, host, path, expected decision)
    let cases: [(&str, &Identity, Option<&str>, &str, &str); 5] = [
        (
            "first_route",
            alice,
            Some("api.internal"),
            "/api/svc00/orders/42",
            "allowed svc00",
        ),
        (
            "middle_route",
            alice,
            Some("api.internal"),
            "/api/svc24/orders/42",
            "allowed svc24",
        ),
        (
            "last_route",
            alice,
            Some("admin.internal"),
            "/metrics/summary",
            "allowed admin",
        ),
        (
            "denied",
            &bob,
            Some("api.internal"),
            "/api/svc24/orders/42",
            "not_allowed svc24",
        ),
        (
            "no_route",
            alice,
            Some("api.internal"),
            "/nothing/here",
            "no_route",
        ),
    ];

    let mut group = c.benchmark_group("authorize");
    for (case, id, host, path, expect) in cases {
        let req = RequestFacts {
            method: &get,
            host,
            path,
        };
        let got = match authorize(policy, id, &req) {
            Decision::Allowed(permit) => format!("allowed {}", permit.route().name),
            Decision::NotAllowed { route, .. } => format!("not_allowed {}", route.name),
            Decision::NoRoute => "no_route".to_owned(),
        };
        assert_eq!(got, expect, "authorize case {case}");
        assert!(
            linear_path_scan(&paths, path).is_some(),
            "baseline scan finds a route for {case}"
        );

        group.bench_function(BenchmarkId::new("linear_path_scan", case), |b| {
            b.iter(|| linear_path_scan(black_box(&paths), black_box(path)))
        });
        group.bench_function(BenchmarkId::new("authorize", case), |b| {
            b.iter(|| {
                // Only whether it was allowed leaves the closure: a Decision borrows the policy.
                matches!(
                    authorize(black_box(policy), black_box(id), black_box(&req)),
                    Decision::Allowed(_)
                )
            })
        });
        pairs.add(
            "authorize",
            case,
            format!("authorize/{case}"),
            format!("linear_path_scan/{case}"),
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// shadow

/// `authorize` on the 50-route policy with `shadow_allow` on every service route, against the
/// same policy without: SPEC 9.6 wants the shadow pass to cost under 1.5x. Measured for a
/// tightened copy of `allow` (the usual candidate) and for a list that shares nothing with it.
fn bench_shadow(c: &mut Criterion, pairs: &mut Pairs, plain: &Config, shadowed: &[(&str, Config)]) {
    let alice = alice(Vec::new());
    let bob = bob();
    let get = Method::GET;
    // (case, identity, path, expected decision with the shadow verdict)
    let cases: [(&str, &Identity, &str, &str); 3] = [
        (
            "allowed_first",
            &alice,
            "/api/svc00/orders/42",
            "allowed svc00 shadow=Some(false)",
        ),
        (
            "allowed_middle",
            &alice,
            "/api/svc24/orders/42",
            "allowed svc24 shadow=Some(false)",
        ),
        (
            "denied_middle",
            &bob,
            "/api/svc24/orders/42",
            "not_allowed svc24 shadow=Some(false)",
        ),
    ];
    let describe = |d: Decision<'_>| match d {
        Decision::Allowed(p) => format!("allowed {} shadow={:?}", p.route().name, p.shadow()),
        Decision::NotAllowed { route, shadow } => {
            format!("not_allowed {} shadow={shadow:?}", route.name)
        }
        Decision::NoRoute => "no_route".to_owned(),
    };
    let mut group = c.benchmark_group("shadow");
    let bench = |group: &mut criterion::BenchmarkGroup<'_, _>,
                 name: BenchmarkId,
                 policy: &Policy,
                 id: &Identity,
                 req: &RequestFacts<'_>| {
        group.bench_function(name, |b| {
            b.iter(|| {
                matches!(
                    authorize(black_box(policy), black_box(id), black_box(req)),
                    Decision::Allowed(_)
                )
            })
        });
    };
    for (case, id, path, expect) in cases {
        let req = RequestFacts {
            method: &get,
            host: Some("api.internal"),
            path,
        };
        assert_eq!(
            describe(authorize(&plain.policy, id, &req)),
            expect.replace("Some(false)", "None"),
            "the plain policy decides the same, without a shadow verdict ({case})"
        );
        let baseline = BenchmarkId::new("authorize", case);
        bench(&mut group, baseline, &plain.policy, id, &req);
        for (kind, config) in shadowed {
            assert_eq!(
                describe(authorize(&config.policy, id, &req)),
                expect,
                "shadow case {kind} {case}"
            );
            let name = format!("shadow_{kind}");
            bench(
                &mut group,
                BenchmarkId::new(&name, case),
                &config.policy,
                id,
                &req,
            );
            pairs.add(
                "shadow",
                &format!("{kind}/{case}"),
                format!("{name}/{case}"),
                format!("authorize/{case}"),
            );
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// scaling: the per-request cost against the number of routes and of deny entries

/// Route counts of the scaling group; each is compared with the first.
const ROUTE_COUNTS: [usize; 3] = [50, 1_000, 10_000];
/// Deny-list sizes of the scaling group; each is compared with the first.
const DENY_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// A policy of `routes` routes, `deny` deny entries: per-service prefixes (every third bound
/// to a host of its own, every fourth to `*.internal`, every fifth method-restricted, every
/// seventh an exact path), each admitting its own SPIFFE IDs; then `/last`, the route the
/// allowed request matches, and a host-bound catch-all. Deny entries name fingerprints (the
/// indexed kind), plus three SPIFFE ID patterns that are scanned.
fn scaled_yaml(routes: usize, deny: usize) -> String {
    let mut y = String::from(
        "listen:\n  address: \"127.0.0.1:0\"\n  cert: server.crt\n  key: server.key\n\
         trust:\n  internal:\n    ca: ca.crt\nroutes:\n",
    );
    for i in 0..routes.saturating_sub(2) {
        if i % 7 == 6 {
            y.push_str(&format!("  - name: svc{i}\n    path: /svc{i}/status\n"));
        } else {
            y.push_str(&format!("  - name: svc{i}\n    path_prefix: /svc{i}\n"));
        }
        if i % 3 == 1 {
            y.push_str(&format!("    host: svc{i}.internal\n"));
        } else if i % 4 == 3 {
            y.push_str("    host: \"*.internal\"\n");
        }
        if i % 5 == 4 {
            y.push_str("    methods: [POST]\n");
        }
        y.push_str(&format!(
            "    upstream: app\n    allow:\n      - spiffe_id: \"spiffe://dev.local/ns/svc{i}/*\"\n"
        ));
    }
    y.push_str(
        "  - name: last\n    path_prefix: /last\n    upstream: app\n    allow:\n      \
         - trust: internal\n        spiffe_id: \"spiffe://dev.local/ns/default/sa/alice\"\n\
         \x20 - name: catch-all\n    host: admin.internal\n    upstream: app\n    allow:\n      \
         - cn: root\n",
    );
    y.push_str("deny:\n");
    for i in 0..deny.saturating_sub(3) {
        y.push_str(&format!("  - fingerprint: \"{i:064x}\"\n"));
    }
    for ns in ["quarantine", "leaked", "retired"] {
        y.push_str(&format!(
            "  - spiffe_id: \"spiffe://dev.local/ns/{ns}/*\"\n"
        ));
    }
    y.push_str(
        "upstreams:\n  app:\n    url: http://127.0.0.1:9000\n\
         admin:\n  address: \"127.0.0.1:0\"\nreload:\n  watch: false\n",
    );
    y
}

fn scaled_config(dir: &Path, routes: usize, deny: usize) -> Config {
    let path = dir.join(format!("scaled-{routes}-{deny}.yaml"));
    let yaml = scaled_yaml(routes, deny);
    std::fs::write(&path, &yaml).expect("write config");
    match Config::from_yaml(&yaml, &path) {
        Ok(config) => config,
        Err(errors) => panic!("scaled benchmark config is invalid:\n{errors}"),
    }
}

fn bench_scaling(c: &mut Criterion, pairs: &mut Pairs, dir: &Path, alice: &Identity) {
    let get = Method::GET;
    // (case, host, path, expected decision)
    let cases: [(&str, Option<&str>, &str, &str); 3] = [
        (
            "last_route",
            Some("api.internal"),
            "/last/orders/42",
            "allowed last",
        ),
        (
            "host_route",
            Some("svc1.internal"),
            "/svc1/orders/42",
            "not_allowed svc1",
        ),
        (
            "no_route",
            Some("api.internal"),
            "/nothing/here/at/all",
            "no_route",
        ),
    ];
    let mut group = c.benchmark_group("scaling");
    for n in ROUTE_COUNTS {
        let config = scaled_config(dir, n, DENY_COUNTS[0]);
        assert_eq!(config.policy.routes.len(), n, "{n} routes");
        for (case, host, path, expect) in cases {
            let req = RequestFacts {
                method: &get,
                host,
                path,
            };
            let got = match authorize(&config.policy, alice, &req) {
                Decision::Allowed(permit) => format!("allowed {}", permit.route().name),
                Decision::NotAllowed { route, .. } => format!("not_allowed {}", route.name),
                Decision::NoRoute => "no_route".to_owned(),
            };
            assert_eq!(got, expect, "authorize {case} with {n} routes");
            let policy = &config.policy;
            group.bench_function(BenchmarkId::new(format!("authorize_{case}"), n), |b| {
                b.iter(|| {
                    matches!(
                        authorize(black_box(policy), black_box(alice), black_box(&req)),
                        Decision::Allowed(_)
                    )
                })
            });
            if n != ROUTE_COUNTS[0] {
                pairs.add(
                    "scaling",
                    &format!("{case} {n} routes"),
                    format!("authorize_{case}/{n}"),
                    format!("authorize_{case}/{}", ROUTE_COUNTS[0]),
                );
            }
        }
    }
    for n in DENY_COUNTS {
        let config = scaled_config(dir, ROUTE_COUNTS[0], n);
        assert_eq!(config.deny.entries().len(), n, "{n} deny entries");
        assert!(config.deny.find(alice).is_none(), "alice is not denied");
        let deny = &config.deny;
        group.bench_function(BenchmarkId::new("deny_find", n), |b| {
            b.iter(|| black_box(deny).find(black_box(alice)).is_some())
        });
        if n != DENY_COUNTS[0] {
            pairs.add(
                "scaling",
                &format!("deny {n} entries"),
                format!("deny_find/{n}"),
                format!("deny_find/{}", DENY_COUNTS[0]),
            );
        }
    }
    group.finish();
}

/// Rounds of [`paired_ratio`]; odd, for a median.
const PAIRED_ROUNDS: usize = 201;
/// Calls per side and round of [`paired_ratio`].
const PAIRED_CALLS: u32 = 2_000;

/// `subject` time / `baseline` time, measured in interleaved rounds (the order alternating from
/// round to round) and the median round taken: both sides see the same load at the same
/// moment, which separately measured medians on a busy shared machine do not.
fn paired_ratio(baseline: &dyn Fn() -> bool, subject: &dyn Fn() -> bool) -> f64 {
    let time = |f: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        for _ in 0..PAIRED_CALLS {
            black_box(f());
        }
        started.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
        .map(|round| {
            let (b, s) = if round % 2 == 0 {
                let b = time(baseline);
                (b, time(subject))
            } else {
                let s = time(subject);
                (time(baseline), s)
            };
            s / b.max(f64::MIN_POSITIVE)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[PAIRED_ROUNDS / 2]
}

/// The `shadow` cases again as [`paired_ratio`]s; only after a real `shadow` run (not in test
/// mode, not when a filter left the group out).
fn paired_shadow_ratios(
    plain: &Config,
    shadowed: &[(&str, Config)],
    out: &Path,
    since: SystemTime,
) {
    if median_ns(out, "shadow", "authorize/allowed_first", since).is_none() {
        return;
    }
    let alice = alice(Vec::new());
    let bob = bob();
    let get = Method::GET;
    println!();
    println!(
        "Paired ratios, shadow_allow / without ({PAIRED_ROUNDS} interleaved rounds of {PAIRED_CALLS} calls, median):"
    );
    for (case, id, path) in [
        ("allowed_first", &alice, "/api/svc00/orders/42"),
        ("allowed_middle", &alice, "/api/svc24/orders/42"),
        ("denied_middle", &bob, "/api/svc24/orders/42"),
    ] {
        let req = RequestFacts {
            method: &get,
            host: Some("api.internal"),
            path,
        };
        let run = |policy: &Policy| matches!(authorize(policy, id, &req), Decision::Allowed(_));
        for (kind, config) in shadowed {
            let ratio = paired_ratio(&|| run(black_box(&plain.policy)), &|| {
                run(black_box(&config.policy))
            });
            println!("shadow     {:<24} {ratio:>7.2}x", format!("{kind}/{case}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// headers

/// What a browser-ish or SDK client behind a gateway typically sends, including hop-by-hop
/// headers and client-supplied headers certguard must replace.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        h.append(name, HeaderValue::from_static(value));
    };
    add("host", "orders.internal:8443");
    add("user-agent", "billing-service/2.14.1 (rust; hyper/1.4)");
    add("accept", "application/json, text/plain;q=0.9, */*;q=0.8");
    add("accept-encoding", "gzip, deflate, br");
    add("accept-language", "en-US,en;q=0.9");
    add(
        "authorization",
        "Bearer eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
    );
    add("content-type", "application/json");
    add("content-length", "348");
    add("cookie", "session=4f1c2e9a7b; theme=dark; consent=1");
    add("x-request-id", "7c9e6679-7425-40de-944b-e07fc1f90ae7");
    add(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    add("connection", "keep-alive, x-debug-token");
    add("keep-alive", "timeout=5, max=1000");
    add("te", "trailers");
    add("x-debug-token", "abc123");
    add("x-forwarded-for", "203.0.113.7");
    add(
        "x-forwarded-client-cert",
        "Hash=deadbeef;Subject=\"CN=mallory\"",
    );
    h
}

fn bench_headers(c: &mut Criterion, pairs: &mut Pairs, config: &Config, alice: &Identity) {
    let headers = request_headers();
    let cert: &CertInfo = &alice.cert;
    let default_fields = config.forward.xfcc_fields.clone();
    assert_eq!(
        default_fields,
        [
            XfccField::Hash,
            XfccField::Subject,
            XfccField::Uri,
            XfccField::Dns
        ],
        "default xfcc_fields"
    );
    let all_fields = [
        XfccField::Hash,
        XfccField::Cert,
        XfccField::Chain,
        XfccField::Subject,
        XfccField::Uri,
        XfccField::Dns,
    ];
    assert!(
        xfcc_element(cert, &all_fields).contains("Chain=\""),
        "chain is in the XFCC element"
    );
    let forward = &config.forward;
    let peer: IpAddr = "10.1.2.3".parse().expect("peer IP");
    let host = headers.get(http::header::HOST).cloned();
    {
        let mut h = headers.clone();
        strip_hop_by_hop(&mut h);
        apply_forward(&mut h, forward, cert, peer, host.as_ref());
        assert!(!h.contains_key("x-debug-token") && !h.contains_key("keep-alive"));
        assert_ne!(
            h.get("x-forwarded-for").map(HeaderValue::as_bytes),
            Some(&b"203.0.113.7"[..])
        );
    }

    let mut group = c.benchmark_group("headers");
    group.bench_function("clone_header_map", |b| {
        b.iter(|| black_box(&headers).clone())
    });
    group.bench_function("xfcc_default_fields", |b| {
        b.iter(|| xfcc_element(black_box(cert), black_box(&default_fields)))
    });
    group.bench_function("xfcc_with_cert_and_chain", |b| {
        b.iter(|| xfcc_element(black_box(cert), black_box(&all_fields)))
    });
    // The map is cloned outside the measurement (iter_batched setup); only the strip is timed.
    group.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("strip_and_apply_forward", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h);
                apply_forward(&mut h, forward, cert, peer, host.as_ref());
                h
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    for subject in [
        "xfcc_default_fields",
        "xfcc_with_cert_and_chain",
        "strip_hop_by_hop",
        "strip_and_apply_forward",
    ] {
        pairs.add(
            "headers",
            subject,
            subject.to_owned(),
            "clone_header_map".to_owned(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ratios

/// Where criterion writes its estimates: `$CRITERION_HOME`, else `<target dir>/criterion`
/// (this executable lives in `<target dir>/<profile>/deps/`). Set explicitly so that the ratio
/// table reads exactly what this run wrote.
fn output_directory() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .nth(3)
                .map(|target| target.join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// One file criterion wrote for benchmark `group/id` in this run (not left from an earlier one,
/// as happens to the benchmarks a filtered run skips).
fn read_json(
    out: &Path,
    group: &str,
    id: &str,
    file: &str,
    since: SystemTime,
) -> Option<serde_json::Value> {
    let path = out.join(group).join(id).join("new").join(file);
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()
}

/// Median time per iteration in ns.
fn median_ns(out: &Path, group: &str, id: &str, since: SystemTime) -> Option<f64> {
    read_json(out, group, id, "estimates.json", since)?["median"]["point_estimate"].as_f64()
}

fn print_ratios(out: &Path, pairs: &Pairs, since: SystemTime) {
    let mut rows = Vec::new();
    for p in &pairs.0 {
        let subject = median_ns(out, p.group, &p.subject, since);
        let baseline = median_ns(out, p.group, &p.baseline, since);
        if let (Some(s), Some(b)) = (subject, baseline) {
            let function = |id: &str| id.split('/').next().unwrap_or_default().to_owned();
            rows.push(format!(
                "{:<10} {:<24} {:>11.1} {:>11.1} {:>7.2}x  {} / {}",
                p.group,
                p.case,
                s,
                b,
                s / b,
                function(&p.subject),
                function(&p.baseline),
            ));
        }
    }
    if rows.is_empty() {
        return; // test mode, --list, or everything filtered out
    }
    println!();
    println!("Ratios against the baseline measured in this run (median ns per iteration):");
    println!(
        "{:<10} {:<24} {:>11} {:>11} {:>8}  subject / baseline",
        "group", "case", "subject ns", "baseline ns", "ratio"
    );
    for r in rows {
        println!("{r}");
    }
}

fn main() {
    let started = SystemTime::now() - Duration::from_secs(1);
    let out = output_directory();
    // Short runs: the machine is shared, and ratios need both sides, not long absolute runs.
    // Command-line options (e.g. `-- --measurement-time 5`) still override these.
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .nresamples(20_000)
        .configure_from_args();

    let pki = make_pki();
    let config = load_config(pki.dir.path());
    let shadowed = [
        (
            "tightened",
            load_config_with(pki.dir.path(), Shadow::Tightened),
        ),
        (
            "disjoint",
            load_config_with(pki.dir.path(), Shadow::Disjoint),
        ),
    ];
    let alice = alice(pki.client_chain.clone());

    let mut pairs = Pairs::default();
    bench_normalize(&mut c, &mut pairs);
    bench_authorize(&mut c, &mut pairs, &config, &alice);
    bench_scaling(&mut c, &mut pairs, pki.dir.path(), &alice);
    bench_headers(&mut c, &mut pairs, &config, &alice);
    bench_shadow(&mut c, &mut pairs, &config, &shadowed);
    c.final_summary();
    print_ratios(&out, &pairs, started);
    paired_shadow_ratios(&config, &shadowed, &out, started);
}
