//! The `_method` field of a form body, or key of a JSON body, found while the body streams
//! upstream.
//!
//! Rack's `MethodOverride` (every Rails app), Laravel and Symfony run a POST as the method
//! named by a `_method` field of its form body (Laravel also by a `_method` key of its JSON
//! body): a POST that policy allowed would run upstream as a DELETE policy never judged.
//! [`form_kinds`] says how the frameworks would read such a field from a request's body (a
//! POST whose media type is a form, multipart, or absent, the way Rack decides, or JSON the way
//! Laravel decides), and [`MethodFieldScan`] reads the body as it passes, every way at once,
//! with bounded memory, and reports a `_method` that names another method.
//!
//! The scan never lets the upstream see a complete body before it has judged the field: the
//! bytes of a `_method` value are held back until the value ends ([`MethodFieldScan::safe`]),
//! so that refusing can still cut the body short. The frameworks read the whole body before
//! they act on it, and a cut body is an error to them.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method};

use super::normalize::{form_decode, is_method_parameter, BadTarget};

/// Longest `_method` value (raw bytes, escapes included) judged; a longer one names no method
/// and is refused without reading further.
const MAX_VALUE: usize = 256;
/// Longest form key, or multipart header line, kept for judging; the rest is skipped (a key
/// that reads as `_method` does so within its first bytes).
const MAX_KEY: usize = 1024;

/// How a framework would parse the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormKind {
    /// `application/x-www-form-urlencoded`, or a POST without a usable media type.
    UrlEncoded,
    /// `multipart/*` with this boundary.
    Multipart(Vec<u8>),
    /// JSON: Laravel runs a POST as the method named by the `_method` key of a JSON object
    /// body (its request bag is the JSON body when the `Content-Type` contains `/json` or
    /// `+json`).
    Json,
    /// `multipart/*` with a boundary longer than [`MAX_BOUNDARY`]: frameworks parse it, the
    /// scan will not follow it, so such a body is refused.
    Unreadable,
}

/// Longest multipart boundary followed (RFC 2046 allows 70 bytes).
const MAX_BOUNDARY: usize = 1024;

/// How the frameworks would read a `_method` from this request's body (none, one, or several
/// ways when the `Content-Type` reads differently to different frameworks: each is scanned):
/// only for a POST (the only method the frameworks override), whose media type (of any
/// `Content-Type` field: frameworks disagree about duplicates) is a form, `multipart/*`, or
/// none (Rack parses a POST without a media type as a form), or which Laravel takes for JSON.
pub fn form_kinds(method: &Method, headers: &HeaderMap) -> Vec<FormKind> {
    let mut kinds = Vec::new();
    if method != Method::POST {
        return kinds;
    }
    let mut add = |k: FormKind| {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    };
    let mut any = false;
    for value in headers.get_all(CONTENT_TYPE) {
        any = true;
        let value = value.as_bytes();
        // The media type: Rack cuts at the first `;` or `,`, PHP also at white space.
        let media = value.trim_ascii_start();
        let media = media
            .split(|&b| b == b';' || b == b',' || b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        if media.len() >= 10 && media[..10].eq_ignore_ascii_case(b"multipart/") {
            let found = boundaries(value);
            if found.is_empty() || !rack_finds_boundary(value) {
                // Rack parses a multipart body it cannot split as a urlencoded one (PHP may
                // still find a boundary Rack does not).
                add(FormKind::UrlEncoded);
            }
            for b in found {
                add(if b.len() > MAX_BOUNDARY {
                    FormKind::Unreadable
                } else {
                    FormKind::Multipart(b)
                });
            }
        } else if media.is_empty()
            || media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        {
            add(FormKind::UrlEncoded);
        }
        // Laravel's `isJson()`: the whole field contains `/json` or `+json`.
        let lower = value.to_ascii_lowercase();
        if lower.windows(5).any(|w| w == b"/json" || w == b"+json") {
            add(FormKind::Json);
        }
    }
    if !any {
        add(FormKind::UrlEncoded);
    }
    kinds
}

/// Refuse a form body the scan cannot read: one with a `Content-Encoding` other than
/// `identity` (Express's body parsers inflate gzip and deflate before method-override reads
/// `req.body._method`). JSON is not refused this way (compressed JSON is common: OTLP
/// exporters), see the README.
pub fn check_encoding(kinds: &[FormKind], headers: &HeaderMap) -> Result<(), BadTarget> {
    // Servers join repeated fields (`a, b`), which can read as a multipart type with the other
    // field's boundary: a POST that may carry a form has one Content-Type or none.
    if !kinds.is_empty() && headers.get_all(CONTENT_TYPE).iter().count() > 1 {
        return Err(BadTarget::DuplicateContentType);
    }
    let form = kinds.iter().any(|k| !matches!(k, FormKind::Json));
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if form && encoded {
        return Err(BadTarget::EncodedForm);
    }
    Ok(())
}

/// Whether Rack's boundary pattern (`boundary`, optional white space, `=`, an optional quote,
/// then a byte other than `"`, `;` and `,`) matches the `Content-Type`.
fn rack_finds_boundary(content_type: &[u8]) -> bool {
    let lower = content_type.to_ascii_lowercase();
    lower
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == b"boundary")
        .any(|(i, _)| {
            let rest = &lower[i + 8..];
            let rest = &rest[rest
                .iter()
                .position(|&b| !b.is_ascii_whitespace())
                .unwrap_or(rest.len())..];
            let Some(rest) = rest.strip_prefix(b"=") else {
                return false;
            };
            let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
            rest.first()
                .is_some_and(|&b| !matches!(b, b'"' | b';' | b','))
        })
}

