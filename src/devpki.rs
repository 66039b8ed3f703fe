//! The development PKI of SPEC section 7, generated with rcgen: used by `certguard dev-certs`,
//! `certguard demo` and the test suite.

use std::path::{Path, PathBuf};

/// File name and PEM contents of every file in the development PKI.
pub struct DevPki {
    pub files: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
}

/// Generate the whole PKI in memory.
pub fn generate() -> Result<DevPki, DevPkiError> {
    todo!("tls helper")
}

/// Generate and write into `dir` (created if missing); refuses to overwrite unless `force`.
pub fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, DevPkiError> {
    let _ = (dir, force);
    todo!("tls helper")
}
