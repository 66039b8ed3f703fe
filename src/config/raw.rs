//! Raw serde structs mirroring the YAML file (`deny_unknown_fields`); no validation here.
