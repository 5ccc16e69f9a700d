//! All I/O of the log goes through [`Storage`]: a flat directory of named files.
//!
//! Two implementations: [`FsStorage`] over `std::fs` (positioned I/O, `fdatasync`,
//! `memmap2` for sealed segments) and [`crate::sim::SimStorage`], in memory, which can
//! simulate a crash that loses or tears unsynced writes. The trait is synchronous in
//! this phase; a glommio DMA implementation will wrap the same core later.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A directory of files with positioned I/O and explicit durability points.
///
/// Durability contract (what `SimStorage::crash` models): bytes written by `write_at`
/// are durable only after `sync` of that file returns; file creation, removal and
/// rename are durable only after `sync_dir` returns.
pub trait Storage {
    /// A read-only view of a whole file, stable while held.
    type Map: AsRef<[u8]>;

    /// Names of the files in the directory, in no particular order.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// Creates an empty file; fails if it exists.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (short at EOF).
    fn read_at(&mut self, name: &str, pos: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `pos`, growing the file if needed.
    fn write_at(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()>;
    /// Like [`Storage::write_at`], for the log's batch writes when `Config::direct_io`
    /// is on: the caller passes `pos` and `data.len()` multiples of [`DIRECT_ALIGN`]
    /// (except a write that ends at a segment's capacity) into already-allocated space.
    /// [`FsStorage`] writes such ranges with `O_DIRECT` (bypassing the page cache, which
    /// the kernel invalidates for the range), falling back to a buffered write when the
    /// range is not aligned or the file system refuses `O_DIRECT` (`EINVAL`). Same
    /// durability contract as `write_at`: durable only after `sync`.
    fn write_direct(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(name, pos, data)
    }
    /// Makes the file's written bytes durable (`fdatasync`).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Current length of the file.
    fn len(&mut self, name: &str) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file.
    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Extends the file to `len` with space reserved for it (reads as zeros, later
    /// writes cannot fail for want of space). Defaults to [`Storage::set_len`].
    fn allocate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.set_len(name, len)
    }
    /// Removes the file.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames durable (`fsync` of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;
    /// Maps the whole file read-only. Only used for files that no longer change.
    fn map(&mut self, name: &str) -> io::Result<Self::Map>;
    /// Drops any cached handle for the file (sealed segments are read through maps).
    fn close(&mut self, name: &str);
    /// Another handle on the same directory, for another thread (the pipelined I/O
    /// thread, the spare preparer). Handles see the same files; each keeps its own
    /// descriptors.
    fn reopen(&self) -> io::Result<Self>
    where
        Self: Sized;
}

/// Alignment of `O_DIRECT` writes (file position, length and memory address): the
/// page size, a multiple of every logical block size we expect (512 B or 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// [`Storage`] over a real directory.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    dir_handle: File,
    files: HashMap<String, File>,
    /// Second descriptors opened with `O_DIRECT`, for [`Storage::write_direct`].
    direct_files: HashMap<String, File>,
    /// False once the file system refused `O_DIRECT` (then `write_direct` is buffered).
    direct_ok: bool,
    /// Bounce buffer: `DIRECT_ALIGN`-aligned slices of it are handed to `O_DIRECT`.
    bounce: Vec<u8>,
    direct_writes: u64,
}

impl FsStorage {
    /// Opens (creating if needed) the directory.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let dir_handle = File::open(&dir)?;
        Ok(FsStorage {
            dir,
            dir_handle,
            files: HashMap::new(),
            direct_files: HashMap::new(),
            direct_ok: true,
            bounce: Vec::new(),
            direct_writes: 0,
        })
    }

    /// False once the file system refused `O_DIRECT` (`write_direct` is buffered since).
    pub fn writes_direct(&self) -> bool {
        self.direct_ok
    }

    /// Writes that went through `O_DIRECT` so far (on this handle).
    pub fn direct_writes(&self) -> u64 {
        self.direct_writes
    }

