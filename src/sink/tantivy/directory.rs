//! The directory a search index generation is written through: tantivy's `MmapDirectory`, with
//! the durability of a commit made cheaper and complete.
//!
//! * **Syncs batched per commit, not one per file as it is written.** `MmapDirectory` syncs every
//!   file the moment it is finished: a commit of a few hundred changed documents writes a new
//!   segment (about eight files) and a delete bitset for every older segment it touched, each
//!   waited for in turn (a sync costs about 4 ms on the benchmark machine). Here a finished file is
//!   flushed to the OS, its write-back is started, and it is remembered; tantivy calls
//!   [`sync_directory`](Directory::sync_directory) before it writes `meta.json` (the only file
//!   that makes a commit or a merge visible), and that call syncs every remembered file, whose
//!   writes are by then under way together. The order tantivy relies on is kept: every file a
//!   `meta.json` names is on disk before that `meta.json` is written.
//! * **No `.managed.json` on disk.** tantivy rewrites that list of the files it created (a new
//!   temporary file, a sync and a rename) for every file it creates — once per new segment file
//!   and once per delete bitset, dozens of times per streaming commit; file creation was the
//!   largest cost of a commit. The list only serves garbage collection, so here it is kept in
//!   memory, and when an index is opened it is every file of the generation except `meta.json`
//!   and hidden files (locks, temporaries): tantivy's garbage collection then removes whatever
//!   the last `meta.json` does not name — leftovers of an interrupted commit or merge included —
//!   and never a file it names.
//! * **The rename of `meta.json` is durable when the commit returns.** `MmapDirectory`'s atomic
//!   write syncs the new file and renames it over the old one without syncing the directory, so
//!   after a power loss the previous `meta.json` (and its older checkpoint) could come back while
//!   deriver had already acknowledged the newer position to Postgres. The directory is synced
//!   after every atomic write.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tantivy::directory::error::{DeleteError, LockError, OpenDirectoryError, OpenReadError, OpenWriteError};
use tantivy::directory::{AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite, WatchCallback, WatchHandle, WritePtr};

/// Finished files not synced yet, shared by a directory and the files it is writing.
type Unsynced = Arc<Mutex<Vec<(PathBuf, Arc<File>)>>>;

/// `MmapDirectory` with deferred, batched file syncs and durable atomic writes (module docs).
#[derive(Clone)]
pub struct DurableDirectory {
    inner: MmapDirectory,
    root: PathBuf,
    /// Finished files not synced yet.
    unsynced: Unsynced,
}

impl fmt::Debug for DurableDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableDirectory({:?})", self.root)
    }
}

/// The file naming an index's segments and commit payload.
const META: &str = "meta.json";
/// tantivy's list of the files it created (for garbage collection).
const MANAGED_LIST: &str = ".managed.json";

impl DurableDirectory {
    pub fn open(root: &Path) -> Result<DurableDirectory, OpenDirectoryError> {
        Ok(DurableDirectory { inner: MmapDirectory::open(root)?, root: root.to_path_buf(), unsynced: Default::default() })
    }

    /// The managed-file list tantivy reads when it opens the index: every file of the directory
    /// but `meta.json` and hidden ones (JSON, as `.managed.json` holds it).
    fn files_on_disk(&self) -> io::Result<Vec<u8>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || name == META || !entry.file_type()?.is_file() {
                continue;
            }
            files.push(name.to_string());
        }
        Ok(serde_json::to_vec(&files)?)
    }

    fn sync_dir_entry(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}

/// A file being written: flushed to the OS when finished, synced by the next `sync_directory`.
struct DeferredFile {
    path: PathBuf,
    file: Arc<File>,
    unsynced: Unsynced,
}

impl Write for DeferredFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.file).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).flush()
    }
}

impl TerminatingWrite for DeferredFile {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.flush()?;
        // The data goes to disk from now on (a merge's large files most of all), so the sync
        // before the next `meta.json` mostly finds it written.
        start_writeback(&self.file);
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).push((self.path.clone(), self.file.clone()));
        Ok(())
    }
}

