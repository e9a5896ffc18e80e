//! Bounded line reading, shared by the control socket (async) and log replay (sync):
//! a line longer than the limit is consumed to its newline and reported, never buffered
//! whole, so one huge line costs no memory and the stream stays in step.

/// Takes the next piece of `chunk` into `buf` (at most `max` bytes of a line kept).
/// Returns how many bytes of `chunk` were consumed and whether a newline ended the line;
/// `too_long` turns true once the line passed `max` (`buf` is then emptied).
pub fn take(chunk: &[u8], buf: &mut Vec<u8>, max: usize, too_long: &mut bool) -> (usize, bool) {
    let (consumed, done) = match chunk.iter().position(|b| *b == b'\n') {
        Some(i) => (i + 1, true),
        None => (chunk.len(), false),
    };
    if !*too_long {
        let payload = if done { consumed - 1 } else { consumed };
        if buf.len() + payload > max {
            *too_long = true;
            buf.clear();
        } else {
            buf.extend_from_slice(&chunk[..payload]);
        }
    }
    (consumed, done)
}
