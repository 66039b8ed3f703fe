//! Header rewriting on the way upstream: hop-by-hop removal, inbound client-cert headers
//! removal, X-Forwarded-*, and the Envoy-compatible XFCC header (SPEC 4.1).

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{Forward, XfccField};
use crate::identity::CertInfo;

/// Remove hop-by-hop headers and every header named in `Connection`. Keeps `te: trailers`
/// (needed by gRPC over HTTP/2).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let _ = headers;
    todo!("proxy helper")
}

/// The XFCC element for one client certificate, keys in SPEC 4.1 order.
pub fn xfcc_element(cert: &CertInfo, fields: &[XfccField]) -> String {
    let _ = (cert, fields);
    todo!("proxy helper")
}

/// Apply the `forward` section to a request's headers: remove inbound
/// `x-forwarded-client-cert`/`client-cert`/`client-cert-chain`/`strip_headers` (keeping the
/// inbound XFCC value only for `append`), add XFCC per mode, and X-Forwarded-For/-Proto/-Host.
/// `host` is the Host as the client sent it (for X-Forwarded-Host).
pub fn apply_forward(
    headers: &mut HeaderMap,
    forward: &Forward,
    cert: &CertInfo,
    peer: IpAddr,
    host: Option<&http::HeaderValue>,
) {
    let _ = (headers, forward, cert, peer, host);
    todo!("proxy helper")
}

/// The `Upgrade` value when `Connection` contains `upgrade`.
pub fn is_upgrade_request(headers: &HeaderMap) -> Option<http::HeaderValue> {
    let _ = headers;
    todo!("proxy helper")
}
