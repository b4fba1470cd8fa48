//! What fault tests look at from outside the daemon: its HTTP answers (`/v1/status`, `/readyz`,
//! `/metrics`), the slot's acknowledged position, its memory (`/proc/<pid>/status`), and a way to
//! start it with extra environment (a proxied URL, a small index disk).

use std::time::Duration;

use super::{Lsn, World};

/// Starts the daemon with extra environment variables (overriding the world's).
pub fn start_with(w: &mut World, extra: &[(&str, String)]) {
    assert!(w.daemon.is_none(), "daemon already running");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    let mut c = w.command();
    for (k, v) in extra {
        c.env(k, v);
    }
    w.daemon = Some(c.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
}

/// True while the daemon process runs.
pub fn alive(w: &mut World) -> bool {
    w.daemon.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
}

/// Asserts that the daemon still runs (with its log when it does not).
pub fn assert_alive(w: &mut World, when: &str) {
    assert!(alive(w), "deriver exited {when}; log:\n{}", w.log_text());
}

/// Checks every 200 ms for `secs` that deriver keeps running (it retries, it does not exit).
pub fn assert_stays_alive(w: &mut World, secs: u64, when: &str) {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(secs) {
        assert_alive(w, when);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `GET path` on the daemon's HTTP port: (status, body), or `None` when it does not answer.
pub fn http_get(w: &World, path: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let resp = client.get(format!("http://127.0.0.1:{}{path}", w.http_port)).send().ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().ok()?))
}

/// The daemon's `/v1/status` document.
pub fn status(w: &World) -> serde_json::Value {
    let (code, body) = http_get(w, "/v1/status").expect("/v1/status answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The daemon's `/metrics` text.
pub fn metrics(w: &World) -> String {
    http_get(w, "/metrics").expect("/metrics answers").1
}

/// The value of the first sample of `name` whose label set contains every `labels` pair
/// (`name{a="b",…} value`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else { continue };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if labels.iter().all(|(k, v)| label_part.split(',').any(|p| p == format!("{k}=\"{v}\""))) {
            return value.trim().parse().ok();
        }
    }
    None
}

/// The slot's `confirmed_flush_lsn` (what deriver acknowledged), read directly from Postgres.
pub fn slot_confirmed(w: &World) -> Option<Lsn> {
    let v = w.cluster.psql("postgres", &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'", w.db));
    v.parse().ok()
}

/// Asserts that the slot was not acknowledged past what every sink holds durably: the slot is
/// read first, the sinks' stored checkpoints (which only grow) after it.
pub fn assert_ack_within_checkpoints(w: &World, redis_pipelines: &[&str], indexes: &[&str]) {
    let Some(acked) = slot_confirmed(w) else { return };
    for p in redis_pipelines {
        let cp = w.redis_applied(p);
        assert!(cp.is_some_and(|c| c >= acked), "slot acknowledged {acked} past the Redis checkpoint {cp:?} of {p}");
    }
    for i in indexes {
        let cp = w.index_applied(i);
        assert!(cp.is_some_and(|c| c >= acked), "slot acknowledged {acked} past the index checkpoint {cp:?} of {i}");
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The daemon's process id.
pub fn pid(w: &World) -> u32 {
    w.daemon.as_ref().expect("daemon running").id()
}
