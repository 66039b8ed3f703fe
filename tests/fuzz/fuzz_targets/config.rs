//! Config parsing and validation: arbitrary YAML through `Config::from_yaml`, as if it were
//! `config/certguard.yaml` (so relative paths reach the committed development PKI in
//! `certs-dev/` and validation goes past the file reads). Must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/certguard.yaml"
    ));
    if let Err(errors) = certguard::config::Config::from_yaml(text, path) {
        // Every error renders (key paths, messages) without panicking.
        let _ = errors.to_string();
    }
    let _ = certguard::config::raw::admin_address(text);
});