/// Starts the write-back of a whole file without waiting for it (Linux `sync_file_range`); the
/// `fsync` that follows then waits for writes already under way.
fn start_writeback(file: &File) {
    // SAFETY: a plain syscall on an open descriptor; no memory is shared with the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl Directory for DurableDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, _)| p != path);
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let file = OpenOptions::new().write(true).create_new(true).open(self.root.join(path)).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                OpenWriteError::FileAlreadyExists(path.to_path_buf())
            } else {
                OpenWriteError::wrap_io_error(e, path.to_path_buf())
            }
        })?;
        let file = DeferredFile { path: path.to_path_buf(), file: Arc::new(file), unsynced: self.unsynced.clone() };
        Ok(BufWriter::new(Box::new(file)))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        if path == Path::new(MANAGED_LIST) {
            return self.files_on_disk().map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()));
        }
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if path == Path::new(MANAGED_LIST) {
            // Kept in memory by tantivy; rebuilt from the files on disk when opened.
            return Ok(());
        }
        self.inner.atomic_write(path, data)?;
        if path == Path::new(META) {
            self.sync_dir_entry()?;
        }
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        let files = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, (_, f)) in files.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                // Not synced: the next call tries these again.
                self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).extend(files[i..].iter().cloned());
                return Err(e);
            }
        }
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_synced_late_the_managed_list_stays_in_memory_and_leftovers_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let d = DurableDirectory::open(dir.path()).unwrap();
        let mut w = d.open_write(Path::new("a.bin")).unwrap();
        w.write_all(b"hello").unwrap();
        w.terminate().unwrap();
        assert_eq!(d.unsynced.lock().unwrap().len(), 1, "a finished file waits for the next sync");
        d.sync_directory().unwrap();
        assert!(d.unsynced.lock().unwrap().is_empty());
        assert_eq!(d.open_read(Path::new("a.bin")).unwrap().read_bytes().unwrap().as_slice(), b"hello");
        assert!(matches!(d.open_write(Path::new("a.bin")), Err(OpenWriteError::FileAlreadyExists(_))));
        // A deleted file is not synced later.
        let mut w = d.open_write(Path::new("b.bin")).unwrap();
        w.write_all(b"x").unwrap();
        w.terminate().unwrap();
        d.delete(Path::new("b.bin")).unwrap();
        assert!(d.unsynced.lock().unwrap().is_empty());

        // A whole index round trip: commit, reopen, read back.
        use tantivy::schema::{Schema, STORED, STRING};
        let mut sb = Schema::builder();
        let f = sb.add_text_field("k", STRING | STORED);
        let idx_dir = tempfile::tempdir().unwrap();
        let index = tantivy::Index::create(DurableDirectory::open(idx_dir.path()).unwrap(), sb.build(), Default::default()).unwrap();
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.add_document(tantivy::doc!(f => "one")).unwrap();
        writer.commit().unwrap();
        drop(writer);
        drop(index);
        assert!(!idx_dir.path().join(MANAGED_LIST).exists(), "the managed list stays in memory");

        // Leftovers of an interrupted commit (files `meta.json` does not name) are collected
        // after the next commit; the committed documents stay.
        std::fs::write(idx_dir.path().join("0123456789abcdef0123456789abcdef.idx"), b"junk").unwrap();
        let index = tantivy::Index::open(DurableDirectory::open(idx_dir.path()).unwrap()).unwrap();
        assert_eq!(index.reader().unwrap().searcher().num_docs(), 1);
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.add_document(tantivy::doc!(f => "two")).unwrap();
        writer.commit().unwrap();
        writer.wait_merging_threads().unwrap();
        assert!(!idx_dir.path().join("0123456789abcdef0123456789abcdef.idx").exists(), "a leftover file is garbage-collected");
        let index = tantivy::Index::open(DurableDirectory::open(idx_dir.path()).unwrap()).unwrap();
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.num_docs(), 2);
        for seg in searcher.segment_readers() {
            let _ = seg.get_store_reader(0).unwrap();
        }
    }
}
