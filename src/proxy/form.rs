//! A form body on its way upstream, read for a `_method` field ([`crate::request::form`]).
//!
//! The bytes of a `_method` value are held back until the value is judged; a value that names
//! another method fails the body, so the upstream never receives a complete form it would run
//! as that method, and the client gets 400.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::stream::{BoxError, RequestState};
use crate::request::form::MethodFieldScan;

/// `inner` (the client's body) with its form judged as it passes.
pub struct FormGuard<B> {
    inner: B,
    scan: MethodFieldScan,
    state: Arc<RequestState>,
    /// Body bytes given to the upstream so far.
    emitted: u64,
    /// Bytes read but held back (a `_method` value not judged yet).
    held: BytesMut,
    /// Trailers read while bytes were held: sent after them.
    trailers: Option<Frame<Bytes>>,
    /// The client's body has ended and was judged; what is held goes out, then the end.
    finished: bool,
    /// An error was returned: nothing more is read, judged or sent.
    failed: bool,
}

impl<B> FormGuard<B> {
    pub fn new(inner: B, scan: MethodFieldScan, state: Arc<RequestState>) -> Self {
        FormGuard {
            inner,
            scan,
            state,
            emitted: 0,
            held: BytesMut::new(),
            trailers: None,
            finished: false,
            failed: false,
        }
    }

    fn refuse(&mut self, e: crate::request::form::MethodInForm) -> BoxError {
        self.held.clear();
        self.trailers = None;
        self.failed = true;
        self.state.refuse_method_in_form();
        Box::new(e)
    }

    /// What may go out now of the held bytes followed by `data`, given what the scan has
    /// judged safe; the rest stays held.
    fn release(&mut self, data: Bytes) -> Option<Bytes> {
        let safe =
            usize::try_from(self.scan.safe().saturating_sub(self.emitted)).unwrap_or(usize::MAX);
        let out = if self.held.is_empty() && safe >= data.len() {
            data
        } else {
            self.held.extend_from_slice(&data);
            let n = safe.min(self.held.len());
            self.held.split_to(n).freeze()
        };
        self.emitted += out.len() as u64;
        (!out.is_empty()).then_some(out)
    }

    /// Everything still held, once the body has been judged whole.
    fn drain(&mut self) -> Option<Bytes> {
        if self.held.is_empty() {
            return None;
        }
        let out = self.held.split().freeze();
        self.emitted += out.len() as u64;
        Some(out)
    }
}

impl<B> Body for FormGuard<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if this.finished {
                if let Some(out) = this.drain() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = this.scan.feed(&data) {
                            return Poll::Ready(Some(Err(this.refuse(e))));
                        }
                        if let Some(out) = this.release(data) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // All held: read on.
                    }
                    Err(frame) => {
                        // Trailers end the body.
                        if let Err(e) = this.scan.finish() {
                            return Poll::Ready(Some(Err(this.refuse(e))));
                        }
                        this.trailers = Some(frame);
                        this.finished = true;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.held.clear();
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if let Err(e) = this.scan.finish() {
                        return Poll::Ready(Some(Err(this.refuse(e))));
                    }
                    this.finished = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Held bytes still have to go out, and an unjudged value has to be judged first.
        // Until the client's body has ended, it is not: the end is where the scan judges a
        // value the body ends in (wrap only bodies that are not empty from the start).
        self.failed || (self.finished && self.held.is_empty() && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let held = self.held.len() as u64;
        // Upper first: `set_lower` asserts lower <= upper.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(hint.lower().saturating_add(held));
        hint
    }
}
