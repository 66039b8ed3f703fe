//! Raw serde structs mirroring the YAML file (`deny_unknown_fields`); no validation here.
//!
//! The structs are the single description of which keys exist. Because serde stops at the first
//! error, [`parse`] does not deserialize the document in one go: it reads a `serde_yaml::Value`,
//! walks it section by section and key by key (the known keys of each section come from the
//! struct's own serde field list), and deserializes every value on its own, so that every
//! unknown key and every wrongly typed value is reported with its key path in one pass.
//! This is the only module that knows serde_yaml.
#![warn(missing_docs)]

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// One problem found while reading the document: key path (empty = whole file) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawError {
    /// Key path such as `routes[2].allow[0].spiffe_id`.
    pub key: String,
    /// What is wrong, for a human.
    pub message: String,
}

/// A scalar read as text: strings as they are, numbers in their decimal form. Used where YAML's
/// typing gets in the way (`min_tls_version: 1.2`, `serial: 1234`, durations such as `1`, which
/// then fail duration parsing with a helpful message instead of a type error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML mapping from names to sections, in file order (`trust:`, `upstreams:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedMap<T>(pub Vec<(String, T)>);

impl<T> Default for NamedMap<T> {
    fn default() -> Self {
        NamedMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NamedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = NamedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to sections")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedMap<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(NamedMap(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `listen:`
    pub listen: Option<RawListen>,
    /// `trust:` named trust sources.
    pub trust: Option<NamedMap<RawTrust>>,
    /// `routes:` in order.
    pub routes: Option<Vec<RawRoute>>,
    /// `deny:` in order.
    pub deny: Option<Vec<RawDeny>>,
    /// `upstreams:` named upstreams.
    pub upstreams: Option<NamedMap<RawUpstream>>,
    /// `forward:`
    pub forward: Option<RawForward>,
    /// `admin:`
    pub admin: Option<RawAdmin>,
    /// `reload:`
    pub reload: Option<RawReload>,
    /// `logging:`
    pub logging: Option<RawLogging>,
    /// `runtime:`
    pub runtime: Option<RawRuntime>,
}

/// `listen:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// `listen.address`
    pub address: Option<String>,
    /// `listen.cert`
    pub cert: Option<String>,
    /// `listen.key`
    pub key: Option<String>,
    /// `listen.alpn`
    pub alpn: Option<Vec<String>>,
    /// `listen.min_tls_version`
    pub min_tls_version: Option<Scalar>,
    /// `listen.handshake_timeout`
    pub handshake_timeout: Option<Scalar>,
    /// `listen.header_read_timeout`
    pub header_read_timeout: Option<Scalar>,
    /// `listen.idle_timeout`
    pub idle_timeout: Option<Scalar>,
    /// `listen.max_connections`
    pub max_connections: Option<u64>,
    /// `listen.max_header_bytes`
    pub max_header_bytes: Option<u64>,
    /// `listen.max_inflight_per_connection`
    pub max_inflight_per_connection: Option<u64>,
    /// `listen.max_inflight_per_identity`
    pub max_inflight_per_identity: Option<u64>,
    /// `listen.session_resumption`
    pub session_resumption: Option<bool>,
    /// `listen.require_sni_match`
    pub require_sni_match: Option<bool>,
}

/// One trust source: CA kind (`ca`, `crl`, `revocation`, `max_lifetime`) or pinned kind
/// (`pinned`, `check_validity`, `on_overdue_review`); which one is decided by the validator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    /// `trust.<name>.ca`
    pub ca: Option<String>,
    /// `trust.<name>.crl`
    pub crl: Option<Vec<String>>,
    /// `trust.<name>.intermediates`
    pub intermediates: Option<String>,
    /// `trust.<name>.crl_urls`
    pub crl_urls: Option<Vec<RawCrlUrl>>,
    /// `trust.<name>.crl_cache_dir`
    pub crl_cache_dir: Option<String>,
    /// `trust.<name>.crl_distribution_points`
    pub crl_distribution_points: Option<RawCrlDistributionPoints>,
    /// `trust.<name>.ocsp`
    pub ocsp: Option<RawOcsp>,
    /// `trust.<name>.revocation`
    pub revocation: Option<RawRevocation>,
    /// `trust.<name>.max_lifetime`
    pub max_lifetime: Option<Scalar>,
    /// `trust.<name>.pinned`
    pub pinned: Option<Vec<RawPinned>>,
    /// `trust.<name>.check_validity`
    pub check_validity: Option<bool>,
    /// `trust.<name>.on_overdue_review`
    pub on_overdue_review: Option<String>,
    /// `trust.<name>.spiffe_trust_domains`
    pub spiffe_trust_domains: Option<Vec<String>>,
}