/// The multipart boundaries the frameworks would take from a `Content-Type`, each way:
/// PHP (the first `boundary`, case-sensitive if there is one, then the next `=`), Rack (the
/// last `boundary=`, any case) and a parameter parser (the first `boundary=`, any case); a
/// quoted value ends at its closing quote, another at `;`, `,` (or white space).
fn boundaries(content_type: &[u8]) -> Vec<Vec<u8>> {
    let lower = content_type.to_ascii_lowercase();
    let find_all = |hay: &[u8], needle: &[u8]| -> Vec<usize> {
        hay.windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect()
    };
    let mut starts = Vec::new();
    // PHP: "boundary" (case-sensitive first, else any case), then the next '='.
    let php = find_all(content_type, b"boundary")
        .first()
        .copied()
        .or_else(|| find_all(&lower, b"boundary").first().copied());
    if let Some(at) = php {
        if let Some(eq) = content_type[at..].iter().position(|&b| b == b'=') {
            starts.push(at + eq + 1);
        }
    }
    // Rack (greedy: the last) and a parameter parser (the first).
    let params = find_all(&lower, b"boundary=");
    for at in [params.first(), params.last()].into_iter().flatten() {
        starts.push(at + 9);
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for start in starts {
        let rest = &content_type[start..];
        let mut candidates = Vec::new();
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let end = quoted
                .iter()
                .position(|&b| b == b'"')
                .unwrap_or(quoted.len());
            candidates.push(&quoted[..end]);
            // Rack stops a quoted boundary at `;` or `,` too.
            let end = quoted
                .iter()
                .position(|&b| matches!(b, b'"' | b';' | b','))
                .unwrap_or(quoted.len());
            candidates.push(&quoted[..end]);
        } else {
            let end = rest
                .iter()
                .position(|&b| matches!(b, b';' | b','))
                .unwrap_or(rest.len());
            candidates.push(&rest[..end]);
            candidates.push(rest[..end].trim_ascii());
            // Rack: `"?([^";,]+)`, so an unquoted value also ends at a quote.
            let end = rest
                .iter()
                .position(|&b| matches!(b, b';' | b',' | b'"'))
                .unwrap_or(rest.len());
            candidates.push(&rest[..end]);
        }
        for c in candidates {
            if !c.is_empty() && !out.iter().any(|o| o == c) {
                out.push(c.to_vec());
            }
        }
    }
    out
}

/// A `_method` field naming another method was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a _method field in the form body names another method")]
pub struct MethodInForm;

/// Reads a form body as it passes; see the module documentation.
pub struct MethodFieldScan {
    method: Method,
    /// Bytes fed so far.
    fed: u64,
    /// One per way the frameworks would read the body.
    parsers: Vec<Parser>,
}

struct Parser {
    /// Where the held-back `_method` value starts (an offset into the body), while one is
    /// being read.
    hold_from: Option<u64>,
    state: State,
}

enum State {
    Url(UrlState),
    Multipart(Box<MultipartState>),
    Json(Box<JsonState>),
    /// A body the scan cannot follow: refused at its first byte.
    Refuse,
}

/// A streaming reader of a JSON body that looks only at the keys of the top-level object.
#[derive(Default)]
struct JsonState {
    /// The first byte that is not white space was read: `object` says whether it was `{`.
    started: bool,
    object: bool,
    /// Nesting of objects and arrays (1 = inside the top-level object).
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The current depth-1 string is a key (else a value).
    string_is_key: bool,
    /// The current depth-1 string so far (the first [`MAX_KEY`] bytes of a key, all of a
    /// `_method` value up to [`MAX_VALUE`]).
    string: Vec<u8>,
    /// The last depth-1 key was `_method`, and its value has not started.
    awaiting_value: bool,
    /// Inside the string value of a `_method` key.
    in_method_value: bool,
    /// White space held back between a `_method` key's `:` and its value.
    held_space: usize,
}

enum UrlState {
    /// Reading a key (the first [`MAX_KEY`] bytes are kept).
    Key(Vec<u8>),
    /// Skipping a value that does not matter.
    Skip,
    /// Reading the value of a `_method` key.
    Method(Vec<u8>),
}

struct MultipartState {
    /// `--boundary`, wherever it appears: Rack ends a part at `--boundary` followed by a line
    /// end anywhere in a line, PHP at a line that starts with it. Taking every occurrence as
    /// a delimiter can only end a part early, and a boundary is chosen never to occur in
    /// content.
    delimiter: Matcher,
    part: Part,
}

/// A streaming matcher (Knuth-Morris-Pratt) of one pattern.
struct Matcher {
    pattern: Vec<u8>,
    fail: Vec<usize>,
    matched: usize,
}

/// Longest part header block followed; a longer one is refused (no framework needs it).
const MAX_PART_HEADERS: usize = 8 * 1024;
/// A header line this long may be split by PHP's 5120-byte line buffer, which then sees an
/// end of the headers inside it: such a line in a `_method` part is refused.
const PHP_LINE: usize = 5000;

enum Part {
    /// Before the first delimiter, or in a part that does not matter: looking for the next.
    Content,
    /// Just after a delimiter: the rest of its line (its first two bytes kept).
    AfterDelimiter(Vec<u8>),
    /// A part from its first header byte, held back until its header block has been read to
    /// Rack's end (the first CRLF CRLF): neither Rack nor PHP ends a header block at a
    /// delimiter, and PHP may end it earlier (an empty line, a line that starts with NUL).
    Headers(Vec<u8>),
    /// A part whose header block names `_method`: all of it held (header block, then value)
    /// until the next delimiter, then every value a framework could read is judged.
    Method(Vec<u8>),
}

impl MethodFieldScan {
    /// A scan of a body read in each of `kinds` for the request `method` (a field naming it
    /// passes).
    pub fn new(kinds: Vec<FormKind>, method: Method) -> Self {
        let parsers = kinds
            .into_iter()
            .map(|kind| {
                let state = match kind {
                    FormKind::UrlEncoded => State::Url(UrlState::Key(Vec::new())),
                    FormKind::Multipart(boundary) => {
                        let mut delimiter = b"--".to_vec();
                        delimiter.extend_from_slice(&boundary);
                        State::Multipart(Box::new(MultipartState {
                            delimiter: Matcher::new(delimiter),
                            part: Part::Content,
                        }))
                    }
                    FormKind::Json => State::Json(Box::default()),
                    FormKind::Unreadable => State::Refuse,
                };
                Parser {
                    hold_from: None,
                    state,
                }
            })
            .collect();
        MethodFieldScan {
            method,
            fed: 0,
            parsers,
        }
    }

