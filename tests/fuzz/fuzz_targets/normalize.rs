//! The path normalizer on any request target the `Uri` parser accepts: never panics, and what
//! it accepts is canonical (starts with `/`, no empty, `.` or `..` segment) and a fixed point.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::OPTIONS,
        2 => Method::CONNECT,
        _ => Method::POST,
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let Ok(t) = certguard::request::normalize::normalize(&method, &uri) else {
        return;
    };
    if t.path == "*" {
        return;
    }
    assert!(t.path.starts_with('/'), "{:?}", t.path);
    let inner = t.path.strip_suffix('/').unwrap_or(&t.path);
    assert!(
        inner
            .split('/')
            .skip(1)
            .all(|s| !s.is_empty() && s != "." && s != ".."),
        "{:?} -> {:?}",
        String::from_utf8_lossy(target),
        t.path
    );
    let again: Uri = t.path.parse().expect("a normalized path parses as a Uri");
    let again = certguard::request::normalize::normalize(&Method::GET, &again)
        .expect("a normalized path normalizes");
    assert_eq!(again.path, t.path, "not idempotent");
});
