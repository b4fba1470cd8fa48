//! `GET /v1/pipelines/{pipeline}/changes?since=LSN`: applied batches as Server-Sent Events.
//!
//! - every event: `id: <lsn>` and `data: {"lsn", "keys", "deleted"}` (`keys: ["*"]` means "re-read
//!   everything", as the runtime sends for a TRUNCATE or a huge batch);
//! - `since` (or the `Last-Event-ID` header): the remembered notices after it are replayed first,
//!   then live ones follow; when the daemon no longer remembers everything after `since` (it
//!   started later, or its bounded history dropped older notices), the first event is
//!   `event: reset`: re-read the whole data set, then go on with the events that follow;
//! - a client too slow to keep up gets `event: dropped` and the stream ends (the pipeline never
//!   waits for a reader; reconnect with `since` = the last id received).
//!
//! Memory per client is bounded: the replay holds at most the history's `Arc`s, live notices come
//! from the shared broadcast channel.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::Event;
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::runtime::status::{ChangeNotice, Shared};
use crate::source::Lsn;

/// Per pipeline, the applied LSN the daemon had when this process first saw it: change notices
/// exist only for batches after it. (Observed from the status document; see the module docs of
/// `http` for the accessor this would ideally be.)
#[derive(Default)]
pub struct Floors {
    seen: Mutex<HashMap<String, Lsn>>,
}

impl Floors {
    /// Records the applied LSN of every pipeline seen for the first time; true when every
    /// pipeline of the status document has a floor.
    pub fn observe(&self, shared: &Shared) -> bool {
        let Some(doc) = shared.snapshot() else { return false };
        let Ok(mut seen) = self.seen.lock() else { return false };
        let mut complete = true;
        for p in &doc.pipelines {
            match p.applied_lsn {
                Some(a) => {
                    seen.entry(p.name.clone()).or_insert(a);
                }
                None => complete = false,
            }
        }
        complete
    }

    pub fn floor(&self, pipeline: &str) -> Option<Lsn> {
        self.seen.lock().ok()?.get(pipeline).copied()
    }