    /// Everything fed before this offset may go upstream; what follows is held back until the
    /// `_method` value it belongs to is judged.
    pub fn safe(&self) -> u64 {
        self.parsers
            .iter()
            .filter_map(|p| p.hold_from)
            .min()
            .unwrap_or(self.fed)
    }

    /// Read the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), MethodInForm> {
        for parser in &mut self.parsers {
            for (at, &b) in (self.fed..).zip(chunk) {
                parser.byte(&self.method, at, b)?;
            }
        }
        self.fed += chunk.len() as u64;
        Ok(())
    }

    /// The body ended: judge a value it ended in.
    pub fn finish(&mut self) -> Result<(), MethodInForm> {
        for parser in &mut self.parsers {
            parser.finish(&self.method)?;
        }
        Ok(())
    }
}

/// A key longer than [`MAX_KEY`] whose kept start is all padding (white space, `+`,
/// brackets, escapes of them): what follows could read as `_method` (Rack and PHP strip any
/// amount of it), so its value is judged.
fn padded_past(key: &[u8]) -> bool {
    if key.len() <= MAX_KEY {
        return false;
    }
    let decoded = form_decode(key);
    let rest = decoded
        .iter()
        .position(|&b| !(b.is_ascii_whitespace() || matches!(b, b'[' | b']' | b'%')))
        .unwrap_or(decoded.len());
    decoded.len() - rest < 10
}

/// A value that is empty (no method) or names the request's own method changes nothing.
fn judge(method: &Method, decoded: &[u8]) -> Result<(), MethodInForm> {
    let v = decoded.trim_ascii();
    if v.is_empty() || v.eq_ignore_ascii_case(method.as_str().as_bytes()) {
        Ok(())
    } else {
        Err(MethodInForm)
    }
}

impl Parser {
    fn finish(&mut self, method: &Method) -> Result<(), MethodInForm> {
        let value = match &mut self.state {
            State::Url(UrlState::Method(v)) => form_decode(std::mem::take(v)),
            State::Multipart(m) => {
                let delimiter = &m.delimiter.pattern;
                let verdict = match &m.part {
                    Part::Headers(part) | Part::Method(part) if headers_name_method(part) => {
                        judge_part(method, part, delimiter).and_then(|()| {
                            // PHP ends the headers at a last line without a line feed and takes
                            // what is left as the value.
                            let tail = part
                                .iter()
                                .rposition(|&b| b == b'\n')
                                .map_or(&part[..], |i| &part[i + 1..]);
                            if tail.windows(delimiter.len()).any(|w| w == &delimiter[..]) {
                                Ok(())
                            } else {
                                judge(method, tail)
                            }
                        })
                    }
                    _ => Ok(()),
                };
                self.hold_from = None;
                return verdict;
            }
            State::Json(j) if j.in_method_value => json_unescape(&std::mem::take(&mut j.string)),
            State::Url(_) | State::Json(_) | State::Refuse => return Ok(()),
        };
        self.hold_from = None;
        judge(method, &value)
    }

    fn byte(&mut self, method: &Method, at: u64, b: u8) -> Result<(), MethodInForm> {
        match &mut self.state {
            State::Url(url) => match url {
                UrlState::Key(key) => match b {
                    b'=' => {
                        if is_method_parameter(&form_decode(&*key)) || padded_past(key) {
                            *url = UrlState::Method(Vec::new());
                            self.hold_from = Some(at + 1);
                        } else {
                            *url = UrlState::Skip;
                        }
                    }
                    b'&' | b';' => key.clear(),
                    _ if key.len() <= MAX_KEY => key.push(b),
                    _ => {}
                },
                UrlState::Skip => {
                    if matches!(b, b'&' | b';') {
                        *url = UrlState::Key(Vec::new());
                    }
                }
                UrlState::Method(value) => {
                    if matches!(b, b'&' | b';') {
                        let decoded = form_decode(value);
                        *url = UrlState::Key(Vec::new());
                        self.hold_from = None;
                        return judge(method, &decoded);
                    }
                    value.push(b);
                    if value.len() > MAX_VALUE {
                        return Err(MethodInForm);
                    }
                }
            },
            State::Multipart(m) => {
                let found = m.delimiter.advance(b);
                match &mut m.part {
                    Part::Content if found => m.part = Part::AfterDelimiter(Vec::new()),
                    Part::Content => {}
                    Part::AfterDelimiter(seen) => {
                        // Even the closing delimiter (`--` after it) is followed by headers:
                        // Rack and PHP read parts after it in some bodies.
                        if found {
                            seen.clear();
                        } else if b == 0 && seen.is_empty() {
                            // PHP compares a delimiter line up to a NUL: `--B\0...` is one,
                            // and its headers may start inside that line.
                            return Err(MethodInForm);
                        } else if b == b'\n' {
                            m.part = Part::Headers(Vec::new());
                            self.hold_from = Some(at + 1);
                        } else if seen.len() < 2 {
                            seen.push(b);
                        }
                    }
                    // A delimiter inside a header block: frameworks disagree on where that part
                    // and the next begin.
                    Part::Headers(_) if found => return Err(MethodInForm),
                    Part::Headers(block) => {
                        block.push(b);
                        if block.len() > MAX_PART_HEADERS {
                            return Err(MethodInForm);
                        }
                        if b == b'\n' && block.ends_with(b"\r\n\r\n") {
                            if headers_name_method(block) {
                                let part = std::mem::take(block);
                                m.part = Part::Method(part);
                            } else {
                                m.part = Part::Content;
                                self.hold_from = None;
                            }
                        }
                    }
                    Part::Method(part) => {
                        part.push(b);
                        if found {
                            let verdict = judge_part(method, part, &m.delimiter.pattern);
                            m.part = Part::AfterDelimiter(Vec::new());
                            self.hold_from = None;
                            return verdict;
                        }
                        if part.len() > MAX_PART_HEADERS + MAX_VALUE + m.delimiter.pattern.len() {
                            return Err(MethodInForm);
                        }
                    }
                }
            }
            State::Refuse => return Err(MethodInForm),
            State::Json(j) => return j.byte(method, at, b, &mut self.hold_from),
        }
        Ok(())
    }
}

