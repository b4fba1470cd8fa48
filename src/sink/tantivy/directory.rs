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
//! * **New files come from a pool of empty files made ahead of need.** Creating a file is the
//!   largest single CPU cost of a small commit on the benchmark machine (ext4 without a journal
//!   scans past every inode freed in the last 30 seconds for each new one, and streaming frees
//!   hundreds per second). A background thread at a lower priority keeps empty files ready in
//!   `<index>/.spare-<pid>-<n>/`; a file tantivy opens for writing is one of them, renamed into
//!   place (`RENAME_NOREPLACE`, so an existing name still fails as tantivy expects). The pool is
//!   started by the first write, so a directory that is only read never makes one; its folder
//!   is removed when the directory is dropped, and folders left by a dead process at the next
//!   open.
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
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

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
    /// Empty files ready to be renamed into place, started by the first write.
    spares: Arc<OnceLock<Option<Arc<Spares>>>>,
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
        let inner = MmapDirectory::open(root)?;
        if let Some(parent) = root.parent() {
            remove_dead_spare_folders(parent);
        }
        Ok(DurableDirectory { inner, root: root.to_path_buf(), unsynced: Default::default(), spares: Default::default() })
    }

    /// A new file at `path`, from the spare pool when it has one.
    fn create(&self, path: &Path) -> io::Result<File> {
        let target = self.root.join(path);
        let spares = self.spares.get_or_init(|| Spares::start(&self.root));
        if let Some(pool) = spares {
            if let Some(spare) = pool.take() {
                match rename_noreplace(&spare, &target) {
                    // Spares are kept closed (a pool of open files would eat the descriptor limit).
                    Ok(()) => return OpenOptions::new().write(true).open(target),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        pool.put_back(spare);
                        return Err(e);
                    }
                    Err(e) => {
                        // Renaming is not possible here (another file system, no renameat2):
                        // files are created directly from now on.
                        tracing::debug!(error = %e, "spare index files cannot be renamed into place");
                        let _ = std::fs::remove_file(&spare);
                        pool.stop();
                    }
                }
            }
        }
        OpenOptions::new().write(true).create_new(true).open(target)
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

/// How many empty files the pool keeps ready (a streaming commit takes ten to thirty).
const SPARE_TARGET: usize = 256;
/// The pool is refilled once it holds fewer than this many.
const SPARE_LOW: usize = SPARE_TARGET * 3 / 4;
/// Folder names of spare pools: `.spare-<pid>-<n>`.
const SPARE_PREFIX: &str = ".spare-";

/// The spare pool of one directory and the thread that fills it.
struct Spares {
    folder: PathBuf,
    state: Mutex<SpareState>,
    wake: Condvar,
}

struct SpareState {
    ready: Vec<PathBuf>,
    stopped: bool,
}

