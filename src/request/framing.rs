//! Request framing checks against smuggling (SPEC 4 step 2): ambiguous bodies get 400.
//!
//! hyper already refuses most malformed framing on its own; this is the explicit, tested
//! statement of the rule, applied before anything is forwarded, so that a message whose length
//! two parsers could read differently never reaches an upstream.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Why a request's framing is ambiguous. Every variant is a 400 and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.3: a smuggling signal).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// `Transfer-Encoding` other than exactly `chunked`: a final coding that is not
    /// `chunked` (SPEC 4), `chunked` applied more than once, an empty or non-ASCII value, or
    /// another coding before `chunked` (`gzip, chunked`). certguard removes the chunking and
    /// `Transfer-Encoding` is hop-by-hop, so a `gzip` coding could not be relayed faithfully:
    /// the upstream would receive gzip bytes as a plain body.
    #[error("Transfer-Encoding other than chunked")]
    NotChunked,
    /// Several `Content-Length` values (header lines or a comma list) that differ, or a value
    /// that is not a plain decimal number.
    #[error("conflicting Content-Length values")]
    ConflictingLength,
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Check the request head's framing headers (HTTP/1.x only; HTTP/2 framing is by frames).
///
/// Transfer codings are read across every `Transfer-Encoding` line as one comma-separated
/// list, trimmed and case-insensitive; it must consist of `chunked` alone. Identical `Content-Length` values (`5, 5`, or two `5` lines) are accepted as
/// RFC 9110 8.6 allows; they are compared as numbers, and each must be ASCII digits only.
pub fn check(headers: &HeaderMap) -> Result<(), FramingError> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    if has_te && headers.contains_key(CONTENT_LENGTH) {
        return Err(FramingError::LengthAndChunked);
    }
    if has_te {
        check_transfer_encoding(headers)?;
    }
    check_content_length(headers)
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut codings = 0usize;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| FramingError::NotChunked)?;
        for coding in text.split(',').map(trim_ows).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(FramingError::NotChunked);
            }
            codings += 1;
        }
    }
    if codings == 1 {
        Ok(())
    } else {
        Err(FramingError::NotChunked)
    }
}

fn check_content_length(headers: &HeaderMap) -> Result<(), FramingError> {
    content_length(headers.get_all(CONTENT_LENGTH).iter().map(|v| v.as_bytes())).map(|_| ())
}