impl JsonState {
    fn byte(
        &mut self,
        method: &Method,
        at: u64,
        b: u8,
        hold_from: &mut Option<u64>,
    ) -> Result<(), MethodInForm> {
        if !self.started {
            if !b.is_ascii_whitespace() {
                self.started = true;
                self.object = b == b'{';
                self.depth = 1;
                self.expect_key = true;
            }
            return Ok(());
        }
        // Only the keys of a top-level object matter (Laravel's request bag), and only until
        // that object closes.
        if !self.object || self.depth == 0 {
            return Ok(());
        }
        if self.in_string {
            let top = self.depth == 1;
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if top && self.string_is_key {
                    let key = json_unescape(&self.string);
                    self.awaiting_value = is_method_parameter(&key);
                } else if top && self.in_method_value {
                    let value = json_unescape(&self.string);
                    self.in_method_value = false;
                    *hold_from = None;
                    return judge(method, &value);
                }
                return Ok(());
            }
            if top && (self.string_is_key || self.in_method_value) {
                if self.in_method_value && self.string.len() >= MAX_VALUE {
                    return Err(MethodInForm);
                }
                if self.string.len() < MAX_KEY {
                    self.string.push(b);
                }
            }
            return Ok(());
        }
        if b.is_ascii_whitespace() {
            if self.awaiting_value && hold_from.is_some() {
                // Held back from the `:`: white space before the value counts too.
                self.held_space += 1;
                if self.held_space > MAX_VALUE {
                    return Err(MethodInForm);
                }
            }
            return Ok(());
        }
        let top = self.depth == 1;
        if top && self.awaiting_value && b != b':' {
            // The `_method` value starts: a string is judged, anything else is no method.
            self.awaiting_value = false;
            if b == b'"' {
                self.in_method_value = true;
            } else {
                *hold_from = None;
            }
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.string.clear();
                self.string_is_key = top && self.expect_key;
                if top {
                    self.expect_key = false;
                }
            }
            b'{' | b'[' => self.depth = self.depth.saturating_add(1),
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b':' if top && self.awaiting_value => {
                *hold_from = Some(at + 1);
                self.held_space = 0;
            }
            b',' if top => self.expect_key = true,
            _ => {}
        }
        Ok(())
    }
}

/// A JSON string's content (without its quotes) decoded: the escapes `\"`, `\\`, `\/`, `\b`,
/// `\f`, `\n`, `\r`, `\t` and `\uXXXX` (surrogate pairs joined); anything malformed is kept
/// as it is, which names no method.
fn json_unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    let hex4 = |at: usize| -> Option<u32> {
        let digits = raw.get(at..at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        u32::from_str_radix(text, 16).ok()
    };
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let simple = match raw[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let unit = if raw[i + 1] == b'u' {
            hex4(i + 2)
        } else {
            None
        };
        let Some(unit) = unit else {
            out.push(raw[i]);
            i += 1;
            continue;
        };
        let mut used = 6;
        let mut code = unit;
        if (0xD800..0xDC00).contains(&unit)
            && raw.get(i + 6) == Some(&b'\\')
            && raw.get(i + 7) == Some(&b'u')
        {
            if let Some(low) = hex4(i + 8).filter(|l| (0xDC00..0xE000).contains(l)) {
                code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                used = 12;
            }
        }
        let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i += used;
    }
    out
}