/// One entry of `trust.X.crl_urls:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrlUrl {
    /// `trust.<name>.crl_urls[i].url`
    pub url: Option<String>,
    /// `trust.<name>.crl_urls[i].refresh`
    pub refresh: Option<Scalar>,
}

/// `trust.X.ocsp:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOcsp {
    /// `trust.<name>.ocsp.mode`
    pub mode: Option<String>,
    /// `trust.<name>.ocsp.responder`
    pub responder: Option<String>,
    /// `trust.<name>.ocsp.timeout`
    pub timeout: Option<Scalar>,
    /// `trust.<name>.ocsp.cache_max`
    pub cache_max: Option<Scalar>,
    /// `trust.<name>.ocsp.refresh`
    pub refresh: Option<Scalar>,
}

/// `trust.X.crl_distribution_points:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrlDistributionPoints {
    /// `trust.<name>.crl_distribution_points.allow`
    pub allow: Option<Vec<String>>,
}

/// `trust.X.revocation:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// `trust.<name>.revocation.depth`
    pub depth: Option<String>,
    /// `trust.<name>.revocation.unknown_status`
    pub unknown_status: Option<String>,
    /// `trust.<name>.revocation.expired_crl`
    pub expired_crl: Option<String>,
}

/// One entry of `trust.X.pinned:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPinned {
    /// `trust.<name>.pinned[i].name`
    pub name: Option<String>,
    /// `trust.<name>.pinned[i].cert`
    pub cert: Option<String>,
    /// `trust.<name>.pinned[i].sha256`
    pub sha256: Option<Scalar>,
    /// `trust.<name>.pinned[i].spki_sha256`
    pub spki_sha256: Option<String>,
    /// `trust.<name>.pinned[i].owner`
    pub owner: Option<String>,
    /// `trust.<name>.pinned[i].purpose`
    pub purpose: Option<String>,
    /// `trust.<name>.pinned[i].review_by`
    pub review_by: Option<String>,
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `routes[i].name`
    pub name: Option<String>,
    /// `routes[i].host`
    pub host: Option<String>,
    /// `routes[i].path`
    pub path: Option<String>,
    /// `routes[i].path_prefix`
    pub path_prefix: Option<String>,
    /// `routes[i].methods`
    pub methods: Option<Vec<String>>,
    /// `routes[i].upstream`
    pub upstream: Option<String>,
    /// `routes[i].allow`
    pub allow: Option<Vec<RawAllow>>,
    /// `routes[i].shadow_allow`
    pub shadow_allow: Option<Vec<RawAllow>>,
    /// `routes[i].enforce`
    pub enforce: Option<bool>,
}

/// One allow entry (SPEC 2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    /// `routes[i].allow[j].trust`
    pub trust: Option<Scalar>,
    /// `routes[i].allow[j].pinned`
    pub pinned: Option<Scalar>,
    /// `routes[i].allow[j].subject`
    pub subject: Option<Scalar>,
    /// `routes[i].allow[j].issuer`
    pub issuer: Option<Scalar>,
    /// `routes[i].allow[j].cn`
    pub cn: Option<Scalar>,
    /// `routes[i].allow[j].o`
    pub o: Option<Scalar>,
    /// `routes[i].allow[j].ou`
    pub ou: Option<Scalar>,
    /// `routes[i].allow[j].san_dns`
    pub san_dns: Option<Scalar>,
    /// `routes[i].allow[j].san_uri`
    pub san_uri: Option<Scalar>,
    /// `routes[i].allow[j].spiffe_id`
    pub spiffe_id: Option<Scalar>,
    /// `routes[i].allow[j].san_email`
    pub san_email: Option<Scalar>,
    /// `routes[i].allow[j].san_ip`
    pub san_ip: Option<Scalar>,
    /// `routes[i].allow[j].fingerprint`
    pub fingerprint: Option<Scalar>,
    /// `routes[i].allow[j].spki`
    pub spki: Option<Scalar>,
    /// `routes[i].allow[j].serial`
    pub serial: Option<Scalar>,
    /// `routes[i].allow[j].authenticated`
    pub authenticated: Option<bool>,
}

