//! Crash points for the crash-matrix tests. In debug builds (what the tests run), setting
//! `DERIVER_FAILPOINTS=name[:n],…` makes the process abort — like a SIGKILL, no cleanup — the
//! n-th time (default: first) it reaches that point. Release builds compile them to nothing.
//!
//! Not the `fail` crate: its actions (panic, return, sleep, pause …) unwind or stall one task,
//! while these tests need the whole process to die at that instant, as a power cut or `kill -9`
//! would, with no destructor, flush or final acknowledgement running after it.

#[cfg(debug_assertions)]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    fn table() -> &'static Mutex<HashMap<String, u64>> {
        static T: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
        T.get_or_init(|| {
            let spec = std::env::var("DERIVER_FAILPOINTS").unwrap_or_default();
            let map = spec
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| match s.trim().split_once(':') {
                    Some((n, c)) => (n.to_string(), c.parse().unwrap_or(1)),
                    None => (s.trim().to_string(), 1),
                })
                .collect();
            Mutex::new(map)
        })
    }

    pub fn hit(name: &str) {
        let mut t = table().lock().expect("failpoint table");
        if let Some(left) = t.get_mut(name) {
            *left -= 1;
            if *left == 0 {
                eprintln!("failpoint {name}: aborting the process");
                std::process::abort();
            }
        }
    }
}

/// A named crash point (see the module docs).
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    imp::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}
