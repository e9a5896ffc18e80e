//! Following log files by path, through rotation, truncation and restarts.
//!
//! A [`Tailer`] follows every file a pattern (a path or a glob, re-expanded on each poll)
//! names. [`Tailer::poll`] is the source of truth, run periodically (file events only
//! wake it early, inotify alone misses rotations):
//!
//! - a different inode at the path (rename+create, delete+recreate): the old file is
//!   drained to its end through the handle still open, then the new one read from 0;
//! - the same inode, but shorter than what was read or with a different first bytes
//!   (copytruncate): read again from 0;
//! - a restart resumes from a [`Checkpoint`] (device, inode, offset, hash of the first
//!   bytes); if the file was rotated while banshare was stopped, the rotated file is
//!   found in the same directory by its inode and its rest is read first.
//!
//! Lines come out complete (a partial last line waits for its newline); lines over
//! [`MAX_LINE`] are skipped and counted. Which lines are too old to matter is the
//! detector's business, by log time.

pub mod journal;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use crate::detect::scan::MAX_LINE;

/// Bytes of a file's start that identify it across a truncation.
const HEAD: usize = 128;

/// Where reading of one file stopped: enough to resume exactly there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub device: u64,
    pub inode: u64,
    pub offset: u64,
    /// FNV-1a of the first `head_len` bytes (stable across banshare versions).
    pub head_hash: u64,
    pub head_len: u64,
}

impl Checkpoint {
    /// The text form kept in the store's `head_hash` column: `len:hash`.
    pub fn head_text(&self) -> String {
        format!("{}:{:016x}", self.head_len, self.head_hash)
    }

    pub fn parse_head(text: &str) -> Option<(u64, u64)> {
        let (len, hash) = text.split_once(':')?;
        Some((len.parse().ok()?, u64::from_str_radix(hash, 16).ok()?))
    }
}

/// What happened while polling, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub lines: u64,
    pub too_long: u64,
    pub rotations: u64,
    pub truncations: u64,
}

struct Followed {
    file: File,
    device: u64,
    inode: u64,
    offset: u64,
    head_hash: u64,
    head_len: u64,
    /// The start of a line whose newline has not been written yet.
    partial: Vec<u8>,
    /// Inside a line already longer than MAX_LINE: drop bytes up to its newline.
    discarding: bool,
    /// A file rotated while banshare was stopped, and where reading it stopped: read
    /// its rest before this file.
    pending_rotated: Option<(PathBuf, u64)>,
}

impl Followed {
    /// An open file, to be read from `offset`.
    fn at(file: File, meta: &std::fs::Metadata, offset: u64) -> Followed {
        Followed {
            file,
            device: meta.dev(),
            inode: meta.ino(),
            offset,
            head_hash: 0,
            head_len: 0,
            partial: Vec::new(),
            discarding: false,
            pending_rotated: None,
        }
    }
}

