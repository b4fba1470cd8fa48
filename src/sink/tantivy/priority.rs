//! The lower scheduling priority of the index's background threads (tantivy's merge threads, the
//! spare-file maker of `directory.rs`): they use idle CPU instead of delaying commits.

/// How much lower tantivy's merge threads run than the rest of deriver (a `nice` increment).
/// A merge is background work: it can wait, a commit cannot. Measured under steady churn on two
/// cores, merges took about 40 % of deriver's CPU and competed with every commit's segment write
/// and delete application, which sit on the path from a transaction's commit to its visibility.
/// At +10 (a tenth of the weight) a merge still uses whatever CPU is idle. The thread that makes
/// spare index files (`directory.rs`) runs at the same priority, for the same reason.
pub(super) const BACKGROUND_NICE: i32 = 10;

/// Lowers one thread of this process (`0`: the calling thread) to [`BACKGROUND_NICE`]. A thread
/// whose priority cannot be changed is left as it is (it only shapes latency, never correctness).
#[cfg(target_os = "linux")]
pub(super) fn lower_thread_priority(tid: libc::id_t) {
    // SAFETY: setpriority takes plain integers; 0 or a thread id of this process is valid.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn lower_thread_priority(_tid: u32) {}

/// Lowers the scheduling priority of this process's tantivy merge threads (`merge_thread_<n>`)
/// to [`BACKGROUND_NICE`]. tantivy creates a writer's merge pool when the writer is created (and again
/// on a rollback) and gives no hook to set its threads' priority, so they are found by name; the
/// writer thread calls this at a writer's first commit, when they are running and named.
#[cfg(target_os = "linux")]
pub(super) fn lower_merge_priority() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok()) else { continue };
        let is_merge = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("merge_thread_"));
        if is_merge {
            lower_thread_priority(tid);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn lower_merge_priority() {}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use tantivy::schema::Schema;
    use tantivy::{Index, IndexWriter, TantivyDocument};

    /// Every merge thread of a writer runs at the lowered priority once `lower_merge_priority`
    /// has seen it (other tests' writers may start merge threads meanwhile: those are caught by
    /// the next call, as the writer thread's next commit would).
    #[cfg(target_os = "linux")]
    #[test]
    fn merge_threads_run_at_a_lower_priority() {
        let index = Index::create_in_ram(Schema::builder().build());
        let _writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let merge_nices = || -> Vec<i32> {
            let mut out = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let named = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("merge_thread_"));
                let tid: libc::id_t = task.file_name().to_str().unwrap().parse().unwrap();
                if named {
                    // SAFETY: plain integers; errno is not consulted (a nice of -1 fails the test).
                    out.push(unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) });
                }
            }
            out
        };
        let mut nices = Vec::new();
        for _ in 0..50 {
            super::lower_merge_priority();
            nices = merge_nices();
            if !nices.is_empty() && nices.iter().all(|&n| n == super::BACKGROUND_NICE) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("merge threads' nice values: {nices:?} (want all {})", super::BACKGROUND_NICE);
    }
}
