//! [`SimStorage`]: an in-memory [`Storage`] that can crash.
//!
//! Each file tracks its durable bytes (as of its last `sync`) and the writes since. The
//! directory tracks its durable names (as of the last `sync_dir`) and the creations,
//! removals and renames since. [`SimStorage::crash`] keeps every durable byte and name,
//! a seeded random *prefix* of the directory operations (journaling file systems commit
//! metadata in order), and for every unsynced write a seeded choice of: lost, kept whole,
//! or torn (a random subset of its 512-byte sectors, one of them cut at a random byte).
//! Like redb's `CrashBackend` and raft-engine's failpoints, it also injects I/O errors.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::Storage;

const SECTOR_BYTES: usize = 512;

/// An I/O operation that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_at`.
    Write,
    /// `sync`.
    Sync,
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(String, usize),
    Remove(String),
    Rename(String, String),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileOp>,
}

#[derive(Clone, Debug, Default)]
struct SimState {
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
    dir_ops: Vec<DirOp>,
    faults: Vec<(FaultOp, u32)>,
    syncs: u64,
    bytes_written: u64,
}

/// In-memory crash-simulating storage. Clones share the same files, so a test keeps a
/// clone, drops the log without closing it, calls [`SimStorage::crash`] and reopens.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

/// Small deterministic generator (splitmix64) so crashes replay from a seed.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

fn apply_write(bytes: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    if bytes.len() < pos + data.len() {
        bytes.resize(pos + data.len(), 0);
    }
    if let Some(slot) = bytes.get_mut(pos..pos + data.len()) {
        slot.copy_from_slice(data);
    }
}

impl SimStorage {
    /// An empty directory.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An independent copy of every file and fault (clones share; this does not): tests
    /// damage one copy per case.
    pub fn clone_deep(&self) -> SimStorage {
        SimStorage {
            state: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// Makes the next `op` after `after` successful ones fail with an I/O error.
    pub fn fail(&self, op: FaultOp, after: u32) {
        self.lock().faults.push((op, after));
    }

    /// Number of `sync` calls so far (tests check group commit shares syncs).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Bytes passed to `write_at` so far (tests check a roll does not zero-fill).
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Current bytes of a file (what a reader would see now).
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = *state.names.get(name)?;
        state.inodes.get(inode).map(|i| i.current.clone())
    }

    /// Replaces a file's bytes, durably (tests use it to cut and flip bits).
    pub fn set_bytes(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.lock();
        let Some(&inode) = state.names.get(name) else {
            return;
        };
        if let Some(i) = state.inodes.get_mut(inode) {
            i.current = bytes.clone();
            i.durable = bytes;
            i.unsynced.clear();
        }
    }

    /// Durably removes a file (tests use it for "missing segment").
    pub fn delete(&self, name: &str) {
        let mut state = self.lock();
        state.names.remove(name);
        state.durable_names.remove(name);
    }

    /// Current file names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().names.keys().cloned().collect()
    }

    /// Simulates power loss: see the module comment for what survives.
    pub fn crash(&self, seed: u64) {
        let mut rng = SimRng::new(seed);
        let mut state = self.lock();
        let mut names = state.durable_names.clone();
        let keep = rng.below(state.dir_ops.len() as u64 + 1) as usize;
        for op in state.dir_ops.iter().take(keep) {
            match op {
                DirOp::Create(name, inode) => {
                    names.insert(name.clone(), *inode);
                }
                DirOp::Remove(name) => {
                    names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(inode) = names.remove(from) {
                        names.insert(to.clone(), inode);
                    }
                }
            }
        }
        let mut inodes = Vec::new();
        let mut new_names = BTreeMap::new();
        for (name, inode) in names {
            let old = state.inodes.get(inode).cloned().unwrap_or_default();
            let bytes = survive(&old, &mut rng);
            new_names.insert(name, inodes.len());
            inodes.push(Inode {
                current: bytes.clone(),
                durable: bytes,
                unsynced: Vec::new(),
            });
        }
        state.inodes = inodes;
        state.durable_names = new_names.clone();
        state.names = new_names;
        state.dir_ops.clear();
        state.faults.clear();
    }
}

/// What of one file survives a crash: durable bytes plus a seeded choice per write.
fn survive(inode: &Inode, rng: &mut SimRng) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    for op in &inode.unsynced {
        match op {
            FileOp::SetLen(len) => {
                if rng.below(2) == 0 {
                    bytes.resize(*len as usize, 0);
                }
            }
            FileOp::Write { pos, data } => match rng.below(4) {
                0 => {}
                1 | 2 => apply_write(&mut bytes, *pos, data),
                _ => {
                    let torn = rng.below(data.len().div_ceil(SECTOR_BYTES) as u64) as usize;
                    for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                        let at = *pos + (i * SECTOR_BYTES) as u64;
                        if i == torn {
                            let cut = rng.below(sector.len() as u64 + 1) as usize;
                            apply_write(&mut bytes, at, sector.get(..cut).unwrap_or_default());
                        } else if rng.below(2) == 0 {
                            apply_write(&mut bytes, at, sector);
                        }
                    }
                }
            },
        }
    }
    bytes
}