impl RawAllow {
    /// The string-valued keys that are set, as `(key, value)`, in the order of
    /// [`crate::policy::pattern::ALLOW_KEYS`] (`authenticated` is separate).
    pub fn string_keys(&self) -> Vec<(&'static str, &str)> {
        let all: [(&'static str, &Option<Scalar>); 15] = [
            ("trust", &self.trust),
            ("pinned", &self.pinned),
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("cn", &self.cn),
            ("o", &self.o),
            ("ou", &self.ou),
            ("san_dns", &self.san_dns),
            ("san_uri", &self.san_uri),
            ("spiffe_id", &self.spiffe_id),
            ("san_email", &self.san_email),
            ("san_ip", &self.san_ip),
            ("fingerprint", &self.fingerprint),
            ("spki", &self.spki),
            ("serial", &self.serial),
        ];
        all.into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|s| (k, s.0.as_str())))
            .collect()
    }
}

/// One `deny:` entry (SPEC 9.4): the allow-entry keys and a `reason`. (`authenticated` is
/// read only to be refused with a clear message.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RawDeny {
    /// `deny[i].<key>`: the identity keys.
    #[serde(flatten)]
    pub keys: RawAllow,
    /// `deny[i].reason`
    pub reason: Option<String>,
}

/// One upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `upstreams.<name>.url`
    pub url: Option<String>,
    /// `upstreams.<name>.connect_timeout`
    pub connect_timeout: Option<Scalar>,
    /// `upstreams.<name>.timeout`
    pub timeout: Option<Scalar>,
    /// `upstreams.<name>.max_idle_per_host`
    pub max_idle_per_host: Option<u64>,
    /// `upstreams.<name>.max_requests`
    pub max_requests: Option<u64>,
    /// `upstreams.<name>.ca` (`https://` only)
    pub ca: Option<String>,
    /// `upstreams.<name>.client_cert` (`https://` only)
    pub client_cert: Option<String>,
    /// `upstreams.<name>.client_key` (`https://` only)
    pub client_key: Option<String>,
}

/// `forward:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// `forward.xfcc`
    pub xfcc: Option<String>,
    /// `forward.xfcc_fields`
    pub xfcc_fields: Option<Vec<String>>,
    /// `forward.x_forwarded`
    pub x_forwarded: Option<bool>,
    /// `forward.strip_headers`
    pub strip_headers: Option<Vec<String>>,
    /// `forward.strip_identity_headers`
    pub strip_identity_headers: Option<bool>,
    /// `forward.client_cert_headers`
    pub client_cert_headers: Option<bool>,
}

/// `admin:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `admin.address`
    pub address: Option<String>,
}

/// `reload:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// `reload.watch`
    pub watch: Option<bool>,
    /// `reload.debounce`
    pub debounce: Option<Scalar>,
}

/// `logging:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// `logging.format`
    pub format: Option<String>,
    /// `logging.level`
    pub level: Option<String>,
    /// `logging.access_log`
    pub access_log: Option<bool>,
}

/// `runtime:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// `runtime.worker_threads`
    pub worker_threads: Option<Scalar>,
    /// `runtime.shutdown_grace`
    pub shutdown_grace: Option<Scalar>,
    /// `runtime.single_thread`
    pub single_thread: Option<bool>,
}

/// The result of reading a syntactically valid document: whatever could be read, plus every
/// unknown key and type error. Values that failed are `None` in `config` (list items that are
/// not mappings are `Default` placeholders with an error at exactly their path).
#[derive(Debug, Default)]
pub struct Parsed {
    /// What could be read.
    pub config: RawConfig,
    /// Unknown keys and type errors, in document order.
    pub errors: Vec<RawError>,
}

