//! The `_method` field of a form body, found while the body streams upstream.
//!
//! Rack's `MethodOverride` (every Rails app), Laravel and Symfony run a POST as the method
//! named by a `_method` field of its form body: a POST that policy allowed would run upstream
//! as a DELETE policy never judged. [`form_kind`] says whether a framework would read such a
//! field from a request's body (a POST whose media type is a form, multipart, or absent, the
//! way Rack decides), and [`MethodFieldScan`] reads the body as it passes, with bounded
//! memory, and reports a `_method` field that names another method.
//!
//! The scan never lets the upstream see a complete body before it has judged the field: the
//! bytes of a `_method` value are held back until the value ends ([`MethodFieldScan::safe`]),
//! so that refusing can still cut the body short. The frameworks read the whole form before
//! they act on it, and a cut body is an error to them.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method};

use super::normalize::{form_decode, is_method_parameter};

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
}

/// Whether a framework would look for `_method` in this request's body, and how it would parse
/// it: only a POST (the only method the frameworks override), whose media type (of any
/// `Content-Type` field: frameworks disagree about duplicates) is a form, `multipart/*`, or
/// none (Rack parses a POST without a media type as a form).
pub fn form_kind(method: &Method, headers: &HeaderMap) -> Option<FormKind> {
    if method != Method::POST {
        return None;
    }
    let mut kind = None;
    let mut any = false;
    for value in headers.get_all(CONTENT_TYPE) {
        any = true;
        let value = value.as_bytes();
        // Rack: the media type is what comes before the first `;` or `,`, trimmed, lower-cased.
        let media = value
            .split(|&b| b == b';' || b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if media.len() >= 10 && media[..10].eq_ignore_ascii_case(b"multipart/") {
            match boundary(value) {
                Some(b) => return Some(FormKind::Multipart(b)),
                // Rack parses a multipart body it cannot split as a urlencoded one.
                None => kind = Some(FormKind::UrlEncoded),
            }
        } else if media.is_empty()
            || media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        {
            kind = Some(FormKind::UrlEncoded);
        }
    }
    if !any {
        return Some(FormKind::UrlEncoded);
    }
    kind
}

/// The `boundary` parameter of a multipart media type (quoted or not), as Rack reads it.
fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower.windows(9).position(|w| w == b"boundary=")? + 9;
    let rest = &content_type[at..];
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'"' | b';' | b','))
        .unwrap_or(rest.len());
    let b = &rest[..end];
    (!b.is_empty() && b.len() <= 200).then(|| b.to_vec())
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
    /// Where the held-back `_method` value starts (an offset into the body), while one is
    /// being read.
    hold_from: Option<u64>,
    state: State,
}

enum State {
    Url(UrlState),
    Multipart(Box<MultipartState>),
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
    /// `--boundary`, found anywhere before the first part (Rack skips any preamble).
    first: Matcher,
    /// `\n--boundary`: every later delimiter (PHP takes a line that starts with it).
    next: Matcher,
    opened: bool,
    part: Part,
}

/// A streaming matcher (Knuth-Morris-Pratt) of one pattern.
struct Matcher {
    pattern: Vec<u8>,
    fail: Vec<usize>,
    matched: usize,
}

enum Part {
    /// Before the first delimiter, or in a part that does not matter: looking for the next.
    Content,
    /// Just after a delimiter: `--` (the end) or the rest of its line.
    AfterDelimiter(Vec<u8>),
    /// In the part's header lines: the line so far, and whether the part is `_method`.
    Headers { line: Vec<u8>, method: bool },
    /// In the content of a `_method` part (kept, delimiter bytes included).
    Method(Vec<u8>),
}

impl MethodFieldScan {
    /// A scan of a body of `kind` for the request `method` (a field naming it passes).
    pub fn new(kind: FormKind, method: Method) -> Self {
        let state = match kind {
            FormKind::UrlEncoded => State::Url(UrlState::Key(Vec::new())),
            FormKind::Multipart(boundary) => {
                let mut delimiter = b"\n--".to_vec();
                delimiter.extend_from_slice(&boundary);
                State::Multipart(Box::new(MultipartState {
                    first: Matcher::new(delimiter[1..].to_vec()),
                    next: Matcher::new(delimiter),
                    opened: false,
                    part: Part::Content,
                }))
            }
        };
        MethodFieldScan {
            method,
            fed: 0,
            hold_from: None,
            state,
        }
    }