impl Spares {
    /// Starts a pool beside the generation folder `root` (`None` if its folder cannot be made).
    fn start(root: &Path) -> Option<Arc<Spares>> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let folder = root.parent()?.join(format!("{SPARE_PREFIX}{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&folder) {
            tracing::debug!(error = %e, folder = %folder.display(), "no spare index files");
            return None;
        }
        let pool = Arc::new(Spares { folder, state: Mutex::new(SpareState { ready: Vec::new(), stopped: false }), wake: Condvar::new() });
        let filler = pool.clone();
        let started = std::thread::Builder::new().name("index-spares".into()).spawn(move || filler.fill());
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&pool.folder);
            return None;
        }
        Some(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<PathBuf> {
        let mut st = self.lock();
        let spare = st.ready.pop();
        if st.ready.len() < SPARE_LOW {
            self.wake.notify_one();
        }
        spare
    }

    fn put_back(&self, path: PathBuf) {
        self.lock().ready.push(path);
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_one();
    }

    /// The pool's thread: keeps [`SPARE_TARGET`] files ready until the directory is dropped
    /// (only this thread holds the pool then) or a file cannot be made; then removes the folder.
    fn fill(self: Arc<Self>) {
        super::priority::lower_thread_priority(0);
        let mut made: u64 = 0;
        loop {
            let missing = {
                let mut st = self.lock();
                while !st.stopped && st.ready.len() >= SPARE_LOW && Arc::strong_count(&self) > 1 {
                    st = self.wake.wait_timeout(st, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
                }
                if st.stopped || Arc::strong_count(&self) == 1 {
                    break;
                }
                SPARE_TARGET - st.ready.len()
            };
            for _ in 0..missing {
                let path = self.folder.join(made.to_string());
                made += 1;
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(_) => self.lock().ready.push(path),
                    Err(e) => {
                        tracing::debug!(error = %e, "making spare index files stopped");
                        self.lock().stopped = true;
                        break;
                    }
                }
            }
        }
        self.lock().ready.clear();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// Removes the spare folders under `parent` whose process is gone.
fn remove_dead_spare_folders(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SPARE_PREFIX)).and_then(|n| n.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
        let file = self.create(path).map_err(|e| {
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
    fn new_files_are_spares_renamed_into_place_and_the_pool_folder_goes_with_the_directory() {
        use std::os::unix::fs::MetadataExt;
        let index = tempfile::tempdir().unwrap();
        let root = index.path().join("gen-000001");
        std::fs::create_dir(&root).unwrap();
        // A folder left by a process that is gone is removed at open; a live one is kept.
        let dead = index.path().join(format!("{SPARE_PREFIX}{}-0", i32::MAX));
        let live = index.path().join(format!("{SPARE_PREFIX}1-0"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&live).unwrap();
        let d = DurableDirectory::open(&root).unwrap();
        assert!(!dead.exists() && live.exists());
        assert!(d.spares.get().is_none(), "no pool before the first write");

        let write = |name: &str, body: &[u8]| {
            let mut w = d.open_write(Path::new(name)).unwrap();
            w.write_all(body).unwrap();
            w.terminate().unwrap();
        };
        write("first.bin", b"1");
        let pool = d.spares.get().unwrap().clone().expect("a pool");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.lock().ready.len() < SPARE_TARGET {
            assert!(std::time::Instant::now() < deadline, "the pool fills");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pool's thread runs at the background priority (every such thread of this process,
        // tried a few times: another test's pool may have only just started).
        let spare_nices = || -> Vec<i32> {
            let mut out = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                if std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == "index-spares") {
                    let tid: libc::id_t = task.file_name().to_str().unwrap().parse().unwrap();
                    // SAFETY: plain integers; errno is not consulted (a nice of -1 fails the test).
                    out.push(unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) });
                }
            }
            out
        };
        let mut nices = spare_nices();
        for _ in 0..50 {
            if !nices.is_empty() && nices.iter().all(|&n| n == super::super::priority::BACKGROUND_NICE) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            nices = spare_nices();
        }
        assert!(!nices.is_empty() && nices.iter().all(|&n| n == super::super::priority::BACKGROUND_NICE), "index-spares threads' nice values: {nices:?}");
        let next_spare = std::fs::metadata(pool.lock().ready.last().unwrap()).unwrap().ino();
        write("second.bin", b"two");
        assert_eq!(std::fs::metadata(root.join("second.bin")).unwrap().ino(), next_spare, "the file is the spare, renamed");
        assert_eq!(pool.lock().ready.len(), SPARE_TARGET - 1);
        assert_eq!(d.open_read(Path::new("second.bin")).unwrap().read_bytes().unwrap().as_slice(), b"two");
        // An existing name still fails, and the spare it took goes back to the pool.
        assert!(matches!(d.open_write(Path::new("second.bin")), Err(OpenWriteError::FileAlreadyExists(_))));
        assert_eq!(pool.lock().ready.len(), SPARE_TARGET - 1);
        // The spare folder holds only spares; the generation folder only what was written.
        let mut names: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["first.bin", "second.bin"]);

        let folder = pool.folder.clone();
        assert!(folder.exists());
        drop(pool);
        drop(d);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while folder.exists() {
            assert!(std::time::Instant::now() < deadline, "the pool folder is removed once the directory is dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(root.join("second.bin").exists(), "written files stay");
    }

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