/// The body length that `Content-Length` values (header lines, each possibly a comma list)
/// agree on; `None` without any. Each must be ASCII digits only, and all must be equal.
fn content_length<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<u64>, FramingError> {
    let mut length: Option<u64> = None;
    for value in values {
        let text = std::str::from_utf8(value).map_err(|_| FramingError::ConflictingLength)?;
        for item in text.split(',').map(trim_ows) {
            // `u64::from_str` would also take a leading `+`; only digits are a length.
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::ConflictingLength);
            }
            let n: u64 = item.parse().map_err(|_| FramingError::ConflictingLength)?;
            match length {
                Some(prev) if prev != n => return Err(FramingError::ConflictingLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Follows an HTTP/1 request stream through the bytes hyper reads, so that every request head
/// (pipelined ones included) is judged for Content-Length plus Transfer-Encoding.
///
/// hyper resolves that conflict by dropping Content-Length before the service sees the
/// request, and SPEC 4 wants such requests refused, so the conflict must be seen on the raw
/// bytes. The tracker parses heads with httparse (the parser hyper uses, so bare-LF heads end
/// where hyper's end) and skips bodies by their framing (Content-Length, or chunked as hyper
/// decodes it) to find the next head. One verdict per head is queued, in order; the service
/// takes them in the same order as hyper hands it the requests. On anything it cannot follow
/// (a parse error, an upgrade's raw bytes, a head over the size limit) it stops for good: hyper
/// refuses the same bytes or the connection has stopped being HTTP/1.
#[derive(Debug)]
pub struct StreamTracker {
    state: Track,
    /// Bytes of an incomplete head, chunk-size line, chunk terminator or trailer section.
    buf: Vec<u8>,
    /// Largest head (and trailer section) followed; larger ones end the tracking.
    limit: usize,
    /// One entry per complete head not yet taken: did it carry both framing headers?
    verdicts: std::collections::VecDeque<bool>,
    /// Chunked body: the size being read, extension bytes and trailer bytes so far.
    chunk_size: u64,
    extension_bytes: u64,
    trailer_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Track {
    Head,
    /// Content-Length body bytes still to come.
    Body(u64),
    Chunked(Chunk),
    /// Stopped following the stream.
    Lost,
}

/// Where in a chunked body the stream is: the states of hyper's own chunked decoder
/// (`proto/h1/decode.rs`), so that both read the same bytes as the same thing. A bare LF is
/// accepted exactly where hyper accepts one: nowhere but inside a trailer line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Before the first hex digit of a chunk size.
    Start,
    Size,
    /// Whitespace after the size.
    SizeLws,
    Extension,
    /// After the CR of the size line.
    SizeLf,
    /// Chunk data bytes still to come.
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    /// After the last chunk or a trailer line: CR ends the body, anything else starts a trailer.
    EndCr,
    EndLf,
}

/// Chunk-extension bytes hyper accepts per body.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
/// Header lines httparse is given room for; hyper's own default limit is 100.
const MAX_HEADERS: usize = 128;

/// What parsing the start of a request stream found.
enum Judged {
    /// A complete head of this many bytes.
    Complete(usize, Verdict),
    Partial,
    /// Not HTTP/1 that hyper would accept.
    Invalid,
}

/// What a complete head says about the stream.
#[derive(Clone, Copy)]
struct Verdict {
    /// Both Content-Length and Transfer-Encoding.
    conflict: bool,
    /// What follows the head.
    next: Track,
}

/// Parse the head at the start of `bytes` and judge its framing.
fn judge(bytes: &[u8]) -> Judged {
    // Uninitialized slots: filling 128 empty headers first would cost more than the parse.
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Judged::Partial,
        Err(_) => return Judged::Invalid,
    };
    let te = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let lengths = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value);
    let length = content_length(lengths.clone());
    let next = if te {
        // hyper reads the body as chunked whenever Transfer-Encoding is present (or refuses
        // the request).
        Track::Chunked(Chunk::Start)
    } else {
        // Lengths hyper refuses end the tracking (so does the connection).
        match length {
            Ok(None | Some(0)) => Track::Head,
            Ok(Some(n)) => Track::Body(n),
            Err(_) => Track::Lost,
        }
    };
    Judged::Complete(
        len,
        Verdict {
            conflict: te && lengths.count() > 0,
            next,
        },
    )
}

impl StreamTracker {
    /// A tracker for heads of at most `limit` bytes.
    pub fn new(limit: usize) -> StreamTracker {
        StreamTracker {
            state: Track::Head,
            buf: Vec::new(),
            limit,
            verdicts: std::collections::VecDeque::new(),
            chunk_size: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// The verdict for the oldest head not yet taken: `true` when it had both Content-Length
    /// and Transfer-Encoding. `false` when there is none (the tracker stopped following).
    pub fn take_verdict(&mut self) -> bool {
        self.verdicts.pop_front().unwrap_or(false)
    }

    /// Whether the tracker stopped following the stream, so later heads go unjudged.
    pub fn is_lost(&self) -> bool {
        self.state == Track::Lost
    }

    /// Follow the next bytes of the stream, in the order they were read.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match self.state {
                Track::Lost => return,
                Track::Head => self.head(data),
                Track::Body(left) => self.skip(data, left, Track::Head, Track::Body),
                Track::Chunked(Chunk::Data(left)) => {
                    self.skip(data, left, Track::Chunked(Chunk::DataCr), |rest| {
                        Track::Chunked(Chunk::Data(rest))
                    })
                }
                Track::Chunked(state) => match data.split_first() {
                    Some((&byte, rest)) => {
                        self.chunked(state, byte);
                        rest
                    }
                    None => data,
                },
            };
        }
    }

    /// Skip up to `left` body bytes; `done` once all are skipped, else `more(rest)`.
    fn skip<'a>(
        &mut self,
        data: &'a [u8],
        left: u64,
        done: Track,
        more: fn(u64) -> Track,
    ) -> &'a [u8] {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
        self.state = match left - n as u64 {
            0 => done,
            rest => more(rest),
        };
        &data[n..]
    }

    fn lose(&mut self) {
        self.state = Track::Lost;
        self.buf = Vec::new();
    }

    fn head<'a>(&mut self, mut data: &'a [u8]) -> &'a [u8] {
        if self.buf.is_empty() {
            // Empty lines before a request line are skipped (RFC 9112 2.2), by httparse too.
            let start = data
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(data.len());
            data = &data[start..];
            if data.is_empty() {
                return data;
            }
            // The usual case: a whole head in one read, judged where it lies (no copy, no
            // search for its end). A partial one is buffered below; later reads append to it
            // and parse only once its end can be there, so a trickled head stays linear.
            let take = data.len().min(self.limit);
            match judge(&data[..take]) {
                Judged::Complete(len, verdict) => {
                    self.apply(verdict);
                    return &data[len.min(data.len())..];
                }
                Judged::Invalid => {
                    self.lose();
                    return &[];
                }
                Judged::Partial => {}
            }
        }
        let old = self.buf.len();
        let take = data.len().min(self.limit.saturating_sub(old));
        self.buf.extend_from_slice(&data[..take]);
        // Parse only when the new bytes (with the 2 before them) can hold the blank line
        // that ends a head; a head trickled in byte by byte then costs linear time.
        let from = old.saturating_sub(2);
        let ends = self.buf[from..].windows(2).any(|w| w == b"\n\n")
            || self.buf[from..].windows(3).any(|w| w == b"\n\r\n");
        if !ends {
            if self.buf.len() >= self.limit {
                self.lose();
            }
            return &data[take..];
        }
        match judge(&self.buf) {
            Judged::Complete(len, verdict) => {
                self.apply(verdict);
                self.buf.clear();
                // `len` counts bytes of `buf`, which held `old` bytes before this read.
                &data[len.saturating_sub(old).min(data.len())..]
            }
            Judged::Partial => {
                if self.buf.len() >= self.limit {
                    self.lose();
                }
                &data[take..]
            }
            Judged::Invalid => {
                self.lose();
                &[]
            }
        }
    }

    /// Queue a complete head's verdict and follow its body.
    fn apply(&mut self, verdict: Verdict) {
        self.verdicts.push_back(verdict.conflict);
        self.state = verdict.next;
        if matches!(verdict.next, Track::Chunked(_)) {
            self.extension_bytes = 0;
            self.trailer_bytes = 0;
        }
    }

    /// One byte of a chunked body (outside chunk data), as hyper's decoder reads it.
    fn chunked(&mut self, state: Chunk, byte: u8) {
        use Chunk::*;
        let hex = |b: u8| char::from(b).to_digit(16).map(u64::from);
        let next = match (state, byte) {
            (Start, b) => hex(b).map(|d| {
                self.chunk_size = d;
                Size
            }),
            (Size | SizeLws, b'\t' | b' ') => Some(SizeLws),
            (Size | SizeLws, b';') => Some(Extension),
            (Size | SizeLws | Extension, b'\r') => Some(SizeLf),
            (Size, b) => hex(b)
                .and_then(|d| self.chunk_size.checked_mul(16)?.checked_add(d))
                .map(|size| {
                    self.chunk_size = size;
                    Size
                }),
            (Extension, b'\n') => None,
            (Extension, _) => {
                self.extension_bytes += 1;
                (self.extension_bytes < MAX_EXTENSION_BYTES).then_some(Extension)
            }
            (SizeLf, b'\n') if self.chunk_size == 0 => Some(EndCr),
            (SizeLf, b'\n') => Some(Data(self.chunk_size)),
            (DataCr, b'\r') => Some(DataLf),
            (DataLf, b'\n') => Some(Start),
            (Trailer, b'\r') => Some(TrailerLf),
            (EndCr, b'\r') => Some(EndLf),
            (Trailer | EndCr, _) => {
                self.trailer_bytes += 1;
                (self.trailer_bytes < self.limit).then_some(Trailer)
            }
            (TrailerLf, b'\n') => Some(EndCr),
            (EndLf, b'\n') => {
                self.state = Track::Head;
                return;
            }
            _ => None,
        };
        match next {
            Some(chunk) => self.state = Track::Chunked(chunk),
            None => self.lose(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn table() {
        use FramingError::*;
        let cl = "content-length";
        let te = "transfer-encoding";
        type Case<'a> = (&'a [(&'a str, &'a [u8])], Result<(), FramingError>);
        let cases: &[Case] = &[
            (&[], Ok(())),
            (&[("host", b"a")], Ok(())),
            // Content-Length alone.
            (&[(cl, b"0")], Ok(())),
            (&[(cl, b"42")], Ok(())),
            (&[(cl, b"42"), (cl, b"42")], Ok(())),
            (&[(cl, b"42, 42")], Ok(())),
            (&[(cl, b"42,42"), (cl, b" 42 ")], Ok(())),
            (&[(cl, b"042"), (cl, b"42")], Ok(())),
            (&[(cl, b"42"), (cl, b"43")], Err(ConflictingLength)),
            (&[(cl, b"42, 43")], Err(ConflictingLength)),
            (&[(cl, b"42,")], Err(ConflictingLength)),
            (&[(cl, b"")], Err(ConflictingLength)),
            (&[(cl, b"abc")], Err(ConflictingLength)),
            (&[(cl, b"+42")], Err(ConflictingLength)),
            (&[(cl, b"-1")], Err(ConflictingLength)),
            (&[(cl, b"4 2")], Err(ConflictingLength)),
            (&[(cl, b"0x10")], Err(ConflictingLength)),
            (&[(cl, b"99999999999999999999999")], Err(ConflictingLength)),
            (&[(cl, b"4\xb2")], Err(ConflictingLength)),
            // Transfer-Encoding alone.
            (&[(te, b"chunked")], Ok(())),
            (&[(te, b"Chunked")], Ok(())),
            (&[(te, b" CHUNKED ")], Ok(())),
            (&[(te, b"chunked,")], Ok(())),
            (&[(te, b", chunked")], Ok(())),
            // Another coding before chunked could not be relayed faithfully.
            (&[(te, b"gzip, chunked")], Err(NotChunked)),
            (&[(te, b"gzip"), (te, b"chunked")], Err(NotChunked)),
            (&[(te, b"gzip,chunked,")], Err(NotChunked)),
            (&[(te, b"identity, chunked")], Err(NotChunked)),
            (&[(te, b"chunked, gzip")], Err(NotChunked)),
            (&[(te, b"chunked"), (te, b"gzip")], Err(NotChunked)),
            (&[(te, b"gzip")], Err(NotChunked)),
            (&[(te, b"identity")], Err(NotChunked)),
            (&[(te, b"")], Err(NotChunked)),
            (&[(te, b" , ")], Err(NotChunked)),
            (&[(te, b"chunked, chunked")], Err(NotChunked)),
            (&[(te, b"chunked"), (te, b"chunked")], Err(NotChunked)),
            (&[(te, b"xchunked")], Err(NotChunked)),
            (&[(te, b"chunked;q=1")], Err(NotChunked)),
            (&[(te, b"\"chunked\"")], Err(NotChunked)),
            (&[(te, b"chunk\xe9d")], Err(NotChunked)),
            // Both.
            (&[(cl, b"5"), (te, b"chunked")], Err(LengthAndChunked)),
            (&[(te, b"chunked"), (cl, b"0")], Err(LengthAndChunked)),
            (&[(te, b"gzip"), (cl, b"5")], Err(LengthAndChunked)),
            (&[(te, b""), (cl, b"abc")], Err(LengthAndChunked)),
        ];
        for (pairs, want) in cases {
            assert_eq!(&check(&headers(pairs)), want, "{pairs:?}");
        }
    }

    /// Feed `stream` in pieces of `step` bytes; the verdicts in order.
    fn verdicts(stream: &[u8], step: usize) -> Vec<bool> {
        let mut t = StreamTracker::new(65536);
        for piece in stream.chunks(step) {
            t.feed(piece);
        }
        let mut out = Vec::new();
        while !t.verdicts.is_empty() {
            out.push(t.take_verdict());
        }
        out
    }

    #[test]
    fn tracker_judges_every_head_of_a_stream() {
        let smuggle = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let get = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        let post_cl = "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nGET";
        let post_chunked = "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        let bare_lf =
            "POST /d HTTP/1.1\nHost: a\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        let cases: &[(String, Vec<bool>)] = &[
            (get.to_string(), vec![false]),
            (smuggle.to_string(), vec![true]),
            // Pipelined: the second head is judged too, after a body-less GET...
            (format!("{get}{smuggle}"), vec![false, true]),
            // ...after a Content-Length body that looks like a head...
            (format!("{post_cl}{smuggle}"), vec![false, true]),
            // ...and after a chunked body with extensions and trailers.
            (format!("{post_chunked}{smuggle}{get}"), vec![false, true, false]),
            // Chunk sizes with many leading zeros, and long extensions: hyper takes both.
            (
                format!(
                    "POST /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                     000000000000000000005 ;{}\r\nhello\r\n0\r\n\r\n{smuggle}",
                    "e".repeat(8000)
                ),
                vec![false, true],
            ),
            // Bare LF line ends (httparse, like hyper, accepts them).
            (bare_lf.to_string(), vec![true]),
            (format!("{get}{bare_lf}"), vec![false, true]),
            // Empty lines before a request line are skipped.
            (format!("\r\n\r\n{smuggle}"), vec![true]),
            // Content-Length and Transfer-Encoding in either order, any case.
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n0\r\n\r\n"
                    .to_string(),
                vec![true],
            ),
        ];
        for (stream, want) in cases {
            for step in [1, 2, 7, 64, stream.len()] {
                assert_eq!(
                    &verdicts(stream.as_bytes(), step),
                    want,
                    "step {step}: {stream:?}"
                );
            }
        }
    }

    #[test]
    fn tracker_stops_on_what_it_cannot_follow() {
        // Garbage, an oversized head, a bad chunk size, a bad Content-Length: no verdicts
        // after that point (and never a panic).
        let get = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        for junk in [
            &b"\x00\x01 not http\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let mut stream = junk.to_vec();
            stream.extend_from_slice(get);
            let v = verdicts(&stream, 3);
            assert!(v.len() <= 1 && v.iter().all(|c| !c), "{junk:?}: {v:?}");
        }
        // A bare LF inside a trailer line is an ordinary byte to hyper: the line (and the
        // body) go on to the next CRLF, so the GET below is trailer bytes, not a request.
        let trailer_lf = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                          0\r\nx: 1\n\r\nGET /swallowed HTTP/1.1\r\n\r\n";
        let smuggle = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 5, 300] {
            assert_eq!(
                verdicts(format!("{trailer_lf}{smuggle}").as_bytes(), step),
                vec![false, true],
                "step {step}"
            );
        }
        // A bare LF where hyper wants CRLF (size line, after data, extension) ends tracking.
        for bad in [
            "5\nhello\r\n0\r\n\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "5;ext\nhello\r\n0\r\n\r\n",
        ] {
            let stream =
                format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{bad}{smuggle}");
            assert_eq!(verdicts(stream.as_bytes(), 4), vec![false], "{bad:?}");
        }

        let mut t = StreamTracker::new(64);
        t.feed(&[b'a'; 100]);
        t.feed(get);
        assert!(
            t.verdicts.is_empty(),
            "a head over the limit ends the tracking"
        );
        assert!(!t.take_verdict());
        assert!(t.is_lost());
        let mut ok = StreamTracker::new(64);
        ok.feed(get);
        assert!(!ok.is_lost());
    }
}