impl Matcher {
    fn new(pattern: Vec<u8>) -> Self {
        // The failure function: for each prefix, the length of its longest proper border.
        let mut fail = vec![0; pattern.len()];
        let mut k = 0;
        for i in 1..pattern.len() {
            while k > 0 && pattern[i] != pattern[k] {
                k = fail[k - 1];
            }
            if pattern[i] == pattern[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Matcher {
            pattern,
            fail,
            matched: 0,
        }
    }

    /// Feed one byte; whether the pattern just ended.
    fn advance(&mut self, b: u8) -> bool {
        while self.matched > 0 && self.pattern[self.matched] != b {
            self.matched = self.fail[self.matched - 1];
        }
        if self.pattern[self.matched] == b {
            self.matched += 1;
        }
        if self.matched == self.pattern.len() {
            self.matched = self.fail[self.matched - 1];
            return true;
        }
        false
    }
}

/// Judge every value a framework could read from a `_method` part held whole (`part`: its
/// header block, then its content, up to and including the delimiter that ends it, if any):
/// the content after each place where PHP or Rack ends the header block (an empty line, a
/// line that starts with NUL, the first CRLF CRLF), up to the first delimiter after it.
fn judge_part(method: &Method, part: &[u8], delimiter: &[u8]) -> Result<(), MethodInForm> {
    // A `_method` part has one end of its headers; a few more are judged, many are refused
    // (each costs a search to the delimiter).
    let mut ends = 0;
    let mut line_start = 0;
    for (i, &b) in part.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &part[line_start..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line_start = i + 1;
        if line.len() >= PHP_LINE {
            return Err(MethodInForm);
        }
        if !(line.is_empty() || line[0] == 0) {
            continue;
        }
        ends += 1;
        if ends > 8 {
            return Err(MethodInForm);
        }
        let rest = &part[i + 1..];
        let end = rest
            .windows(delimiter.len())
            .position(|w| w == delimiter)
            .unwrap_or(rest.len());
        let value = &rest[..end];
        let value = value.strip_suffix(b"\n").unwrap_or(value);
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        judge(method, value)?;
    }
    Ok(())
}

/// Whether a part's header block names it `_method`, however a framework reads it: Rack takes
/// `name=` after `Content-Disposition:` anywhere in the block (across lines, in other header
/// names too), else a `Content-ID` (its match may start inside a header name); PHP joins a
/// line without `:` to the previous one, skips repeated `=`, and takes a quoted,
/// single-quoted or bare value; Rack drops backslashes. The block is read three ways (line
/// breaks and quotes as spaces; folded the PHP way; line breaks and quotes removed), and
/// every `name=`, `name*=` and `content-id:` in each reading is judged on the first 64 bytes
/// of its value.
fn headers_name_method(block: &[u8]) -> bool {
    let with_backslashes = block.to_ascii_lowercase();
    let lower: Vec<u8> = with_backslashes
        .iter()
        .copied()
        .filter(|&b| b != b'\\')
        .collect();
    let as_spaces = |text: &[u8]| -> Vec<u8> {
        text.iter()
            .map(|&b| match b {
                b'\r' | b'\n' | b'"' | b'\'' => b' ',
                b => b,
            })
            .collect()
    };
    let spaced = as_spaces(&lower);
    // Rack drops backslashes only inside quoted names: unquoted, one ends the name.
    let spaced_backslashes = as_spaces(&with_backslashes);
    let glued: Vec<u8> = lower
        .iter()
        .copied()
        .filter(|&b| !matches!(b, b'\r' | b'\n' | b'"' | b'\''))
        .collect();
    let mut folded: Vec<u8> = Vec::with_capacity(lower.len());
    for line in lower.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continues = !folded.is_empty()
            && (line.first().is_some_and(|&b| b == b' ' || b == b'\t') || !line.contains(&b':'));
        if !continues && !folded.is_empty() {
            folded.push(b'\n');
        }
        folded.extend_from_slice(line);
    }
    [spaced, spaced_backslashes, folded, glued]
        .iter()
        .any(|text| names_method(text))
}

/// Whether `text` (one reading of a header block) has a `name=`, `name*=` or `content-id:`
/// whose value reads as `_method`.
fn names_method(text: &[u8]) -> bool {
    for needle in [&b"name="[..], b"name*=", b"content-id:"] {
        let mut from = 0;
        while let Some(pos) = text[from..].windows(needle.len()).position(|w| w == needle) {
            let start = from + pos + needle.len();
            from = start;
            // `filename=` names no field, for any framework.
            if needle != b"content-id:" && text[..start - needle.len()].ends_with(b"file") {
                continue;
            }
            let rest = &text[start..];
            // White space (vertical tab too: PHP's isspace, Ruby's \s), `=`, quotes and
            // brackets (Rack strips any number) before the name; an unquoted name ends at
            // white space or any of Rack's stop characters.
            let space = |b: u8| b.is_ascii_whitespace() || b == 0x0b;
            let skip = rest
                .iter()
                .position(|&b| !(space(b) || matches!(b, b'=' | b'"' | b'\'' | b'[' | b']')))
                .unwrap_or(rest.len());
            let rest = &rest[skip..rest.len().min(skip + 64)];
            let end = rest
                .iter()
                .position(|&b| {
                    space(b)
                        || matches!(
                            b,
                            b';' | b','
                                | b'"'
                                | b'\''
                                | b'('
                                | b')'
                                | b'<'
                                | b'>'
                                | b':'
                                | b'\\'
                                | b'/'
                                | b'?'
                                | b'='
                                | b'['
                                | b']'
                        )
                })
                .unwrap_or(rest.len());
            let key = &rest[..end];
            let key = form_decode(key);
            if is_method_parameter(&key) || ends_with_method_name(&key) {
                return true;
            }
        }
    }
    false
}

/// `utf-8_method` (the quotes of `name*=utf-8''_method` removed): a name that ends in `_method`
/// after a charset tag.
fn ends_with_method_name(key: &[u8]) -> bool {
    key.len() > 7
        && key[..key.len() - 7].ends_with(b"utf-8")
        && is_method_parameter(&key[key.len() - 7..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(content_types: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for ct in content_types {
            h.append(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    #[test]
    fn which_bodies_a_framework_reads_a_method_from() {
        use FormKind::{Json, Multipart, UrlEncoded};
        let post = Method::POST;
        let mp = |b: &str| Multipart(b.as_bytes().to_vec());
        for (cts, want) in [
            (&[][..], vec![UrlEncoded]),
            (&[""][..], vec![UrlEncoded]),
            (&["application/x-www-form-urlencoded"][..], vec![UrlEncoded]),
            (
                &["Application/X-WWW-Form-Urlencoded ; charset=UTF-8"][..],
                vec![UrlEncoded],
            ),
            (
                &["application/x-www-form-urlencoded, text/plain"][..],
                vec![UrlEncoded],
            ),
            (
                &["application/json", "application/x-www-form-urlencoded"][..],
                vec![Json, UrlEncoded],
            ),
            (
                &["application/x-www-form-urlencoded; x=/json"][..],
                vec![UrlEncoded, Json],
            ),
            (&["multipart/form-data"][..], vec![UrlEncoded]),
            (&["multipart/form-data; boundary=XyZ"][..], vec![mp("XyZ")]),
            (
                &["Multipart/Mixed; BOUNDARY=\"a b;c\""][..],
                vec![mp("a b;c"), mp("a b")],
            ),
            (
                &[
                    "multipart/form-data; boundary=A",
                    "application/x-www-form-urlencoded",
                ][..],
                vec![mp("A"), UrlEncoded],
            ),
            (&["application/json"][..], vec![Json]),
            (&["application/vnd.api+JSON; charset=utf-8"][..], vec![Json]),
            (&["text/plain"][..], vec![]),
        ] {
            assert_eq!(form_kinds(&post, &headers(cts)), want, "{cts:?}");
        }
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(form_kinds(&m, &headers(&[])), vec![], "{m}");
        }
    }

    /// Feed `body` in chunks of `size`; the verdict, and checks that nothing of a `_method`
    /// value was ever declared safe before the value ended.
    fn scan(kind: &FormKind, body: &[u8], size: usize) -> Result<(), MethodInForm> {
        let mut s = MethodFieldScan::new(vec![kind.clone()], Method::POST);
        for chunk in body.chunks(size.max(1)) {
            s.feed(chunk)?;
            assert!(s.safe() <= s.fed);
        }
        s.finish()
    }

    /// The verdict on `body` read as `kind`, which must be the same however it is framed
    /// (frames of 1, 2, 3, 5, 7, 13 and 8192 bytes).
    fn framed(kind: &FormKind, body: &[u8]) -> Result<(), MethodInForm> {
        let whole = scan(kind, body, 8192);
        for size in [1, 2, 3, 5, 7, 13] {
            assert_eq!(
                scan(kind, body, size),
                whole,
                "frames of {size} disagree for {:?}",
                String::from_utf8_lossy(&body[..body.len().min(120)])
            );
        }
        whole
    }

    fn url(body: &str) -> Result<(), MethodInForm> {
        framed(&FormKind::UrlEncoded, body.as_bytes())
    }

    #[test]
    fn urlencoded_method_fields() {
        for body in [
            "_method=DELETE",
            "a=1&_method=delete",
            "a=1;_method=PUT&b=2",
            "%5Fmethod=PATCH",
            "%5fmethod=patch",
            ".method=DELETE",
            "_method%00x=DELETE",
            "+_method=DELETE",
            "_method[]=DELETE",
            "_METHOD=DELETE",
            "_method=%44ELETE",
            "_method=GET",
            &format!("_method={}", "A".repeat(300)),
            &format!("{}_method=DELETE", "[".repeat(1100)),
            &format!("{}_method=DELETE", "+".repeat(1100)),
            &format!("{}_method=DELETE", "%5B".repeat(400)),
        ] {
            assert_eq!(url(body), Err(MethodInForm), "{body}");
        }
        for body in [
            "",
            "a=1&b=2",
            "_method=POST",
            "_method=post&x=1",
            "_method=+POST+",
            "_method=",
            "_method",
            "a=_method%3DDELETE",
            "method=DELETE",
            "x_method=DELETE",
            "_methods=DELETE",
            "{\"_method\":\"DELETE\"}",
        ] {
            assert_eq!(url(body), Ok(()), "{body}");
        }
    }

    /// The value is held back from its first byte until it is judged.
    #[test]
    fn a_method_value_is_held_back_until_judged() {
        let mut s = MethodFieldScan::new(vec![FormKind::UrlEncoded], Method::POST);
        s.feed(b"a=1&_method=PO").unwrap();
        assert_eq!(s.safe(), 12, "held from the value's first byte");
        s.feed(b"ST").unwrap();
        assert_eq!(s.safe(), 12);
        s.feed(b"&b=2").unwrap();
        assert_eq!(s.safe(), 20, "released once judged");
        let mut s = MethodFieldScan::new(vec![FormKind::UrlEncoded], Method::POST);
        s.feed(b"_method=DELE").unwrap();
        assert_eq!(s.safe(), 8);
        assert_eq!(s.finish(), Err(MethodInForm));
    }

    fn multipart(parts: &[(&str, &str)], boundary: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, content) in parts {
            body.extend_from_slice(
                format!("--{boundary}\r\n{headers}\r\n\r\n{content}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    fn mp(body: &[u8], boundary: &str) -> Result<(), MethodInForm> {
        framed(&FormKind::Multipart(boundary.as_bytes().to_vec()), body)
    }

    #[test]
    fn multipart_method_fields() {
        let b = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
        let file = ("Content-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\nContent-Type: text/plain", "some\r\n--not-the-boundary\r\n_method=DELETE\r\n");
        for (name_header, value) in [
            ("Content-Disposition: form-data; name=\"_method\"", "DELETE"),
            ("content-disposition: form-data; name=_method", "delete"),
            ("Content-Disposition: form-data;name=\"_method[]\"", "PUT"),
            ("Content-Disposition: form-data; name=\".method\"", "PATCH"),
            // (any `name=` in the block counts, generously)
            ("X-Note: name=\"_method\"", "DELETE"),
            (
                "Content-Disposition: form-data; name=\"_method\"",
                &"x".repeat(400),
            ),
        ] {
            let body = multipart(&[file, (name_header, value)], b);
            assert_eq!(mp(&body, b), Err(MethodInForm), "{name_header} {value}");
            // First part, too.
            let body = multipart(&[(name_header, value), file], b);
            assert_eq!(
                mp(&body, b),
                Err(MethodInForm),
                "{name_header} {value} first"
            );
        }
        for (name_header, value) in [
            ("Content-Disposition: form-data; name=\"_method\"", "POST"),
            ("Content-Disposition: form-data; name=\"_method\"", "post"),
            ("Content-Disposition: form-data; name=\"_method\"", ""),
            ("Content-Disposition: form-data; name=\"method\"", "DELETE"),
            (
                "Content-Disposition: form-data; name=\"x\"; filename=\"_method\"",
                "DELETE",
            ),
        ] {
            let body = multipart(&[file, (name_header, value)], b);
            assert_eq!(mp(&body, b), Ok(()), "{name_header} {value}");
        }
        // Bare LF line ends (PHP accepts them).
        let lf =
            format!("--{b}\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--{b}--\n");
        assert_eq!(mp(lf.as_bytes(), b), Err(MethodInForm));
        // A preamble, and a first delimiter that does not start a line (taken as one: a
        // boundary does not occur in content).
        let pre = format!("xx--{b}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--{b}--\r\n");
        assert_eq!(mp(pre.as_bytes(), b), Err(MethodInForm));
        // A part after the closing delimiter (PHP reads it).
        let mut after = multipart(&[file], b);
        after.extend_from_slice(&multipart(
            &[("Content-Disposition: form-data; name=\"_method\"", "PUT")],
            b,
        ));
        assert_eq!(mp(&after, b), Err(MethodInForm));
        // A delimiter right after the blank line: an empty value.
        let empty =
            format!("--{b}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n--{b}--");
        assert_eq!(mp(empty.as_bytes(), b), Ok(()));
        // A body cut inside the value is judged on what came.
        let cut =
            format!("--{b}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE");
        assert_eq!(mp(cut.as_bytes(), b), Err(MethodInForm));
    }

    use proptest::prelude::*;

    /// Bodies made of the pieces that matter to the scanners.
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            "_method",
            "%5Fmethod",
            "=",
            "&",
            ";",
            "POST",
            "post",
            "DELETE",
            "x",
            " ",
            "+",
            "\r\n",
            "\n",
            "--BB",
            "--B",
            "--",
            "Content-Disposition: form-data; name=",
            "\"_method\"",
            "\r\n\r\n",
        ]);
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        /// The verdict does not depend on how the body is cut into frames, and nothing past
        /// the start of an unjudged value is ever declared safe.
        #[test]
        fn verdicts_do_not_depend_on_framing(body in pieces(), cuts in prop::collection::vec(1usize..17, 1..8)) {
            for kind in [FormKind::UrlEncoded, FormKind::Multipart(b"BB".to_vec()), FormKind::Json] {
                let whole = scan(&kind, &body, body.len().max(1));
                let mut s = MethodFieldScan::new(vec![kind.clone()], Method::POST);
                let mut at = 0;
                let mut verdict = Ok(());
                for size in cuts.iter().cycle() {
                    if at >= body.len() {
                        break;
                    }
                    let end = (at + size).min(body.len());
                    verdict = s.feed(&body[at..end]);
                    if verdict.is_err() {
                        break;
                    }
                    prop_assert!(s.safe() <= s.fed);
                    at = end;
                }
                if verdict.is_ok() {
                    verdict = s.finish();
                    prop_assert_eq!(s.safe(), s.fed, "judged whole: all of it may go");
                }
                prop_assert_eq!(verdict, whole, "{:?}", String::from_utf8_lossy(&body));
            }
        }
    }

    fn json(body: &str) -> Result<(), MethodInForm> {
        framed(&FormKind::Json, body.as_bytes())
    }

    #[test]
    fn json_method_keys() {
        for body in [
            r#"{"_method":"DELETE"}"#,
            r#" { "a" : 1 , "_method" : "put" } "#,
            r#"{"a":{"b":[1,2,{"c":"d"}]},"_method":"PATCH"}"#,
            r#"{"\u005fmethod":"DELETE"}"#,
            r#"{"_method":"\u0044ELETE"}"#,
            r#"{"_method":"POST","_method":"DELETE"}"#,
            r#"{"note":"say \"hi\"","_method":"DELETE"}"#,
            r#"{"_method":"DELE"#,
        ] {
            assert_eq!(json(body), Err(MethodInForm), "{body}");
        }
        // White space held back after the `:` is bounded.
        let spaced = format!("{{\"_method\":{}\"POST\"}}", " ".repeat(300));
        assert_eq!(json(&spaced), Err(MethodInForm));
        for body in [
            r#"{}"#,
            r#"{"_method":"POST"}"#,
            r#"{"_method":"post","a":[1]}"#,
            r#"{"_method":1}"#,
            r#"{"_method":["DELETE"]}"#,
            r#"{"_method":{"x":"DELETE"}}"#,
            r#"{"a":{"_method":"DELETE"}}"#,
            r#"[{"_method":"DELETE"}]"#,
            r#"{"a":"_method","b":"DELETE"}"#,
            r#"{"a":"\"_method\":\"DELETE"}"#,
            r#""_method""#,
        ] {
            assert_eq!(json(body), Ok(()), "{body}");
        }
        assert_eq!(
            json_unescape(br#"\ud83d\ude00 \u00e9\n\q"#),
            "\u{1F600} \u{e9}\n\\q".as_bytes()
        );
    }

    #[test]
    fn several_readings_are_all_judged_and_the_earliest_hold_wins() {
        let mut s = MethodFieldScan::new(vec![FormKind::UrlEncoded, FormKind::Json], Method::POST);
        s.feed(br#"{"_method":"POS"#).unwrap();
        assert_eq!(s.safe(), 11, "the JSON value is held");
        s.feed(br#"T"}&_method=DEL"#).unwrap();
        assert_eq!(s.safe(), 27, "then the urlencoded one");
        assert_eq!(s.finish(), Err(MethodInForm));
    }

    #[test]
    fn part_names_as_rack_and_php_read_them() {
        for block in [
            "Content-Disposition: form-data; name=\"_method\"\r\n\r\n",
            "Content-ID: _method\r\n\r\n",
            "X-Content-Disposition: form-data; name=\"_method\"\r\n\r\n",
            "X-Note: Content-Disposition:; name=_method\r\n\r\n",
            "Content-Disposition: form-data\r\n; name=\"_method\"\r\n\r\n",
            "Content-Disposition: form-data; name=\"\\_method\"\r\n\r\n",
            "Content-Disposition: form-data; name=\"[_method]\"\r\n\r\n",
            "Content-Disposition: form-data; name='_method'\r\n\r\n",
            "Content-Disposition: form-data; name= _method x\r\n\r\n",
            "Content-Disposition: form-data; name=\"_met\r\nhod\"\r\n\r\n",
            "Content-Disposition: form-data;\r\n\tname=\"_method\"\r\n\r\n",
            "Content-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\n",
        ] {
            assert!(headers_name_method(block.as_bytes()), "{block:?}");
        }
        for block in [
            "Content-Disposition: form-data; name=\"_method\"\r\nContent-Type: text/plain\r\n\r\n",
            "Content-Disposition: form-data; name=\"_method\"x\r\n\r\n",
            "Content-Disposition: form-data; name=_method\rContent-Type: x\r\n\r\n",
            "Content-Disposition: form-data; name=\"_met\r\nhod\"\r\nContent-Type: text/plain\r\n\r\n",
            "Content-Disposition: form-data; name==_method\r\n\r\n",
            "Content-Disposition: form-data; name===.method\r\n\r\n",
            "X-FileContent-ID: _method\r\n\r\n",
        ] {
            assert!(headers_name_method(block.as_bytes()), "{block:?}");
        }
        for block in [
            "Content-Disposition: form-data; name=\"_method_note\"\r\n\r\n",
            "Content-Disposition: form-data; name=\"method\"\r\n\r\n",
            "Content-Type: text/plain\r\n\r\n",
        ] {
            assert!(!headers_name_method(block.as_bytes()), "{block:?}");
        }
    }

    #[test]
    fn a_header_block_is_read_to_phps_end_and_to_racks() {
        let b = "BB";
        // PHP's headers end at the bare-LF blank line, Rack's run on to CRLF CRLF.
        let body = format!("--{b}\r\nX-A: 1\n\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--{b}--\r\n");
        assert_eq!(mp(body.as_bytes(), b), Err(MethodInForm));
        // A delimiter in the middle of a line ends the part (Rack).
        let body = format!("--{b}\r\nContent-Disposition: form-data; name=x\r\n\r\njunk--{b}\r\n --{b}\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n");
        assert_eq!(mp(body.as_bytes(), b), Err(MethodInForm));
        // An empty first header line, parts after the closing delimiter, a long delimiter
        // line, a delimiter inside the header block, a NUL line, a body cut in the value.
        for body in [
            format!("--{b}\r\n\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}--\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}{}\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n", " ".repeat(1100)),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method; x=--{b}\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\r\n\0\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\r\n\0\r\nDELETE"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\r\nX: {}\r\n\r\nPOST\r\n--{b}--", "y".repeat(5100)),
        ] {
            assert_eq!(mp(body.as_bytes(), b), Err(MethodInForm), "{:?}", &body[..body.len().min(120)]);
        }
        // (third review) a blank line straddling a delimiter line, `--B` then NUL, a header
        // block cut by the end of the body, vertical tabs, Rack's stop characters, brackets.
        for body in [
            format!("--{b}x\r\n--{b}\r\n\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\0{}Content-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{b}--\r\n", "A".repeat(5116)),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\r\nDELETE"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\x0b\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=\x0b_method\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-ID:\x0b_method\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method:x\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=_method\\x\r\n\r\nDELETE\r\n--{b}--\r\n"),
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{}_method\"\r\n\r\nDELETE\r\n--{b}--\r\n", "[".repeat(64)),
        ] {
            assert_eq!(mp(body.as_bytes(), b), Err(MethodInForm), "{:?}", &body[..body.len().min(120)]);
        }
        // A `_method` part with another header and the value POST passes.
        let ok = format!("--{b}\r\nContent-Disposition: form-data; name=\"_method\"\r\nContent-Type: text/plain\r\n\r\npost\r\n--{b}--\r\n");
        assert_eq!(mp(ok.as_bytes(), b), Ok(()));
        // A header block that never ends is refused past 8 KiB.
        let body = format!("--{b}\r\nX: {}", "y".repeat(9000));
        assert_eq!(mp(body.as_bytes(), b), Err(MethodInForm));
    }

    #[test]
    fn boundaries_as_php_and_rack_take_them() {
        let got = |ct: &str| -> Vec<String> {
            boundaries(ct.as_bytes())
                .into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        assert_eq!(got("multipart/form-data; boundary=BB"), ["BB"]);
        assert_eq!(got("multipart/form-data; boundary=\"B B\""), ["B B"]);
        assert!(got("multipart/form-data; boundary =BB").contains(&"BB".to_owned()));
        assert!(got("multipart/form-data; boundaryx=BB").contains(&"BB".to_owned()));
        let both = got("multipart/form-data; Boundary=AA; boundary=BB");
        assert!(
            both.contains(&"AA".to_owned()) && both.contains(&"BB".to_owned()),
            "{both:?}"
        );
        let both = got("multipart/form-data; boundary=AA; Boundary=BB");
        assert!(
            both.contains(&"AA".to_owned()) && both.contains(&"BB".to_owned()),
            "{both:?}"
        );
        assert!(got("multipart/form-data").is_empty());
        // PHP finds a boundary Rack's pattern does not: read both ways.
        for ct in [
            "multipart/form-data; boundary-x=B",
            "multipart/form-data; boundary*=B",
            "multipart/form-data; boundary; x=B",
        ] {
            let kinds = form_kinds(&Method::POST, &headers(&[ct]));
            assert!(
                kinds.contains(&FormKind::UrlEncoded)
                    && kinds.contains(&FormKind::Multipart(b"B".to_vec())),
                "{ct}: {kinds:?}"
            );
        }
        // Rack's pattern matches here (a boundary of one space; PHP's ` "B"` is taken too):
        // no urlencoded reading.
        let kinds = form_kinds(
            &Method::POST,
            &headers(&["multipart/form-data; boundary = \"B\""]),
        );
        assert!(
            !kinds.contains(&FormKind::UrlEncoded)
                && kinds.contains(&FormKind::Multipart(b" ".to_vec())),
            "{kinds:?}"
        );
        // Too long to follow: refused.
        let long = format!("multipart/form-data; boundary={}", "b".repeat(2000));
        assert_eq!(
            form_kinds(&Method::POST, &headers(&[&long])),
            vec![FormKind::Unreadable]
        );
        assert_eq!(
            scan(&FormKind::Unreadable, b"anything", 3),
            Err(MethodInForm)
        );
    }

    #[test]
    fn encoded_forms_are_refused_and_encoded_json_is_not() {
        let with = |ct: &str, ce: &str| {
            let mut h = headers(&[ct]);
            h.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_str(ce).unwrap(),
            );
            check_encoding(&form_kinds(&Method::POST, &h), &h)
        };
        assert_eq!(
            with("application/x-www-form-urlencoded", "gzip"),
            Err(BadTarget::EncodedForm)
        );
        assert_eq!(
            with("multipart/form-data; boundary=B", "deflate"),
            Err(BadTarget::EncodedForm)
        );
        assert_eq!(
            with("application/x-www-form-urlencoded", "identity"),
            Ok(())
        );
        assert_eq!(with("application/json", "gzip"), Ok(()));
        assert_eq!(with("application/octet-stream", "gzip"), Ok(()));
    }

    #[test]
    fn the_delimiter_matcher_finds_overlapping_delimiters() {
        // A boundary whose prefix repeats: "\n--aab" in "\n--aa\n--aab".
        let kind = FormKind::Multipart(b"aab".to_vec());
        let body =
            b"\n--aa\n--aab\r\nContent-Disposition: form-data; name=_method\r\n\r\nPUT\r\n--aab--";
        assert_eq!(scan(&kind, body, 1), Err(MethodInForm));
        assert_eq!(scan(&kind, body, 100), Err(MethodInForm));
    }
}