/// `admin.address` as written in a config text, if it is there as a string. For
/// `certguard health`, which must not need the certificates the rest of the file names.
pub fn admin_address(text: &str) -> Option<String> {
    let value: Value = serde_yaml::from_str(text).ok()?;
    value
        .get("admin")?
        .get("address")?
        .as_str()
        .map(str::to_owned)
}

/// Read `text`. `Err` only for a YAML syntax error, whose message says `line N column M`.
pub fn parse(text: &str) -> Result<Parsed, RawError> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        let full = e.to_string();
        let msg = full.split(" at line ").next().unwrap_or(&full).to_string();
        let message = match e.location() {
            Some(loc) => format!(
                "YAML syntax error at line {} column {}: {msg}",
                loc.line(),
                loc.column()
            ),
            None => format!("YAML syntax error: {msg}"),
        };
        RawError {
            key: String::new(),
            message,
        }
    })?;
    let mut w = Walker::default();
    let config = if value.is_null() {
        RawConfig::default()
    } else {
        w.section::<RawConfig>(&value, "").unwrap_or_default()
    };
    Ok(Parsed {
        config,
        errors: w.errors,
    })
}

/// The field names serde knows for struct `T` (its `deserialize_struct` field list), so the
/// walker and `deny_unknown_fields` can never disagree about which keys exist.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Capture<'a>(&'a Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let cell = Cell::new(&[][..]);
    let _ = T::deserialize(Capture(&cell));
    cell.get()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A struct section the walker can fill key by key.
trait Section: DeserializeOwned + Default {
    /// The keys the section takes: serde's field list, unless the section says otherwise.
    fn known() -> Vec<&'static str> {
        field_names::<Self>().to_vec()
    }

    fn fill(w: &mut Walker, m: &Mapping, path: &str) -> Self;
}

#[derive(Default)]
struct Walker {
    errors: Vec<RawError>,
}

impl Walker {
    fn err(&mut self, key: String, message: impl Into<String>) {
        self.errors.push(RawError {
            key,
            message: message.into(),
        });
    }

    /// Check `v` is a mapping whose keys all belong to `T`, then fill `T` from it.
    fn section<T: Section>(&mut self, v: &Value, path: &str) -> Option<T> {
        let Value::Mapping(m) = v else {
            self.err(
                path.to_string(),
                format!("expected a mapping, found {}", type_name(v)),
            );
            return None;
        };
        let known = T::known();
        for k in m.keys() {
            match k.as_str() {
                Some(s) if known.contains(&s) => {}
                Some(s) => self.err(join(path, s), "unknown key"),
                None => self.err(path.to_string(), "keys must be strings"),
            }
        }
        Some(T::fill(self, m, path))
    }

