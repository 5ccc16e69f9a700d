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
    /// Makes the file's written bytes durable (`fdatasync`).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Current length of the file.
    fn len(&mut self, name: &str) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file.
    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()>;
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

/// [`Storage`] over a real directory.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    dir_handle: File,
    files: HashMap<String, File>,
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
        })
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

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.file(name)?.set_len(len)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        check_name(name)?;
        self.files.remove(name);
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        self.files.remove(from);
        self.files.remove(to);
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }

    fn map(&mut self, name: &str) -> io::Result<memmap2::Mmap> {
        let file = self.file(name)?;
        // SAFETY: the log only maps files it no longer writes or truncates (sealed
        // segments, or a tail segment during recovery before any write to it); files
        // are removed by unlink, which keeps existing mappings valid. Another process
        // truncating our files would break this, as it would break any mmap reader.
        unsafe { memmap2::Mmap::map(file) }
    }

    fn close(&mut self, name: &str) {
        self.files.remove(name);
    }

    fn reopen(&self) -> io::Result<FsStorage> {
        FsStorage::open(&self.dir)
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
}
