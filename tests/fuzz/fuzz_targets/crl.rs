//! CRL loading: `config::pki::parse_crls` on arbitrary bytes (PEM or DER), as a CRL file
//! named in `trust.<name>.crl` would be read at start and on every reload. Must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(crls) = certguard::config::pki::parse_crls(Path::new("fuzz.crl"), data) {
        assert!(!crls.is_empty());
    }
});