    /// A present, non-null value of `key`.
    fn get<'v>(m: &'v Mapping, key: &str) -> Option<&'v Value> {
        m.get(key).filter(|v| !v.is_null())
    }

    /// Deserialize one leaf value; a type error is reported at `path.key`.
    fn field<T: DeserializeOwned>(&mut self, m: &Mapping, path: &str, key: &str) -> Option<T> {
        let v = Self::get(m, key)?;
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(join(path, key), e.to_string());
                None
            }
        }
    }

    /// A list of scalars; each bad item is reported at `path.key[i]` and the list is dropped.
    fn scalar_list<T: DeserializeOwned>(
        &mut self,
        m: &Mapping,
        path: &str,
        key: &str,
    ) -> Option<Vec<T>> {
        let v = Self::get(m, key)?;
        let p = join(path, key);
        let Value::Sequence(items) = v else {
            self.err(p, format!("expected a list, found {}", type_name(v)));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match serde_yaml::from_value::<T>(item.clone()) {
                Ok(t) => out.push(t),
                Err(e) => {
                    self.err(format!("{p}[{i}]"), e.to_string());
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A nested section.
    fn child<T: Section>(&mut self, m: &Mapping, path: &str, key: &str) -> Option<T> {
        let v = Self::get(m, key)?;
        self.section(v, &join(path, key))
    }

    /// A list of sections; an item that is not a mapping becomes a `Default` placeholder with an
    /// error at exactly `path.key[i]`, so indices stay those of the file.
    fn section_list<T: Section>(&mut self, m: &Mapping, path: &str, key: &str) -> Option<Vec<T>> {
        let v = Self::get(m, key)?;
        let p = join(path, key);
        let Value::Sequence(items) = v else {
            self.err(p, format!("expected a list, found {}", type_name(v)));
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| self.section(item, &format!("{p}[{i}]")).unwrap_or_default())
                .collect(),
        )
    }

    /// A mapping of names to sections, in file order; bad items as in [`Self::section_list`].
    fn named<T: Section>(&mut self, m: &Mapping, path: &str, key: &str) -> Option<NamedMap<T>> {
        let v = Self::get(m, key)?;
        let p = join(path, key);
        let Value::Mapping(items) = v else {
            self.err(
                p,
                format!("expected a mapping of names, found {}", type_name(v)),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (k, item) in items {
            let Some(name) = k.as_str() else {
                self.err(p.clone(), "names must be strings");
                continue;
            };
            let t = self.section(item, &join(&p, name)).unwrap_or_default();
            out.push((name.to_string(), t));
        }
        Some(NamedMap(out))
    }
}

impl Section for RawConfig {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawConfig {
            listen: w.child(m, p, "listen"),
            trust: w.named(m, p, "trust"),
            routes: w.section_list(m, p, "routes"),
            deny: w.section_list(m, p, "deny"),
            upstreams: w.named(m, p, "upstreams"),
            forward: w.child(m, p, "forward"),
            admin: w.child(m, p, "admin"),
            reload: w.child(m, p, "reload"),
            logging: w.child(m, p, "logging"),
            runtime: w.child(m, p, "runtime"),
        }
    }
}

impl Section for RawListen {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawListen {
            address: w.field(m, p, "address"),
            cert: w.field(m, p, "cert"),
            key: w.field(m, p, "key"),
            alpn: w.scalar_list(m, p, "alpn"),
            min_tls_version: w.field(m, p, "min_tls_version"),
            handshake_timeout: w.field(m, p, "handshake_timeout"),
            header_read_timeout: w.field(m, p, "header_read_timeout"),
            idle_timeout: w.field(m, p, "idle_timeout"),
            max_connections: w.field(m, p, "max_connections"),
            max_header_bytes: w.field(m, p, "max_header_bytes"),
            max_inflight_per_connection: w.field(m, p, "max_inflight_per_connection"),
            max_inflight_per_identity: w.field(m, p, "max_inflight_per_identity"),
            session_resumption: w.field(m, p, "session_resumption"),
            require_sni_match: w.field(m, p, "require_sni_match"),
        }
    }
}

impl Section for RawTrust {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawTrust {
            ca: w.field(m, p, "ca"),
            crl: w.scalar_list(m, p, "crl"),
            intermediates: w.field(m, p, "intermediates"),
            crl_urls: w.section_list(m, p, "crl_urls"),
            crl_cache_dir: w.field(m, p, "crl_cache_dir"),
            crl_distribution_points: w.child(m, p, "crl_distribution_points"),
            ocsp: w.child(m, p, "ocsp"),
            revocation: w.child(m, p, "revocation"),
            max_lifetime: w.field(m, p, "max_lifetime"),
            pinned: w.section_list(m, p, "pinned"),
            check_validity: w.field(m, p, "check_validity"),
            on_overdue_review: w.field(m, p, "on_overdue_review"),
            spiffe_trust_domains: w.scalar_list(m, p, "spiffe_trust_domains"),
        }
    }
}

impl Section for RawRevocation {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawRevocation {
            depth: w.field(m, p, "depth"),
            unknown_status: w.field(m, p, "unknown_status"),
            expired_crl: w.field(m, p, "expired_crl"),
        }
    }
}

impl Section for RawCrlUrl {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawCrlUrl {
            url: w.field(m, p, "url"),
            refresh: w.field(m, p, "refresh"),
        }
    }
}

impl Section for RawOcsp {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawOcsp {
            mode: w.field(m, p, "mode"),
            responder: w.field(m, p, "responder"),
            timeout: w.field(m, p, "timeout"),
            cache_max: w.field(m, p, "cache_max"),
            refresh: w.field(m, p, "refresh"),
        }
    }
}

impl Section for RawCrlDistributionPoints {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawCrlDistributionPoints {
            allow: w.scalar_list(m, p, "allow"),
        }
    }
}

