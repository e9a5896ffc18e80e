//! Bounded line reading, shared by the control socket (async) and log replay (sync):
//! a line longer than the limit is consumed to its newline and reported, never buffered
//! whole, so one huge line costs no memory and the stream stays in step.

/// Takes the next piece of `chunk` into `buf` (at most `max` bytes of a line kept).
/// Returns how many bytes of `chunk` were consumed and whether a newline ended the line;
/// `too_long` turns true once the line passed `max` (`buf` is then emptied).
pub fn take(chunk: &[u8], buf: &mut Vec<u8>, max: usize, too_long: &mut bool) -> (usize, bool) {
    take_from(chunk, buf, 0, max, too_long)
}

/// Like [`take`], for a line that starts at `buf[start..]` (what is before it stays).
pub fn take_from(chunk: &[u8], buf: &mut Vec<u8>, start: usize, max: usize, too_long: &mut bool) -> (usize, bool) {
    let (consumed, done) = match memchr::memchr(b'\n', chunk) {
        Some(i) => (i + 1, true),
        None => (chunk.len(), false),
    };
    if !*too_long {
        let payload = if done { consumed - 1 } else { consumed };
        if buf.len() - start + payload > max {
            *too_long = true;
            buf.truncate(start);
        } else {
            buf.extend_from_slice(&chunk[..payload]);
        }
    }
    (consumed, done)
}