    /// The `O_DIRECT` descriptor of a file (opened on first use).
    fn direct_file(&mut self, name: &str) -> io::Result<&File> {
        use std::os::unix::fs::OpenOptionsExt;
        check_name(name)?;
        if !self.direct_files.contains_key(name) {
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(self.dir.join(name))?;
            self.direct_files.insert(name.to_owned(), file);
        }
        self.direct_files
            .get(name)
            .ok_or_else(|| io::Error::other("file handle vanished"))
    }

    /// One `O_DIRECT` write of an aligned range: from `data` itself when its address is
    /// aligned, else through the aligned bounce buffer.
    fn try_direct(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            // Already at an aligned address (the writer's jobs are): no copy.
            return self
                .direct_file(name)
                .and_then(|file| file.write_all_at(data, pos));
        }
        if self.bounce.len() < data.len() + DIRECT_ALIGN {
            self.bounce = vec![0u8; data.len() + DIRECT_ALIGN];
        }
        let at = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let mut bounce = std::mem::take(&mut self.bounce);
        let result = match bounce.get_mut(at..at + data.len()) {
            Some(aligned) => {
                aligned.copy_from_slice(data);
                self.direct_file(name)
                    .and_then(|file| file.write_all_at(aligned, pos))
            }
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        self.bounce = bounce;
        result
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&mut self, name: &str) -> io::Result<&File> {
        check_name(name)?;
        if !self.files.contains_key(name) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(name))?;
            self.files.insert(name.to_owned(), file);
        }
        self.files
            .get(name)
            .ok_or_else(|| io::Error::other("file handle vanished"))
    }
}

/// File names are flat: no separators, no `..`.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad file name"));
    }
    Ok(())
}