    /// Watches `progress` until every pipeline has a floor.
    pub fn spawn_watcher(self: &Arc<Self>, shared: Arc<Shared>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let floors = self.clone();
        handle.spawn(async move {
            let mut rx = shared.progress.subscribe();
            loop {
                if floors.observe(&shared) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

fn change_event(n: &ChangeNotice) -> Event {
    let data = json!({ "lsn": n.lsn, "keys": n.keys, "deleted": n.deleted });
    Event::default().id(n.lsn.to_string()).data(data.to_string())
}

/// Where a stream starts: the events to send first, and the LSN after which live notices count.
struct Start {
    first: VecDeque<Event>,
    after: Option<Lsn>,
}

fn start(shared: &Shared, floors: &Floors, pipeline: &str, since: Option<Lsn>) -> Start {
    let Some(since) = since else { return Start { first: VecDeque::new(), after: None } };
    floors.observe(shared);
    let history = match shared.history.read() {
        Ok(h) => h,
        Err(p) => p.into_inner(),
    };
    // Notices dropped to keep the history within its bounds.
    let history_floor = history.dropped_through();
    let floor = match (floors.floor(pipeline), history_floor) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (Some(a), None) => Some(a),
        // Not applied anything yet (still snapshotting): nothing before now can be resumed.
        (None, _) => None,
    };
    let missed = floor.is_none_or(|f| since < f);
    if missed {
        let applied = shared.pipeline_applied(pipeline);
        let data = json!({
            "reason": "the daemon does not remember every change after `since`: re-read everything, then apply the events that follow",
            "since": since,
            "oldest_lsn": floor,
            "applied_lsn": applied,
        });
        let mut ev = Event::default().event("reset").data(data.to_string());
        if let Some(a) = applied {
            ev = ev.id(a.to_string());
        }
        return Start { first: VecDeque::from([ev]), after: None };
    }
    let mut first = VecDeque::new();
    let mut after = since;
    for n in history.iter().filter(|n| n.pipeline == pipeline && n.lsn > since) {
        first.push_back(change_event(n));
        after = after.max(n.lsn);
    }
    Start { first, after: Some(after) }
}

enum State {
    Running { first: VecDeque<Event>, rx: tokio::sync::broadcast::Receiver<Arc<ChangeNotice>>, after: Option<Lsn> },
    Done,
}

/// The event stream of one client.
pub fn stream(shared: Arc<Shared>, floors: Arc<Floors>, pipeline: String, since: Option<Lsn>) -> impl Stream<Item = Result<Event, Infallible>> {
    // Subscribe before reading the history: a notice sent in between is in both, and `after`
    // filters the duplicate out.
    let rx = shared.changes.subscribe();
    let Start { first, after } = start(&shared, &floors, &pipeline, since);
    futures::stream::unfold(State::Running { first, rx, after }, move |state| {
        let pipeline = pipeline.clone();
        async move {
            let State::Running { mut first, mut rx, mut after } = state else { return None };
            if let Some(ev) = first.pop_front() {
                return Some((Ok(ev), State::Running { first, rx, after }));
            }
            loop {
                match rx.recv().await {
                    Ok(n) => {
                        if n.pipeline != pipeline || after.is_some_and(|a| n.lsn <= a) {
                            continue;
                        }
                        after = Some(n.lsn);
                        let ev = change_event(&n);
                        return Some((Ok(ev), State::Running { first, rx, after }));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let data = json!({
                            "reason": "this client fell behind and missed changes; reconnect with `since` = the last event id",
                            "missed_notices": missed,
                            "last_lsn": after,
                        });
                        metrics::counter!("deriver_http_sse_dropped_total").increment(1);
                        return Some((Ok(Event::default().event("dropped").data(data.to_string())), State::Done));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn shared(applied: Lsn) -> Arc<Shared> {
        crate::http::testing::shared_with(Some(applied))
    }

    fn notice(pipeline: &str, lsn: u64, key: &str) -> ChangeNotice {
        ChangeNotice { pipeline: pipeline.into(), lsn: Lsn(lsn), keys: vec![key.into()], deleted: vec![] }
    }

    /// The text of an event as it goes on the wire.
    async fn text(ev: Event) -> String {
        use axum::response::IntoResponse;
        let s = axum::response::sse::Sse::new(futures::stream::iter([Ok::<_, Infallible>(ev)]));
        let body = s.into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn next(s: &mut (impl Stream<Item = Result<Event, Infallible>> + Unpin)) -> String {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an event in time").expect("stream open").unwrap();
        text(ev).await
    }

    #[tokio::test]
    async fn replays_after_since_then_follows() {
        let sh = shared(Lsn(100));
        let floors = Arc::new(Floors::default());
        floors.observe(&sh);
        sh.notify_change(notice("films", 110, "1"));
        sh.notify_change(notice("other", 115, "x"));
        sh.notify_change(notice("films", 120, "2"));
        let mut s = Box::pin(stream(sh.clone(), floors.clone(), "films".into(), Some(Lsn(110))));
        let ev = next(&mut s).await;
        assert!(ev.contains("id: 0/78") && ev.contains(r#""keys":["2"]"#), "{ev}");
        sh.notify_change(notice("other", 125, "y"));
        sh.notify_change(notice("films", 130, "3"));
        let ev = next(&mut s).await;
        assert!(ev.contains("id: 0/82") && ev.contains(r#""keys":["3"]"#), "{ev}");
        // From the floor itself everything is known: no reset.
        let mut s = Box::pin(stream(sh.clone(), floors.clone(), "films".into(), Some(Lsn(100))));
        assert!(next(&mut s).await.contains(r#""keys":["1"]"#));
    }

    #[tokio::test]
    async fn resets_when_since_is_older_than_memory() {
        let sh = shared(Lsn(100));
        let floors = Arc::new(Floors::default());
        floors.observe(&sh);
        sh.notify_change(notice("films", 110, "1"));
        let mut s = Box::pin(stream(sh.clone(), floors.clone(), "films".into(), Some(Lsn(50))));
        let ev = next(&mut s).await;
        assert!(ev.starts_with("event: reset"), "{ev}");
        sh.notify_change(notice("films", 140, "4"));
        assert!(next(&mut s).await.contains(r#""keys":["4"]"#));
        // A full history that dropped older notices.
        let sh = shared(Lsn(1));
        floors.observe(&sh);
        for i in 0..(crate::runtime::status::CHANGE_HISTORY as u64 + 5) {
            sh.notify_change(notice("films", 10 + i, "k"));
        }
        let floors = Arc::new(Floors::default());
        floors.observe(&sh);
        let mut s = Box::pin(stream(sh.clone(), floors, "films".into(), Some(Lsn(12))));
        assert!(next(&mut s).await.starts_with("event: reset"));
    }

    #[tokio::test]
    async fn a_lagging_client_is_dropped() {
        let sh = shared(Lsn(100));
        let floors = Arc::new(Floors::default());
        let mut s = Box::pin(stream(sh.clone(), floors, "films".into(), None));
        // More than the broadcast channel holds, while the client reads nothing.
        for i in 0..2000 {
            sh.notify_change(notice("films", 200 + i, "k"));
        }
        let ev = next(&mut s).await;
        assert!(ev.starts_with("event: dropped"), "{ev}");
        assert!(tokio::time::timeout(Duration::from_secs(1), s.next()).await.unwrap().is_none(), "the stream ends");
    }
}
