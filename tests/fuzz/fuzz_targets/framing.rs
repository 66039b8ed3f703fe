//! The HTTP/1 framing tracker fed an arbitrary byte stream in arbitrary chunks: never panics,
//! and its verdicts do not depend on how the stream was cut into reads (hyper reads whatever
//! the socket gives it, so the tracker must follow the same bytes the same way however they
//! arrive).
#![no_main]

use certguard::request::framing::StreamTracker;
use libfuzzer_sys::fuzz_target;

/// Head limit: small, so the "head too large" path is reached too.
const LIMIT: usize = 512;

fn verdicts(tracker: &mut StreamTracker) -> (Vec<bool>, bool) {
    let mut v = Vec::new();
    // take_verdict is false once the queue is empty; 64 is more heads than a 4 KiB input
    // needs to be told apart.
    for _ in 0..64 {
        v.push(tracker.take_verdict());
    }
    (v, tracker.is_lost())
}

fuzz_target!(|data: &[u8]| {
    // First byte: a seed for the cut points; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = StreamTracker::new(LIMIT);
    whole.feed(stream);

    let mut pieces = StreamTracker::new(LIMIT);
    let mut rest = stream;
    let mut step = usize::from(seed % 17) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        pieces.feed(&rest[..n]);
        rest = &rest[n..];
        step = (step * 7 + 3) % 23 + 1;
    }
    assert_eq!(verdicts(&mut whole), verdicts(&mut pieces));
});
