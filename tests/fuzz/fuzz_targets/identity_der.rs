//! Identity extraction from arbitrary DER (what a client's certificate would be after a
//! verifier that let it through): `CertInfo::from_chain` must never panic, and the XFCC
//! element built from whatever it extracts must always be a valid header value.
#![no_main]

use certguard::config::XfccField;
use certguard::identity::CertInfo;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

const ALL: &[XfccField] = &[
    XfccField::Hash,
    XfccField::Cert,
    XfccField::Chain,
    XfccField::Subject,
    XfccField::Uri,
    XfccField::Dns,
];

fuzz_target!(|data: &[u8]| {
    let chain = [CertificateDer::from(data)];
    let Ok(cert) = CertInfo::from_chain(&chain) else {
        return;
    };
    let element = certguard::headers::xfcc_element(&cert, ALL);
    assert!(
        http::HeaderValue::from_str(&element).is_ok(),
        "XFCC element is not a header value: {element:?}"
    );
});
