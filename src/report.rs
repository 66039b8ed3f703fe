//! Human-readable reports for `certguard check` and `certguard explain`. `explain` uses the
//! same verifier and `authorize` as the running proxy, so both reach the same decision.

use std::path::Path;

use crate::config::Config;

/// The result of `explain`.
pub struct Explanation {
    pub text: String,
    pub allowed: bool,
}

/// The `check` summary (pending: filled in after the feature branches merge).
pub fn check(config: &Config) -> Result<String, String> {
    let _ = config;
    Ok(String::new())
}

/// The `explain` report (pending).
pub fn explain(config: &Config, cert: &Path, method: &str, host: Option<&str>, target: &str) -> Result<Explanation, String> {
    let _ = (config, cert, method, host, target);
    Err("not implemented".into())
}