/// Follows the files of one pattern.
pub struct Tailer {
    pattern: String,
    files: BTreeMap<PathBuf, Followed>,
    pub counters: Counters,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn head(file: &File, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

impl Tailer {
    pub fn new(pattern: &str) -> Tailer {
        Tailer { pattern: pattern.to_string(), files: BTreeMap::new(), counters: Counters::default() }
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The files the pattern names now.
    fn expand(&self) -> Vec<PathBuf> {
        match glob::glob(&self.pattern) {
            Ok(paths) => paths.filter_map(Result::ok).filter(|p| p.is_file()).collect(),
            Err(_) => vec![PathBuf::from(&self.pattern)].into_iter().filter(|p| p.is_file()).collect(),
        }
    }

    /// Reads every complete new line of every file, handing each to `sink` with its
    /// file. `saved` gives the checkpoint of a file not followed yet. Returns the
    /// checkpoints of the files that moved.
    pub fn poll(
        &mut self,
        saved: &dyn Fn(&Path) -> Option<Checkpoint>,
        sink: &mut dyn FnMut(&Path, &mut Vec<u8>),
    ) -> Vec<(PathBuf, Checkpoint)> {
        let mut moved = Vec::new();
        let present = self.expand();
        for path in &present {
            if let Err(error) = self.poll_file(path, saved, sink, &mut moved) {
                tracing::warn!(path = %path.display(), %error, "cannot read a followed file: {error}");
            }
        }
        // Files gone from the path (deleted, or rotated away without a successor yet):
        // read what is left through the open handle, then let go.
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(p)).cloned().collect();
        for path in gone {
            if let Some(mut f) = self.files.remove(&path) {
                let _ = self.drain(&path, &mut f, sink, true);
                self.counters.rotations += 1;
                tracing::info!(path = %path.display(), "{} moved away or deleted; waiting for its successor", path.display());
            }
        }
        moved
    }

    fn poll_file(
        &mut self,
        path: &Path,
        saved: &dyn Fn(&Path) -> Option<Checkpoint>,
        sink: &mut dyn FnMut(&Path, &mut Vec<u8>),
        moved: &mut Vec<(PathBuf, Checkpoint)>,
    ) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        let (device, inode, size) = (meta.dev(), meta.ino(), meta.len());
        let mut f = match self.files.remove(path) {
            Some(mut old) if (old.device, old.inode) != (device, inode) => {
                self.drain(path, &mut old, sink, true)?;
                self.counters.rotations += 1;
                tracing::info!(path = %path.display(), "{} rotated; following the new file", path.display());
                self.open(path, None)?
            }
            Some(old) => old,
            None => self.open(path, saved(path))?,
        };
        if size < f.offset || !self.head_matches(&f)? {
            self.counters.truncations += 1;
            tracing::info!(path = %path.display(), "{} truncated; reading it from the start", path.display());
            f.offset = 0;
            f.partial.clear();
            f.discarding = false;
            f.head_len = 0;
        }
        let before = f.offset;
        self.drain(path, &mut f, sink, false)?;
        if f.offset != before || f.head_len == 0 {
            let h = head(&f.file, HEAD)?;
            if (h.len() as u64) > f.head_len {
                f.head_len = h.len() as u64;
                f.head_hash = fnv1a(&h);
            }
            moved.push((path.to_path_buf(), checkpoint_of(&f)));
        }
        self.files.insert(path.to_path_buf(), f);
        Ok(())
    }

    /// Opens `path`, resuming from `saved` when it still describes this file. When the
    /// checkpoint is of another inode, the file rotated while banshare was stopped: the
    /// rest of the old file (found by inode beside it) is read first.
    fn open(&mut self, path: &Path, saved: Option<Checkpoint>) -> io::Result<Followed> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let mut f = Followed::at(file, &meta, 0);
        if let Some(cp) = saved {
            if (cp.device, cp.inode) == (f.device, f.inode) {
                let h = head(&f.file, cp.head_len as usize)?;
                if cp.offset <= meta.len() && h.len() as u64 == cp.head_len && fnv1a(&h) == cp.head_hash {
                    f.offset = cp.offset;
                    f.head_hash = cp.head_hash;
                    f.head_len = cp.head_len;
                }
            } else {
                f.pending_rotated = find_by_inode(path, cp.device, cp.inode).map(|p| (p, cp.offset));
            }
        }
        Ok(f)
    }

    fn head_matches(&self, f: &Followed) -> io::Result<bool> {
        if f.head_len == 0 {
            return Ok(true);
        }
        let h = head(&f.file, f.head_len as usize)?;
        Ok(h.len() as u64 == f.head_len && fnv1a(&h) == f.head_hash)
    }

    /// Reads from the offset to the end, handing out complete lines. With `last`, the
    /// file will not grow again (rotated away): a final line without newline is a line.
    fn drain(
        &mut self,
        path: &Path,
        f: &mut Followed,
        sink: &mut dyn FnMut(&Path, &mut Vec<u8>),
        last: bool,
    ) -> io::Result<()> {
        if let Some((rotated, offset)) = f.pending_rotated.take()
            && let Ok(file) = File::open(&rotated)
        {
            tracing::info!(path = %rotated.display(), "reading the rest of {}, rotated while banshare was stopped", rotated.display());
            let meta = file.metadata()?;
            let mut old = Followed::at(file, &meta, offset);
            self.drain(path, &mut old, sink, true)?;
        }
        f.file.seek(SeekFrom::Start(f.offset))?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = f.file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            f.offset += n as u64;
            self.split(path, f, &chunk[..n], sink);
        }
        if last && !f.partial.is_empty() && !f.discarding {
            self.counters.lines += 1;
            let mut line = std::mem::take(&mut f.partial);
            sink(path, &mut line);
        }
        Ok(())
    }

    fn split(&mut self, path: &Path, f: &mut Followed, mut data: &[u8], sink: &mut dyn FnMut(&Path, &mut Vec<u8>)) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            let (line, rest) = (&data[..i], &data[i + 1..]);
            data = rest;
            if f.discarding || f.partial.len() + line.len() > MAX_LINE {
                f.discarding = false;
                f.partial.clear();
                self.counters.too_long += 1;
                continue;
            }
            f.partial.extend_from_slice(line);
            self.counters.lines += 1;
            let mut complete = std::mem::take(&mut f.partial);
            sink(path, &mut complete);
        }
        if f.discarding {
            return;
        }
        if f.partial.len() + data.len() > MAX_LINE {
            f.discarding = true;
            f.partial.clear();
        } else {
            f.partial.extend_from_slice(data);
        }
    }
}