impl Storage for FsStorage {
    type Map = memmap2::Mmap;

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        self.files.insert(name.to_owned(), file);
        Ok(())
    }

    fn read_at(&mut self, name: &str, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.file(name)?;
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
            match file.read_at(rest, pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(data, pos)
    }

    fn write_direct(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        let aligned =
            pos.is_multiple_of(DIRECT_ALIGN as u64) && data.len().is_multiple_of(DIRECT_ALIGN);
        if self.direct_ok && aligned && !data.is_empty() {
            match self.try_direct(name, pos, data) {
                Ok(()) => {
                    self.direct_writes += 1;
                    return Ok(());
                }
                // Refused before anything was written (open or the first write): the
                // file system does not do O_DIRECT (tmpfs, some FUSE). Buffered from now.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(dir = %self.dir.display(), "O_DIRECT refused (EINVAL); buffered writes");
                    self.direct_ok = false;
                    self.direct_files.clear();
                }
                Err(e) => return Err(e),
            }
        }
        self.write_at(name, pos, data)
    }

    /// `fdatasync` of the buffered descriptor: it covers the inode's data whichever
    /// descriptor wrote it (and flushes the device cache after `O_DIRECT` writes).
    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.file(name)?.set_len(len)
    }

    /// `fallocate(2)`: unwritten extents, so the space is ours without writing it.
    fn allocate(&mut self, name: &str, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file(name)?.as_raw_fd();
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: `fd` is an open descriptor owned by `self.files` for this call.
        let rc = unsafe { libc::fallocate(fd, 0, 0, len) };
        match rc {
            0 => Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                // File systems without fallocate: a sparse extension is still correct.
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    return self.set_len(name, len as u64);
                }
                Err(e)
            }
        }
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        check_name(name)?;
        self.files.remove(name);
        self.direct_files.remove(name);
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        self.files.remove(from);
        self.files.remove(to);
        self.direct_files.remove(from);
        self.direct_files.remove(to);
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }

    fn map(&mut self, name: &str) -> io::Result<memmap2::Mmap> {
        let file = self.file(name)?;
        // SAFETY: the log only maps files it no longer writes or truncates (sealed
        // segments, or a tail segment during recovery before any write to it), and
        // checkpoint slots during recovery, which drops the map before any checkpoint
        // is written; files are removed by unlink, which keeps existing mappings valid. Another process
        // truncating our files would break this, as it would break any mmap reader.
        unsafe { memmap2::Mmap::map(file) }
    }

    fn close(&mut self, name: &str) {
        self.files.remove(name);
        self.direct_files.remove(name);
    }

    fn reopen(&self) -> io::Result<FsStorage> {
        let mut other = FsStorage::open(&self.dir)?;
        other.direct_ok = self.direct_ok;
        Ok(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = FsStorage::open(dir.path()).unwrap();
        fs.create("a.log").unwrap();
        assert!(fs.create("a.log").is_err());
        fs.write_at("a.log", 10, b"hello").unwrap();
        fs.sync("a.log").unwrap();
        assert_eq!(fs.len("a.log").unwrap(), 15);
        let mut buf = [0u8; 20];
        assert_eq!(fs.read_at("a.log", 8, &mut buf).unwrap(), 7);
        assert_eq!(&buf[2..7], b"hello");
        assert_eq!(&fs.map("a.log").unwrap()[10..], b"hello");
        fs.rename("a.log", "b.log").unwrap();
        fs.sync_dir().unwrap();
        assert_eq!(fs.list().unwrap(), vec!["b.log".to_owned()]);
        fs.set_len("b.log", 3).unwrap();
        assert_eq!(fs.len("b.log").unwrap(), 3);
        fs.remove("b.log").unwrap();
        assert!(fs.list().unwrap().is_empty());
        assert!(fs.create("../x").is_err());
    }

    #[test]
    fn direct_writes_are_seen_by_buffered_reads_and_maps() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = FsStorage::open(dir.path()).unwrap();
        fs.create("d.log").unwrap();
        fs.write_at("d.log", 0, &vec![0u8; 4 * DIRECT_ALIGN])
            .unwrap();
        fs.sync("d.log").unwrap();
        // Pull the zeros into the page cache first, through another handle too.
        let mut other = fs.reopen().unwrap();
        let mut buf = vec![0u8; 2 * DIRECT_ALIGN];
        other.read_at("d.log", 0, &mut buf).unwrap();
        for round in 1..=4u8 {
            // Odd rounds from an unaligned address (through the bounce buffer), even
            // ones from an aligned one (written from the caller's memory).
            let mut memory = vec![round; 3 * DIRECT_ALIGN];
            let aligned_at = memory.as_ptr().align_offset(DIRECT_ALIGN);
            let at = aligned_at + usize::from(round % 2) * 8;
            memory[..at].fill(0xEE);
            let block = &memory[at..at + DIRECT_ALIGN];
            assert_eq!(
                (block.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN),
                round % 2 == 0
            );
            fs.write_direct("d.log", DIRECT_ALIGN as u64, block)
                .unwrap();
            fs.sync("d.log").unwrap();
            other.read_at("d.log", 0, &mut buf).unwrap();
            assert!(buf[..DIRECT_ALIGN].iter().all(|b| *b == 0));
            assert!(buf[DIRECT_ALIGN..].iter().all(|b| *b == round));
            let map = other.map("d.log").unwrap();
            assert!(map[DIRECT_ALIGN..2 * DIRECT_ALIGN]
                .iter()
                .all(|b| *b == round));
        }
        // ext4/xfs take O_DIRECT; a file system that refuses it falls back.
        assert!(fs.direct_writes() == 4 || !fs.direct_ok);
        // Unaligned ranges fall back to a buffered write.
        fs.write_direct("d.log", 10, b"abc").unwrap();
        other.read_at("d.log", 8, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"\0\0abc");
        assert_eq!(fs.len("d.log").unwrap(), 4 * DIRECT_ALIGN as u64);
    }
}
