//! Pin loading: a pinned `cert:` file (`config::pki::parse_cert_pem`, exactly what the
//! config loader reads for `pinned[].cert`) and the `sha256:` / `spki_sha256:` text forms
//! (`policy::pattern::fingerprint_bytes`, `spki_bytes`) on arbitrary input. Must never panic.
#![no_main]

use std::path::Path;

use certguard::policy::pattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = certguard::config::pki::parse_cert_pem(Path::new("pin.crt"), data) {
        assert!(!certs.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pattern::fingerprint_bytes(text);
        let _ = pattern::spki_bytes(text);
        let _ = pattern::parse_fingerprint(text);
        let _ = pattern::parse_spki(text);
        let _ = pattern::parse_serial(text);
    }
});