impl Section for RawPinned {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawPinned {
            name: w.field(m, p, "name"),
            cert: w.field(m, p, "cert"),
            sha256: w.field(m, p, "sha256"),
            spki_sha256: w.field(m, p, "spki_sha256"),
            owner: w.field(m, p, "owner"),
            purpose: w.field(m, p, "purpose"),
            review_by: w.field(m, p, "review_by"),
        }
    }
}

impl Section for RawRoute {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawRoute {
            name: w.field(m, p, "name"),
            host: w.field(m, p, "host"),
            path: w.field(m, p, "path"),
            path_prefix: w.field(m, p, "path_prefix"),
            methods: w.scalar_list(m, p, "methods"),
            upstream: w.field(m, p, "upstream"),
            allow: w.section_list(m, p, "allow"),
            shadow_allow: w.section_list(m, p, "shadow_allow"),
            enforce: w.field(m, p, "enforce"),
        }
    }
}

impl Section for RawAllow {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawAllow {
            trust: w.field(m, p, "trust"),
            pinned: w.field(m, p, "pinned"),
            subject: w.field(m, p, "subject"),
            issuer: w.field(m, p, "issuer"),
            cn: w.field(m, p, "cn"),
            o: w.field(m, p, "o"),
            ou: w.field(m, p, "ou"),
            san_dns: w.field(m, p, "san_dns"),
            san_uri: w.field(m, p, "san_uri"),
            spiffe_id: w.field(m, p, "spiffe_id"),
            san_email: w.field(m, p, "san_email"),
            san_ip: w.field(m, p, "san_ip"),
            fingerprint: w.field(m, p, "fingerprint"),
            spki: w.field(m, p, "spki"),
            serial: w.field(m, p, "serial"),
            authenticated: w.field(m, p, "authenticated"),
        }
    }
}

impl Section for RawDeny {
    fn known() -> Vec<&'static str> {
        let mut keys = field_names::<RawAllow>().to_vec();
        keys.push("reason");
        keys
    }

    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawDeny {
            keys: RawAllow::fill(w, m, p),
            reason: w.field(m, p, "reason"),
        }
    }
}

impl Section for RawUpstream {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawUpstream {
            url: w.field(m, p, "url"),
            connect_timeout: w.field(m, p, "connect_timeout"),
            timeout: w.field(m, p, "timeout"),
            max_idle_per_host: w.field(m, p, "max_idle_per_host"),
            max_requests: w.field(m, p, "max_requests"),
            ca: w.field(m, p, "ca"),
            client_cert: w.field(m, p, "client_cert"),
            client_key: w.field(m, p, "client_key"),
        }
    }
}

impl Section for RawForward {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawForward {
            xfcc: w.field(m, p, "xfcc"),
            xfcc_fields: w.scalar_list(m, p, "xfcc_fields"),
            x_forwarded: w.field(m, p, "x_forwarded"),
            strip_headers: w.scalar_list(m, p, "strip_headers"),
            strip_identity_headers: w.field(m, p, "strip_identity_headers"),
            client_cert_headers: w.field(m, p, "client_cert_headers"),
        }
    }
}

impl Section for RawAdmin {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawAdmin {
            address: w.field(m, p, "address"),
        }
    }
}

impl Section for RawReload {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawReload {
            watch: w.field(m, p, "watch"),
            debounce: w.field(m, p, "debounce"),
        }
    }
}

impl Section for RawLogging {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawLogging {
            format: w.field(m, p, "format"),
            level: w.field(m, p, "level"),
            access_log: w.field(m, p, "access_log"),
        }
    }
}