impl SimState {
    fn inode(&mut self, name: &str) -> io::Result<&mut Inode> {
        let inode = *self.names.get(name).ok_or_else(|| not_found(name))?;
        self.inodes.get_mut(inode).ok_or_else(|| not_found(name))
    }

    fn fault(&mut self, op: FaultOp) -> io::Result<()> {
        let mut fire = false;
        self.faults.retain_mut(|(fault_op, after)| {
            if *fault_op != op || fire {
                return true;
            }
            if *after == 0 {
                fire = true;
                return false;
            }
            *after -= 1;
            true
        });
        if fire {
            return Err(io::Error::other(format!("injected {op:?} failure")));
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    type Map = Vec<u8>;

    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_owned(),
            ));
        }
        let inode = state.inodes.len();
        state.inodes.push(Inode::default());
        state.names.insert(name.to_owned(), inode);
        state.dir_ops.push(DirOp::Create(name.to_owned(), inode));
        Ok(())
    }

    fn read_at(&mut self, name: &str, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.lock();
        let inode = state.inode(name)?;
        let src = inode.current.get(pos as usize..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn write_at(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.fault(FaultOp::Write)?;
        state.bytes_written += data.len() as u64;
        let inode = state.inode(name)?;
        apply_write(&mut inode.current, pos, data);
        inode.unsynced.push(FileOp::Write {
            pos,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.fault(FaultOp::Sync)?;
        state.syncs += 1;
        let inode = state.inode(name)?;
        inode.durable = inode.current.clone();
        inode.unsynced.clear();
        Ok(())
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.lock().inode(name)?.current.len() as u64)
    }

    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.inode(name)?;
        inode.current.resize(len as usize, 0);
        inode.unsynced.push(FileOp::SetLen(len));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.names.remove(name).ok_or_else(|| not_found(name))?;
        state.dir_ops.push(DirOp::Remove(name.to_owned()));
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), inode);
        state
            .dir_ops
            .push(DirOp::Rename(from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        state.durable_names = state.names.clone();
        state.dir_ops.clear();
        Ok(())
    }

    fn map(&mut self, name: &str) -> io::Result<Vec<u8>> {
        Ok(self.lock().inode(name)?.current.clone())
    }

    fn close(&mut self, _name: &str) {}

    fn reopen(&self) -> io::Result<SimStorage> {
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_bytes_survive_every_crash() {
        for seed in 0..50 {
            let mut sim = SimStorage::new();
            sim.create("f").unwrap();
            sim.write_at("f", 0, &[1; 1000]).unwrap();
            sim.sync("f").unwrap();
            sim.sync_dir().unwrap();
            sim.write_at("f", 1000, &[2; 3000]).unwrap();
            sim.crash(seed);
            let bytes = sim.bytes("f").unwrap();
            assert_eq!(&bytes[..1000], &[1; 1000][..]);
            assert!(bytes[1000..].iter().all(|b| *b == 0 || *b == 2));
        }
    }

    #[test]
    fn crashes_tear_unsynced_writes_somehow() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut sim = SimStorage::new();
            sim.create("f").unwrap();
            sim.sync_dir().unwrap();
            sim.write_at("f", 0, &[7; 2048]).unwrap();
            sim.crash(seed);
            let written = sim.bytes("f").unwrap().iter().filter(|b| **b == 7).count();
            outcomes.insert(written);
        }
        assert!(outcomes.contains(&0));
        assert!(outcomes.contains(&2048));
        assert!(outcomes.len() > 3, "no torn outcomes: {outcomes:?}");
    }

    #[test]
    fn unsynced_creation_may_vanish_and_renames_are_atomic() {
        let mut seen_gone = false;
        for seed in 0..20 {
            let mut sim = SimStorage::new();
            sim.create("a").unwrap();
            sim.write_at("a", 0, b"x").unwrap();
            sim.sync("a").unwrap();
            sim.rename("a", "b").unwrap();
            sim.crash(seed);
            let names = sim.names();
            // A prefix of (create a, rename a→b): nothing, "a", or "b"; never both.
            assert!(names.len() <= 1, "{names:?}");
            seen_gone |= names.is_empty();
        }
        assert!(seen_gone);
    }

    #[test]
    fn injected_faults_fire_once() {
        let mut sim = SimStorage::new();
        sim.create("f").unwrap();
        sim.fail(FaultOp::Sync, 1);
        sim.sync("f").unwrap();
        assert!(sim.sync("f").is_err());
        sim.sync("f").unwrap();
    }
}
