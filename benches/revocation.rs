//! Benchmarks of revocation work (SPEC 9.2 to 9.4), each beside a baseline measured in the
//! same run so that results read as ratios on a shared machine:
//!
//! | group     | subject                                              | baseline                     |
//! |-----------|------------------------------------------------------|------------------------------|
//! | `deny`    | verifying a client with a 10,000-entry deny list     | the same without a deny list |
//! | `crl100k` | checking and swapping in a fetched 100,000-entry CRL | the same with a 10-entry CRL |
//!
//! The deny list is consulted when a certificate is verified (a handshake, or a re-check after
//! a reload), never per request: a request compares a generation. Its entries are indexed by
//! serial, fingerprint and SPKI, so the verification should cost the same with 10,000 entries
//! as with none. A fetched CRL is checked (parsed, signature, age) and a snapshot's verifier
//! built with it off the request path; the 100,000-entry case must stay well under a second.
//!
//! `cargo bench --bench revocation` runs both (about a minute once built).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use certguard::config::Config;
use certguard::devpki::{LeafSpec, TestCa, TestCert};
use certguard::revocation::crl::{self, Fetched};
use certguard::revocation::Revocation;
use certguard::tls::TrustVerifier;

struct Pki {
    root: TestCa,
    inter: TestCa,
    alice: TestCert,
    dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let root = TestCa::root("bench root").unwrap();
    let inter = root.intermediate("bench intermediate").unwrap();
    let alice = inter.issue(&LeafSpec::client("alice")).unwrap();
    let server = inter.issue(&LeafSpec::server("localhost")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &root.cert_pem).unwrap();
    std::fs::write(dir.path().join("inter.crt"), &inter.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.crt"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    Pki {
        root,
        inter,
        alice,
        dir,
    }
}

/// A config whose `internal` source trusts the bench root, with `deny` entries.
fn config(p: &Pki, deny: &str) -> Config {
    let yaml = format!(
        "listen: {{ cert: server.crt, key: server.key }}
trust:
  internal: {{ ca: ca.crt, intermediates: inter.crt }}
upstreams:
  app: {{ url: 'http://127.0.0.1:9' }}
routes:
  - {{ name: all, path_prefix: /, upstream: app, allow: [{{ authenticated: true }}] }}
{deny}"
    );
    Config::from_yaml(&yaml, &p.dir.path().join("c.yaml")).unwrap()
}

fn bench_deny(c: &mut Criterion, p: &Pki) {
    let mut deny = String::from("deny:\n");
    for i in 0..10_000u32 {
        deny.push_str(&format!("  - serial: \"ff{i:08x}\"\n"));
    }
    let none = config(p, "");
    let many = config(p, &deny);
    assert_eq!(many.deny.entries().len(), 10_000);
    let verifier = |config: &Config| {
        TrustVerifier::new(&config.trust)
            .unwrap()
            .with_deny(config.deny.clone())
    };
    let (plain, listed) = (verifier(&none), verifier(&many));
    let (leaf, rest) = (&p.alice.chain[0], &p.alice.chain[1..]);
    let verify = |v: &TrustVerifier| v.verify(leaf, rest, UnixTime::now()).is_ok();
    assert!(
        verify(&plain) && verify(&listed),
        "alice is admitted either way"
    );
    let mut group = c.benchmark_group("deny");
    group.bench_function("verify, no deny list", |b| {
        b.iter(|| black_box(verify(&plain)))
    });
    group.bench_function("verify, 10000 deny entries", |b| {
        b.iter(|| black_box(verify(&listed)))
    });
    group.finish();
}

/// A DER CRL by `ca` revoking `n` serials.
fn crl_with(ca: &TestCa, n: u32) -> Vec<u8> {
    let serials: Vec<[u8; 4]> = (1..=n).map(|i| i.to_be_bytes()).collect();
    let refs: Vec<&[u8]> = serials.iter().map(|s| s.as_slice()).collect();
    let now = OffsetDateTime::now_utc();
    ca.crl(
        &refs,
        now - time::Duration::minutes(1),
        now + time::Duration::days(1),
    )
    .unwrap()
    .as_ref()
    .to_vec()
}

fn bench_crl(c: &mut Criterion, p: &Pki) {
    let config = config(p, "");
    let issuers: Vec<CertificateDer<'static>> = vec![p.root.cert.clone(), p.inter.cert.clone()];
    let url = "http://pki.internal/inter.crl";
    let small = crl_with(&p.inter, 10);
    let big = crl_with(&p.inter, 100_000);
    // What a fetch task does with a new body: check it, store it, build the verifier of the
    // next snapshot with it.
    let swap_in = |body: &[u8]| {
        let (crl, signer) = crl::check(url, body, &issuers, None).unwrap();
        let revocation = Arc::new(Revocation::default());
        revocation.crls.put(
            "internal",
            Fetched {
                url: url.to_owned(),
                crl,
                etag: None,
                last_modified: None,
                checked_at: 0,
                signer,
            },
        );
        TrustVerifier::with_revocation(&config.trust, &revocation, Duration::from_secs(1)).unwrap()
    };
    let mut group = c.benchmark_group("crl100k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("check and swap in, 10 entries", |b| {
        b.iter(|| black_box(swap_in(&small)))
    });
    group.bench_function("check and swap in, 100000 entries", |b| {
        b.iter(|| black_box(swap_in(&big)))
    });
    group.finish();
    let started = std::time::Instant::now();
    let _ = swap_in(&big);
    println!(
        "crl100k: one check and swap-in of a {} KiB, 100000-entry CRL took {:?} (target: under 1 s)",
        big.len() / 1024,
        started.elapsed()
    );
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let p = pki();
    let mut c = Criterion::default().configure_from_args();
    bench_deny(&mut c, &p);
    bench_crl(&mut c, &p);
    c.final_summary();
}