    /// Everything fed before this offset may go upstream; what follows is held back until the
    /// `_method` value it belongs to is judged.
    pub fn safe(&self) -> u64 {
        self.hold_from.unwrap_or(self.fed)
    }

    /// Read the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), MethodInForm> {
        for &b in chunk {
            self.byte(b)?;
            self.fed += 1;
        }
        Ok(())
    }

    /// The body ended: judge a value it ended in.
    pub fn finish(&mut self) -> Result<(), MethodInForm> {
        let value = match &mut self.state {
            State::Url(UrlState::Method(v)) => form_decode(std::mem::take(v)),
            State::Multipart(m) => match &mut m.part {
                Part::Method(v) => std::mem::take(v),
                _ => return Ok(()),
            },
            State::Url(_) => return Ok(()),
        };
        self.hold_from = None;
        Self::judge(&self.method, &value)
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

    fn byte(&mut self, b: u8) -> Result<(), MethodInForm> {
        let at = self.fed;
        match &mut self.state {
            State::Url(url) => match url {
                UrlState::Key(key) => match b {
                    b'=' => {
                        if is_method_parameter(&form_decode(key)) {
                            *url = UrlState::Method(Vec::new());
                            self.hold_from = Some(at + 1);
                        } else {
                            *url = UrlState::Skip;
                        }
                    }
                    b'&' | b';' => key.clear(),
                    _ if key.len() < MAX_KEY => key.push(b),
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
                        return Self::judge(&self.method, &decoded);
                    }
                    value.push(b);
                    if value.len() > MAX_VALUE {
                        return Err(MethodInForm);
                    }
                }
            },
            State::Multipart(m) => {
                let found = m.advance(b);
                match &mut m.part {
                    Part::Content if found => m.part = Part::AfterDelimiter(Vec::new()),
                    Part::Content => {}
                    Part::AfterDelimiter(seen) => {
                        // The closing delimiter (`--` after it) is not trusted to end the
                        // body: PHP reads parts after it. Whatever follows is content.
                        seen.push(b);
                        if seen.starts_with(b"--") {
                            m.part = Part::Content;
                        } else if b == b'\n' {
                            m.part = Part::Headers {
                                line: Vec::new(),
                                method: false,
                            };
                        } else if seen.len() > MAX_KEY {
                            // Not a delimiter line after all: part of some content.
                            m.part = Part::Content;
                        }
                    }
                    Part::Headers { line, method } => {
                        if b != b'\n' {
                            if line.len() < MAX_KEY {
                                line.push(b);
                            }
                            return Ok(());
                        }
                        let l = line.strip_suffix(b"\r").unwrap_or(line);
                        if l.is_empty() {
                            if *method {
                                m.part = Part::Method(Vec::new());
                                self.hold_from = Some(at + 1);
                            } else {
                                m.part = Part::Content;
                            }
                        } else {
                            *method |= part_is_method(l);
                            line.clear();
                        }
                    }
                    Part::Method(value) => {
                        value.push(b);
                        if found {
                            // The value ends before the delimiter (and the CR before it).
                            // The delimiter's line break may be the blank line's own.
                            let len = value.len().saturating_sub(m.next.pattern.len());
                            let content = &value[..len];
                            let content = content.strip_suffix(b"\r").unwrap_or(content);
                            let verdict = Self::judge(&self.method, content);
                            m.part = Part::AfterDelimiter(Vec::new());
                            self.hold_from = None;
                            return verdict;
                        }
                        if value.len() > MAX_VALUE + m.next.pattern.len() {
                            return Err(MethodInForm);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl MultipartState {
    /// Feed one byte to the delimiter matcher; whether a whole delimiter just ended.
    fn advance(&mut self, b: u8) -> bool {
        if self.opened {
            return self.next.advance(b);
        }
        self.opened = self.first.advance(b);
        self.opened
    }
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

/// Whether a part header line is a `Content-Disposition` whose `name` reads as `_method`.
fn part_is_method(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    if !line[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"content-disposition")
    {
        return false;
    }
    line[colon + 1..].split(|&b| b == b';').any(|param| {
        let param = param.trim_ascii();
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            return false;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"name") {
            return false;
        }
        let value = param[eq + 1..].trim_ascii();
        let value = value.strip_prefix(b"\"").unwrap_or(value);
        let value = value.strip_suffix(b"\"").unwrap_or(value);
        is_method_parameter(value)
    })
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
        let post = Method::POST;
        let url = Some(FormKind::UrlEncoded);
        for (cts, want) in [
            (&[][..], url.clone()),
            (&[""][..], url.clone()),
            (&["application/x-www-form-urlencoded"][..], url.clone()),
            (
                &["Application/X-WWW-Form-Urlencoded ; charset=UTF-8"][..],
                url.clone(),
            ),
            (
                &["application/x-www-form-urlencoded, text/plain"][..],
                url.clone(),
            ),
            (
                &["application/json", "application/x-www-form-urlencoded"][..],
                url.clone(),
            ),
            (&["multipart/form-data"][..], url.clone()),
            (
                &["multipart/form-data; boundary=XyZ"][..],
                Some(FormKind::Multipart(b"XyZ".to_vec())),
            ),
            (
                &["Multipart/Mixed; BOUNDARY=\"a b;c\""][..],
                Some(FormKind::Multipart(b"a b".to_vec())),
            ),
            (&["application/json"][..], None),
            (&["text/plain"][..], None),
        ] {
            assert_eq!(form_kind(&post, &headers(cts)), want, "{cts:?}");
        }
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(form_kind(&m, &headers(&[])), None, "{m}");
        }
    }

    /// Feed `body` in chunks of `size`; the verdict, and checks that nothing of a `_method`
    /// value was ever declared safe before the value ended.
    fn scan(kind: &FormKind, body: &[u8], size: usize) -> Result<(), MethodInForm> {
        let mut s = MethodFieldScan::new(kind.clone(), Method::POST);
        for chunk in body.chunks(size.max(1)) {
            s.feed(chunk)?;
            assert!(s.safe() <= s.fed);
        }
        s.finish()
    }

    fn url(body: &str) -> Result<(), MethodInForm> {
        let mut verdict = None;
        for size in [1, 2, 3, 7, 4096] {
            let v = scan(&FormKind::UrlEncoded, body.as_bytes(), size);
            if let Some(first) = verdict {
                assert_eq!(first, v, "chunk size {size} disagrees for {body:?}");
            }
            verdict = Some(v);
        }
        verdict.unwrap()
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
            "+_method=DELETE",
            "_method[]=DELETE",
            "_METHOD=DELETE",
            "_method=%44ELETE",
            "_method=GET",
            &format!("_method={}", "A".repeat(300)),
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
        let mut s = MethodFieldScan::new(FormKind::UrlEncoded, Method::POST);
        s.feed(b"a=1&_method=PO").unwrap();
        assert_eq!(s.safe(), 12, "held from the value's first byte");
        s.feed(b"ST").unwrap();
        assert_eq!(s.safe(), 12);
        s.feed(b"&b=2").unwrap();
        assert_eq!(s.safe(), 20, "released once judged");
        let mut s = MethodFieldScan::new(FormKind::UrlEncoded, Method::POST);
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
        let kind = FormKind::Multipart(boundary.as_bytes().to_vec());
        let mut verdict = None;
        for size in [1, 2, 5, 13, 8192] {
            let v = scan(&kind, body, size);
            if let Some(first) = verdict {
                assert_eq!(first, v, "chunk size {size} disagrees");
            }
            verdict = Some(v);
        }
        verdict.unwrap()
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
            ("X-Note: name=\"_method\"", "DELETE"),
        ] {
            let body = multipart(&[file, (name_header, value)], b);
            assert_eq!(mp(&body, b), Ok(()), "{name_header} {value}");
        }
        // Bare LF line ends (PHP accepts them).
        let lf =
            format!("--{b}\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--{b}--\n");
        assert_eq!(mp(lf.as_bytes(), b), Err(MethodInForm));
        // A preamble, and a first delimiter that does not start a line (Rack finds it).
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
            for kind in [FormKind::UrlEncoded, FormKind::Multipart(b"BB".to_vec())] {
                let whole = scan(&kind, &body, body.len().max(1));
                let mut s = MethodFieldScan::new(kind.clone(), Method::POST);
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