/// The checkpoint of what was handed out: the offset excludes a partial line.
fn checkpoint_of(f: &Followed) -> Checkpoint {
    let pending = if f.discarding { 0 } else { f.partial.len() as u64 };
    Checkpoint {
        device: f.device,
        inode: f.inode,
        offset: f.offset - pending,
        head_hash: f.head_hash,
        head_len: f.head_len,
    }
}

/// A file beside `path` with this device and inode (where logrotate moved it).
fn find_by_inode(path: &Path, device: u64, inode: u64) -> Option<PathBuf> {
    let dir = path.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.dev() == device && m.ino() == inode && m.is_file()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    /// A log, a writer of numbered lines, and a tailer collecting what it reads.
    struct Rig {
        _dir: tempfile::TempDir,
        path: PathBuf,
        next: u32,
        seen: Vec<String>,
        tailer: Tailer,
        saved: HashMap<PathBuf, Checkpoint>,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("auth.log");
            std::fs::write(&path, "").unwrap();
            let tailer = Tailer::new(path.to_str().unwrap());
            Rig { _dir: dir, path, next: 0, seen: Vec::new(), tailer, saved: HashMap::new() }
        }

        fn write(&mut self, n: u32) {
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&self.path).unwrap();
            for _ in 0..n {
                writeln!(f, "line {}", self.next).unwrap();
                self.next += 1;
            }
        }

        fn poll(&mut self) {
            let saved = self.saved.clone();
            let seen = &mut self.seen;
            let moved = self
                .tailer
                .poll(&|p| saved.get(p).copied(), &mut |_, line| seen.push(String::from_utf8_lossy(line).into_owned()));
            self.saved.extend(moved);
        }

        /// Every line written was read exactly once, in order.
        fn check(&self) {
            let expected: Vec<String> = (0..self.next).map(|i| format!("line {i}")).collect();
            assert_eq!(self.seen, expected);
        }
    }

    #[test]
    fn rename_and_create_drains_the_old_file_first() {
        let mut r = Rig::new();
        r.write(10);
        r.poll();
        r.write(5); // written before rotation, not yet read
        std::fs::rename(&r.path, r.path.with_extension("log.1")).unwrap();
        r.write(7); // into the new file
        r.poll();
        r.write(3);
        r.poll();
        r.check();
        assert_eq!(r.tailer.counters.rotations, 1);
    }

    #[test]
    fn copytruncate_rereads_from_the_start() {
        let mut r = Rig::new();
        r.write(10);
        r.poll();
        std::fs::copy(&r.path, r.path.with_extension("log.1")).unwrap();
        std::fs::OpenOptions::new().write(true).open(&r.path).unwrap().set_len(0).unwrap();
        // A burst after the truncation, longer than what had been read: the size alone
        // would hide the truncation, the head of the file does not.
        r.write(40);
        r.poll();
        r.check();
        assert_eq!(r.tailer.counters.truncations, 1);
    }

    #[test]
    fn delete_and_recreate_is_followed() {
        let mut r = Rig::new();
        r.write(3);
        r.poll();
        std::fs::remove_file(&r.path).unwrap();
        r.poll(); // the path is gone for a while
        r.write(4);
        r.poll();
        r.check();
    }

    #[test]
    fn a_restart_resumes_at_the_checkpoint_and_finds_a_file_rotated_meanwhile() {
        let mut r = Rig::new();
        r.write(10);
        r.poll();
        // Stop: a new tailer will start from the saved checkpoints.
        r.tailer = Tailer::new(r.path.to_str().unwrap());
        r.write(5);
        r.poll();
        r.check();

        r.tailer = Tailer::new(r.path.to_str().unwrap());
        r.write(6); // unread when the file is rotated while banshare is stopped
        std::fs::rename(&r.path, r.path.with_extension("log.1")).unwrap();
        r.write(2);
        r.poll();
        r.check();
    }

    #[test]
    fn partial_and_over_long_lines() {
        let mut r = Rig::new();
        let mut f = std::fs::OpenOptions::new().append(true).open(&r.path).unwrap();
        f.write_all(b"line 0\nline ").unwrap();
        r.next = 1;
        r.poll();
        assert_eq!(r.seen, ["line 0"], "half a line waits for its newline");
        let cp = r.saved[&r.path];
        assert_eq!(cp.offset, 7, "the checkpoint excludes the half line");
        f.write_all(b"1\n").unwrap();
        f.write_all(&vec![b'x'; MAX_LINE + 1]).unwrap();
        f.write_all(b"\nline 2\n").unwrap();
        r.next = 3;
        r.poll();
        r.check();
        assert_eq!(r.tailer.counters.too_long, 1);
    }

    #[test]
    fn checkpoint_head_text_round_trips() {
        let cp = Checkpoint { device: 1, inode: 2, offset: 3, head_hash: 0xdead_beef, head_len: 128 };
        assert_eq!(Checkpoint::parse_head(&cp.head_text()), Some((128, 0xdead_beef)));
    }
}