impl Section for RawRuntime {
    fn fill(w: &mut Walker, m: &Mapping, p: &str) -> Self {
        RawRuntime {
            worker_threads: w.field(m, p, "worker_threads"),
            shutdown_grace: w.field(m, p, "shutdown_grace"),
            single_thread: w.field(m, p, "single_thread"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from SPEC section 2 (pins shortened to valid placeholders).
    pub(crate) const SPEC_EXAMPLE: &str = r#"
listen:
  address: "0.0.0.0:8443"
  cert: certs-dev/server.crt
  key: certs-dev/server.key
  alpn: [h2, http/1.1]
  min_tls_version: "1.2"
  handshake_timeout: 10s
  header_read_timeout: 10s
  idle_timeout: 60s
  max_connections: 10000
  max_header_bytes: 65536
  session_resumption: false
  require_sni_match: true
trust:
  internal:
    ca: certs-dev/ca.crt
    crl: [certs-dev/intermediate.crl, certs-dev/ca.crl]
    revocation:
      depth: chain
      unknown_status: deny
      expired_crl: deny
    max_lifetime: 90d
  lab:
    pinned:
      - name: ci-runner
        cert: certs-dev/ci-runner.crt
        owner: platform-team
        purpose: deploy pipeline
        review_by: 2027-06-01
      - name: legacy-batch
        sha256: "3f:a2"
      - name: rotating-agent
        spki_sha256: "base64..."
    check_validity: true
    on_overdue_review: warn
routes:
  - name: orders-read
    host: orders.internal
    path_prefix: /orders
    methods: [GET, HEAD]
    upstream: orders
    allow:
      - trust: internal
        spiffe_id: "spiffe://example.org/ns/prod/sa/billing"
      - cn: billing-client
        ou: payments
      - san_dns: "*.billing.svc.cluster.local"
      - pinned: ci-runner
  - name: status
    path: /status
    upstream: orders
    allow:
      - authenticated: true
upstreams:
  orders:
    url: http://127.0.0.1:9000
    connect_timeout: 2s
    timeout: 30s
    max_idle_per_host: 64
forward:
  xfcc: sanitize_set
  xfcc_fields: [hash, subject, uri, dns]
  x_forwarded: true
  strip_headers: []
admin:
  address: "127.0.0.1:9901"
reload:
  watch: true
  debounce: 1s
logging:
  format: json
  level: info
  access_log: true
runtime:
  worker_threads: auto
  shutdown_grace: 30s
"#;

    #[test]
    fn walker_agrees_with_serde() {
        let parsed = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(parsed.errors, vec![]);
        let direct: RawConfig = serde_yaml::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(parsed.config, direct);
        let trust = parsed.config.trust.unwrap();
        assert_eq!(trust.0[0].0, "internal");
        assert_eq!(trust.0[1].0, "lab");
        assert_eq!(
            parsed.config.listen.unwrap().min_tls_version,
            Some(Scalar("1.2".into()))
        );
    }

    #[test]
    fn field_lists_come_from_serde() {
        assert_eq!(field_names::<RawAdmin>(), &["address"]);
        assert_eq!(field_names::<RawListen>().len(), 14);
        assert_eq!(
            field_names::<RawAllow>(),
            crate::policy::pattern::ALLOW_KEYS
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
listen:
  adress: x
  max_connections: lots
trust:
  internal:
    ca: ca.crt
    crl: [a.crl, 5, [x]]
    revocation: { depht: chain }
routes:
  - name: r
    allow:
      - cn: x
        colour: red
  - just a string
bogus: 1
"#;
        let parsed = parse(text).unwrap();
        let keys: Vec<&str> = parsed.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "bogus",
                "listen.adress",
                "listen.max_connections",
                "trust.internal.crl[1]",
                "trust.internal.crl[2]",
                "trust.internal.revocation.depht",
                "routes[0].allow[0].colour",
                "routes[1]",
            ]
        );
        assert_eq!(parsed.errors[0].message, "unknown key");
        // Everything that was valid is still there.
        let routes = parsed.config.routes.unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0].allow.as_ref().unwrap()[0].cn,
            Some(Scalar("x".into()))
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("listen:\n  address: [unclosed\nroutes: x\n").unwrap_err();
        assert_eq!(err.key, "");
        assert!(
            err.message
                .starts_with("YAML syntax error at line 3 column "),
            "{}",
            err.message
        );
        let err = parse("a: 1\n  b: 2\n").unwrap_err();
        assert!(err.message.contains("at line 2 column"), "{}", err.message);
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate entry"), "{}", err.message);
    }

    #[test]
    fn scalars_accept_numbers() {
        let parsed = parse("listen:\n  min_tls_version: 1.3\n  idle_timeout: 5\n").unwrap();
        let l = parsed.config.listen.unwrap();
        assert_eq!(l.min_tls_version, Some(Scalar("1.3".into())));
        assert_eq!(l.idle_timeout, Some(Scalar("5".into())));
    }
}
