//! The disk under the index (`index.dir`) full or read-only, for real: `index.dir` is a small
//! tmpfs of its own (needs root: `mount -t tmpfs`), filled to the last byte with a file, or
//! remounted read-only, while a transaction that rewrites every record is applied under write
//! load. Checked while the disk is unusable: the daemon keeps running and retries; the search
//! index (what searches see, and its checkpoint on disk) shows the transaction whole or not at
//! all, so does Redis; the slot is never acknowledged past the index's durable checkpoint;
//! `/metrics`, `/readyz` and `/v1/status` report the failing index. After space is freed (or
//! the disk is writable again): the daemon resumes by itself and the index and Redis equal a
//! fresh derivation.
//!
//! Without the right to mount (not root, or no CAP_SYS_ADMIN: an unprivileged container) or
//! without the tools (`mount`, `chattr`, `mkfs.ext4`, `e2fsck`, `findmnt`: `scripts/dev-stack.sh
//! install` installs them) each test FAILS and says why: a test that could not run never passes.
//! Where mounting is impossible by design, leave them out by name (`--skip disk`), visibly.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::observe::*;
use support::*;

/// Rows 1..=ROWS are rewritten by the large transactions; the write load updates only the
/// rows after them (tag `load`), so each sink must show rows 1..=ROWS with one tag at any moment.
const ROWS: i64 = 2000;
const LOAD_ROWS: i64 = 500;

const ITEMS: &str = r#"version: 1
pipeline: items
source: { table: item }
fields:
  id: item.id
  tag: item.tag
  body: item.body
  n: item.n
targets:
  - search:
      id: id
      fields:
        tag: { type: keyword, facet: true, stored: true }
        body: { type: text, stored: true }
        n: { type: i64, filterable: true, stored: true }
  - redis: { key: "item:{id}", type: json }
