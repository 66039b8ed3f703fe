//! Pinned trust sources: our own verifier over SHA-256 certificate or SPKI pins.