"#;

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"]).arg(path).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// `chattr +i` (or `-i`) on every directory of the file system: no file can be created,
    /// renamed or removed in them — what a read-only disk does to a writer that creates files
    /// (files already open for writing stay writable). `mount -o remount,ro` is refused ("mount
    /// point is busy") while deriver holds files open for writing, and so is a read-only bind
    /// mount.
    fn immutable_dirs(&self, on: bool) {
        let mut dirs = vec![self.path.clone()];
        let mut i = 0;
        while i < dirs.len() {
            for e in std::fs::read_dir(&dirs[i]).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                }
            }
            i += 1;
        }
        let out = Command::new("chattr").arg(if on { "+i" } else { "-i" }).args(&dirs).output().unwrap();
        assert!(out.status.success(), "chattr: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Fills the file system to the last byte with `name`; returns the bytes written.
    fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join(name)).unwrap();
        let mut written = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0x5au8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                        break;
                    }
                }
            }
        }
        let _ = f.sync_all();
        written
    }

    fn free_bytes(&self) -> u64 {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// An ext4 file system in an image file, loop-mounted with `errors=remount-ro`: the kernel turns
/// it read-only on the spot when it detects an error (`trigger_fs_error` reports one), and then
/// every write fails with `EROFS`, through files already open too — a real disk going
/// read-only. Such a file system cannot be made writable again while it is mounted (mounting the
/// image again while deriver holds files of it only shares the read-only mount): the operator
/// stops what holds it, unmounts, checks and mounts it again ([`Ext4::repair`]).
struct Ext4 {
    image: PathBuf,
    path: PathBuf,
}

impl Ext4 {
    fn mount(image: &Path, path: &Path, size: &str) -> Result<Ext4, String> {
        std::fs::create_dir_all(path).unwrap();
        let run = |c: &mut Command| -> Result<(), String> {
            let out = c.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        run(Command::new("truncate").args(["-s", size]).arg(image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
        let fs = Ext4 { image: image.to_path_buf(), path: path.to_path_buf() };
        fs.mount_image()?;
        Ok(fs)
    }

    fn mount_image(&self) -> Result<(), String> {
        let out = Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(&self.image).arg(&self.path).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(())
    }

    fn device(&self) -> String {
        let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&self.path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().rsplit('/').next().unwrap().to_string()
    }

    /// Makes the kernel find an error: the file system turns read-only at once.
    fn go_read_only(&self) {
        std::fs::write(format!("/sys/fs/ext4/{}/trigger_fs_error", self.device()), "deriver disk test").unwrap();
        let e = std::fs::write(self.path.join("probe"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }

    /// The operator's repair once nothing holds the file system open: unmount, `e2fsck -fy`,
    /// mount again.
    fn repair(&self) {
        let out = Command::new("umount").arg(&self.path).output().unwrap();
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new("e2fsck").args(["-f", "-y"]).arg(&self.image).output().unwrap();
        assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        self.mount_image().unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Fails the test, saying what is missing, when this machine cannot mount the file system it needs.
fn cannot_mount(what: &str, e: &str) -> ! {
    panic!(
        "cannot mount {what} here: {e}\nthe disk tests need root with CAP_SYS_ADMIN (not an unprivileged container), loop devices for ext4, \
         and mount, chattr, mkfs.ext4, e2fsck and findmnt (scripts/dev-stack.sh install); they fail rather than pass untested — \
         leave them out by name (`--skip disk`) where that is intended"
    )
}

/// A world whose `index.dir` is a fresh tmpfs of `size` (the test fails when it cannot be mounted).
fn world_on_tmpfs(name: &str, size: &str) -> (World, Tmpfs) {
    let w = World::new(name);
    let fs = Tmpfs::mount(&w.index_dir(), size).unwrap_or_else(|e| cannot_mount("a tmpfs for index.dir", &e));
    add_items(&w);
    (w, fs)
}

/// The same on an ext4 image of `size` (needs loop devices besides the right to mount).
fn world_on_ext4(name: &str, size: &str) -> (World, Ext4) {
    let w = World::new(name);
    let fs = Ext4::mount(&w.dir.join("index.img"), &w.index_dir(), size).unwrap_or_else(|e| cannot_mount("an ext4 image for index.dir", &e));
    add_items(&w);
    (w, fs)
}

fn add_items(w: &World) {
    // ~600 bytes of text per row: the index of 2000 rows is a few MB, one rewrite as much again.
    w.sql(&format!(
        "CREATE TABLE item (id int PRIMARY KEY, tag text, body text, n int);
         INSERT INTO item SELECT g, CASE WHEN g <= {ROWS} THEN 'initial' ELSE 'load' END,
           (SELECT string_agg(md5(g::text || ':' || i), ' ') FROM generate_series(1, 18) i), 0 FROM generate_series(1, {ROWS} + {LOAD_ROWS}) g"
    ));
    w.add_pipeline("items", ITEMS);
}

/// Small updates of the load rows until stopped.
fn item_load(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = ROWS + 1 + (i * 7919) % LOAD_ROWS;
                client.batch_execute(&format!("UPDATE item SET n = n + 1 WHERE id = {id}")).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
}

/// `tag` counts in what searches see (one searcher: an atomic view) and the index's applied LSN.
fn searched_tags(w: &World) -> (BTreeMap<String, u64>, Option<Lsn>) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let resp: serde_json::Value = client
        .post(format!("http://127.0.0.1:{}/v1/indexes/items/search", w.http_port))
        .json(&serde_json::json!({ "limit": 1, "facets": { "tag": { "size": 100 } } }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut tags: BTreeMap<String, u64> =
        resp["facets"]["tag"].as_object().unwrap_or_else(|| panic!("{resp}")).iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
    assert_eq!(tags.remove("load"), Some(LOAD_ROWS as u64), "the load rows: {resp}");
    (tags, resp["applied_lsn"].as_str().and_then(|s| s.parse().ok()))
}

/// `tag` counts of rows 1..=ROWS in the index's last durable commit, and that commit's
/// checkpoint. The generation is copied first (meta.json before the files it names): opening an
/// index in place takes a lock file, which a read-only disk refuses.
fn durable_tags(w: &World) -> (BTreeMap<String, u64>, Lsn) {
    use tantivy::schema::Value as _;
    let dir = w.index_dir().join("items");
    for attempt in 0.. {
        let gen: u64 = std::fs::read_to_string(dir.join("CURRENT")).unwrap().trim().parse().unwrap();
        let src = dir.join(format!("gen-{gen:06}"));
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("meta.json"), copy.path().join("meta.json")).unwrap();
        let mut complete = true;
        for e in std::fs::read_dir(&src).unwrap() {
            let name = e.unwrap().file_name();
            let n = name.to_string_lossy();
            if n == "meta.json" || n.starts_with(".tantivy") {
                continue;
            }
            if std::fs::copy(src.join(&name), copy.path().join(&name)).is_err() {
                complete = false;
            }
        }
        let opened = complete.then(|| tantivy::Index::open_in_dir(copy.path()).ok()).flatten();
        let Some(idx) = opened else {
            assert!(attempt < 20, "cannot read a copy of the index");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let payload: serde_json::Value = serde_json::from_str(&idx.load_metas().unwrap().payload.unwrap()).unwrap();
        let lsn: Lsn = payload["lsn"].as_str().unwrap().parse().unwrap();
        let searcher = idx.reader().unwrap().searcher();
        let schema = idx.schema();
        let (key_f, src_f) = (schema.get_field("_key").unwrap(), schema.get_field("_source").unwrap());
        let mut out = BTreeMap::new();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(16).unwrap();
            for doc_id in 0..seg.max_doc() {
                if seg.is_deleted(doc_id) {
                    continue;
                }
                let doc: tantivy::TantivyDocument = store.get(doc_id).unwrap();
                let key: i64 = doc.get_first(key_f).and_then(|v| v.as_str()).unwrap().parse().unwrap();
                if key <= ROWS {
                    let src: serde_json::Value = serde_json::from_str(doc.get_first(src_f).and_then(|v| v.as_str()).unwrap()).unwrap();
                    *out.entry(src["tag"].as_str().unwrap().to_string()).or_insert(0) += 1;
                }
            }
        }
        return (out, lsn);
    }
    unreachable!()
}

/// `tag` counts in Redis (one MGET: an atomic read).
fn redis_tags(w: &World) -> BTreeMap<String, u64> {
    let mut c = env().redis.conn();
    let keys: Vec<String> = (1..=ROWS).map(|id| format!("{}:item:{id}", w.prefix())).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
    let mut out = BTreeMap::new();
    for v in values {
        let tag = v.map_or("missing".into(), |t| serde_json::from_str::<serde_json::Value>(&t).unwrap()["tag"].as_str().unwrap_or("null").to_string());
        *out.entry(tag).or_insert(0) += 1;
    }
    out
}

/// Every row shows the same tag, one of `allowed`; returns it.
fn whole(what: &str, tags: &BTreeMap<String, u64>, allowed: &[&str]) -> String {
    assert_eq!(tags.len(), 1, "{what}: a transaction is partly visible: {tags:?}");
    let (tag, n) = tags.iter().next().unwrap();
    assert_eq!(*n, ROWS as u64, "{what}: {tags:?}");
    assert!(allowed.contains(&tag.as_str()), "{what}: {tag}, expected one of {allowed:?}");
    tag.clone()
}

const INDEX_DEP: &str = "index:items";

/// Rewrites every row's tag to `tag` while `break_disk` holds the index disk unusable; checks
/// the daemon during the fault and after `repair_disk`.
fn fault_round(w: &mut World, before: &str, tag: &str, break_disk: impl FnOnce(), repair_disk: impl FnOnce(&mut World)) {
    w.catch_up(&["items"], &["items"]);
    break_disk();
    w.sql(&format!("UPDATE item SET tag = '{tag}', body = body || ' {tag}' WHERE id <= {ROWS}"));
    // At or after the end of the transaction: a checkpoint this far includes it.
    let committed = w.current_lsn();
    // The failure is reported (the commit is retried; each attempt fails again).
    let mut reported = (false, false, false);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(reported.0 && reported.1 && reported.2) {
        assert_alive(w, "while the index disk is unusable");
        let m = metrics(w);
        reported.0 |= metric(&m, "deriver_dependency_up", &[("dependency", INDEX_DEP)]) == Some(0.0);
        reported.1 |= http_get(w, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains(&format!("{INDEX_DEP} is failing")));
        reported.2 |= status(w)["dependencies"][INDEX_DEP]["up"] == false;
        assert!(Instant::now() < deadline, "the index failure was not reported (metric, readyz, status: {reported:?}); log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors_at_first = metric(&metrics(w), "deriver_dependency_errors_total", &[("dependency", INDEX_DEP)]).unwrap_or(0.0);
    // A while of retrying: nothing partial, nothing acknowledged past the index.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert_alive(w, "while the index disk is unusable");
        // Read in this order, each view can only be as new as the next one.
        let (searched, searched_lsn) = searched_tags(w);
        let (durable, durable_lsn) = durable_tags(w);
        assert_ack_within_checkpoints(w, &["items"], &["items"]);
        whole("searched during the fault", &searched, &[before]);
        whole("durable index during the fault", &durable, &[before]);
        assert!(durable_lsn < committed, "the index checkpoint {durable_lsn} claims the transaction (committed by {committed})");
        assert!(searched_lsn.is_some_and(|l| l <= durable_lsn), "searches see {searched_lsn:?}, beyond the durable {durable_lsn}");
        whole("redis during the fault", &redis_tags(w), &[before, tag]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let errors = metric(&metrics(w), "deriver_dependency_errors_total", &[("dependency", INDEX_DEP)]).unwrap_or(0.0);
    assert!(errors > errors_at_first, "deriver stopped retrying the index commit ({errors_at_first} then {errors} errors); log:\n{}", w.log_text());
    repair_disk(w);
    let repaired = Instant::now();
    w.wait_applied(&["items"], &["items"], committed, Duration::from_secs(90));
    // The durable checkpoint can precede visibility: the reader reloads after the commit, and a
    // commit attempt that failed after writing its meta.json is applied again (and reloaded) by
    // the retry. Searches report what they see as `applied_lsn`: wait for it, then check it all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let tags = loop {
        let (tags, lsn) = searched_tags(w);
        if lsn.is_some_and(|l| l >= committed) {
            break tags;
        }
        assert!(Instant::now() < deadline, "searches still see {lsn:?} (committed by {committed}, durable); log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    whole("searched after the repair", &tags, &[tag]);
    whole("redis after the repair", &redis_tags(w), &[tag]);
    wait_for("the index to be reported up again", Duration::from_secs(30), || {
        metric(&metrics(w), "deriver_dependency_up", &[("dependency", INDEX_DEP)]) == Some(1.0) && http_get(w, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    eprintln!("round {tag}: {errors} failed index commits reported; applied {:.1}s after the repair", repaired.elapsed().as_secs_f64());
}

/// The index and Redis equal a fresh derivation.
fn check_items(w: &World) {
    let expected = w.expected("SELECT id::text, jsonb_build_object('id', id, 'tag', tag, 'body', body, 'n', n) FROM item");
    let docs = w.index_docs("items");
    assert_eq!(docs.len(), expected.len(), "index document count");
    let mut c = env().redis.conn();
    for (id, want) in &expected {
        let doc = docs.get(id).unwrap_or_else(|| panic!("document {id} missing"));
        for f in ["tag", "body", "n"] {
            assert_eq!(doc[f], want[f], "document {id} field {f}");
        }
        let got: String = redis::cmd("GET").arg(format!("{}:item:{id}", w.prefix())).query(&mut c).unwrap();
        assert_eq!(&serde_json::from_str::<serde_json::Value>(&got).unwrap(), want, "item:{id}");
    }
}

#[test]
fn a_full_index_disk_is_reported_retried_and_survived() {
    let (mut w, fs) = world_on_tmpfs("diskfull", "48m");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["items"], &["items"]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = item_load(w.url(), stop.clone(), done.clone());
    let filler = fs.path.join("filler");
    fault_round(
        &mut w,
        "initial",
        "full-1",
        || {
            let n = fs.fill("filler");
            eprintln!("filled the index disk with {n} bytes; {} bytes free", fs.free_bytes());
        },
        |_| std::fs::remove_file(&filler).unwrap(),
    );
    // Again with 256 kB left: the commit starts writing its segment and runs out on the way.
    fault_round(
        &mut w,
        "full-1",
        "full-2",
        || {
            let n = fs.fill("filler");
            let f = std::fs::OpenOptions::new().write(true).open(&filler).unwrap();
            f.set_len(n - (256 << 10)).unwrap();
            eprintln!("filled the index disk up to {} bytes", fs.free_bytes());
        },
        |_| std::fs::remove_file(&filler).unwrap(),
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20, "the load ran");
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    assert_eq!(w.stop(), 0);
    // The stopped daemon's index opens and holds the same.
    check_items(&w);
}

#[test]
fn index_directories_that_refuse_writes_are_reported_retried_and_survived() {
    let (mut w, fs) = world_on_tmpfs("diskro", "64m");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["items"], &["items"]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = item_load(w.url(), stop.clone(), done.clone());
    fault_round(&mut w, "initial", "ro-1", || fs.immutable_dirs(true), |_| fs.immutable_dirs(false));
    fault_round(&mut w, "ro-1", "ro-2", || fs.immutable_dirs(true), |_| fs.immutable_dirs(false));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20, "the load ran");
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    assert_eq!(w.stop(), 0);
}

#[test]
fn an_index_disk_that_turns_read_only_is_reported_and_survived_after_the_operator_repairs_it() {
    let (mut w, fs) = world_on_ext4("diskerofs", "64M");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["items"], &["items"]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = item_load(w.url(), stop.clone(), done.clone());
    // The operator stops deriver (it must stop promptly and cleanly while it retries), repairs
    // the disk and starts deriver again, which resumes from its checkpoints.
    let repair = |w: &mut World| {
        let asked = Instant::now();
        assert_eq!(w.stop(), 0, "deriver stopped on SIGTERM while retrying the index commit");
        eprintln!("deriver stopped {:.1}s after SIGTERM", asked.elapsed().as_secs_f64());
        fs.repair();
        w.start();
        w.wait_ready();
    };
    fault_round(&mut w, "initial", "erofs-1", || fs.go_read_only(), repair);
    fault_round(&mut w, "erofs-1", "erofs-2", || fs.go_read_only(), repair);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20, "the load ran");
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    // Resumed from the checkpoints each time, never from a new snapshot.
    assert_eq!(w.log_text().matches("derived every record").count(), 1, "log:\n{}", w.log_text());
    assert_eq!(w.stop(), 0);
}

/// A pipeline with dependencies keeps its ledger under `index.dir` too (`_ledger/*.redb`); it
/// commits after the index, so with the disk full the index commit fails first and the batch is
/// retried whole: the daemon survives and converges. (The ledger failing alone, after the index
/// committed, is the next test.)
#[test]
fn a_full_disk_under_a_pipeline_with_a_dependency_ledger_is_survived() {
    let (mut w, fs) = films_on_tmpfs("diskledger", "", "48m");
    fs.fill("filler");
    // A change of a child table: the ledger records join values.
    w.sql("UPDATE film_actor SET actor_id = 2 WHERE film_id = 1 AND actor_id = 1; UPDATE film SET title = 'FULL DISK' WHERE film_id = 2");
    assert_stays_alive(&mut w, 15, "with a full disk under the ledger");
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

/// The ledger's own disk full while the index and Redis commit fine: the ledger's commit (the last
/// of a batch) fails after the others; the batch is retried with its staged join values (the
/// ledger's handle is re-opened: redb refuses a handle that saw an I/O error) until space is
/// freed, and a later change of a child row still reaches the right records.
#[test]
fn a_full_disk_under_the_dependency_ledger_alone_is_retried_not_fatal() {
    let (mut w, fs) = films_on_tmpfs("diskledger2", "_ledger", "4m");
    fs.fill("filler");
    // A child row whose parent the ledger must remember (inventory.film_id is not in the WAL's
    // old key), staged while the ledger cannot commit.
    w.sql("INSERT INTO inventory (inventory_id, film_id, store_id) VALUES (900001, 5, 1)");
    for i in 0..200 {
        w.sql(&format!("UPDATE film SET title = 'LEDGER FULL {i}' WHERE film_id = {}", 1 + i % 50));
    }
    assert_stays_alive(&mut w, 10, "with the ledger's disk full");
    let log = w.log_text();
    assert!(log.contains("dependency ledger cannot write"), "the ledger's commit never failed; log:\n{log}");
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    // The ledger kept the join values staged during the outage: moving that copy to film 6
    // re-derives film 5 too (its copy count goes down), which only the ledger knows.
    w.sql("UPDATE inventory SET film_id = 6 WHERE inventory_id = 900001");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_alive(&mut w, "after the ledger's disk was freed");
    assert_eq!(w.stop(), 0);
}

/// The dead-letter store's own disk full (`index.dir/_state` on a tmpfs filled to the last byte)
/// when a transaction brings a key whose derivation fails beside one that works: the rejection
/// cannot be recorded, so the batch must not commit without it (a committed checkpoint would pass
/// a dead letter that exists nowhere). The batch waits, retried and unacknowledged, with the
/// daemon up and saying why; once space is freed it applies, and the dead letter is there.
#[test]
fn a_dead_letter_that_cannot_be_recorded_holds_its_batch_until_it_can() {
    let mut w = World::new("diskdead");
    let fs = Tmpfs::mount(&w.index_dir().join("_state"), "1m").unwrap_or_else(|e| cannot_mount("a tmpfs for index.dir/_state", &e));
    w.sql("CREATE TABLE item (id int PRIMARY KEY, n int, tag text); INSERT INTO item SELECT g, 1, 'before' FROM generate_series(1, 10) g");
    w.add_pipeline(
        "items",
        "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, inv: 100 / item.n, tag: item.tag }\n\
         targets:\n  - redis: { key: \"item:{id}\", type: json }\n",
    );
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["items"], &[]);
    assert!(fs.path.join("dead_letters.redb").exists(), "the daemon opened its store on the tmpfs");
    fs.fill("filler");
    // One transaction: key 3 now fails to derive (division by zero), key 4 changes fine.
    w.sql("UPDATE item SET n = 0, tag = 'after' WHERE id = 3; UPDATE item SET tag = 'after' WHERE id = 4");
    let lsn = w.current_lsn();
    assert_stays_alive(&mut w, 8, "with the dead-letter store's disk full");
    let tag = |w: &World, id: i64| -> String {
        let v: serde_json::Value = serde_json::from_str(&w.redis_get(&format!("item:{id}")).unwrap()).unwrap();
        v["tag"].as_str().unwrap().to_string()
    };
    assert!(w.redis_applied("items").unwrap() < lsn, "the batch committed without its dead letter; log:\n{}", w.log_text());
    assert_eq!(tag(&w, 4), "before", "nothing of the batch is visible while it waits");
    let confirmed: Lsn = w.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'", w.db)).parse().unwrap();
    assert!(confirmed < lsn, "the slot was acknowledged past the waiting batch ({confirmed} >= {lsn})");
    let doc = status(&w);
    let error = doc["pipelines"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("dead-letter store"), "status does not say why the pipeline waits: {doc}");
    let (code, out, err) = w.run_cli(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"], serde_json::json!([]), "{out}");

    std::fs::remove_file(fs.path.join("filler")).unwrap();
    w.catch_up(&["items"], &[]);
    assert_eq!(tag(&w, 4), "after");
    let (code, out, err) = w.run_cli(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let dead: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dead = dead["items"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{out}");
    assert_eq!(dead[0]["key"], "3");
    assert!(dead[0]["reason"].as_str().unwrap().contains("division by zero"), "{out}");
    assert_eq!(dead[0]["attempts"], 1, "a batch retried while it waited counts one attempt: {out}");
    assert_alive(&mut w, "after the dead-letter store's disk was freed");
    assert_eq!(w.stop(), 0);
}

/// The repo's `films` pipeline, running and caught up, with `index.dir/<sub>` on a tmpfs of `size`
/// (the test fails where a tmpfs cannot be mounted).
fn films_on_tmpfs(name: &str, sub: &str, size: &str) -> (World, Tmpfs) {
    let mut w = World::new(name);
    let fs = Tmpfs::mount(&w.index_dir().join(sub), size).unwrap_or_else(|e| cannot_mount(&format!("a tmpfs for index.dir/{sub}"), &e));
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    (w, fs)
}
