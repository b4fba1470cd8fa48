//! The status and search page (`GET /`) in a real headless Chromium driven over WebDriver:
//! the pipelines table fills in, typing in the search box shows highlighted hits and facet
//! counts, and with `http.token` set the token form opens the page. Screenshots go to
//! `target/test-artifacts/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/dev-stack.sh install`); without them
//! the test fails and says so.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn require_browser() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: the browser test needs Debian's chromium and chromium-driver packages \
             (run `scripts/dev-stack.sh install`, or `apt-get install -y --no-install-recommends chromium chromium-driver`)"
        );
    }
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("deriver-chromedriver-{port}.log"));
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port, _profile: tempfile::Builder::new().prefix("deriver-chromium-").tempdir().unwrap() }
    }

    async fn session(&self) -> Client {
        let profile = self._profile.path().display().to_string();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={profile}")])
        .collect::<Vec<_>>();
        let caps = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": args } });
        let Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Starts the films pipeline (with extra environment) and waits until it has caught up.
fn world(name: &str, extra: &[(&str, &str)]) -> World {
    let mut w = World::new(name);
    w.add_repo_pipeline("films");
    w.setup();
    let mut cmd = w.command();
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["films"], &["films"]);
    w
}

const WAIT: Duration = Duration::from_secs(30);

/// Types a query and waits for highlighted hits; returns the first hit's HTML.
async fn search_shows_marks(c: &Client, q: &str) -> String {
    let input = c.wait().at_most(WAIT).for_element(Locator::Css("#q")).await.expect("the search box");
    input.send_keys(q).await.unwrap();
    let mark = c.wait().at_most(WAIT).for_element(Locator::Css("#hits .hit mark")).await.expect("highlighted hits");
    assert_eq!(mark.text().await.unwrap().to_lowercase(), q.to_lowercase());
    c.find(Locator::Css("#hits .hit")).await.unwrap().html(false).await.unwrap()
}

#[test]
fn page_shows_pipelines_and_highlighted_search_hits() {
    require_browser();
    let mut w = world("browser", &[]);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        let row = c.wait().at_most(WAIT).for_element(Locator::Css("#pipelines tr[data-pipeline='films']")).await.expect("the films row");
        let text = row.text().await.unwrap();
        assert!(text.contains("films") && text.contains("streaming"), "{text}");
        let hit = search_shows_marks(&c, "dinosaur").await;
        assert!(hit.to_lowercase().contains("<mark>dinosaur</mark>"), "{hit}");
        // Facet counts for the keyword facets of the index.
        let facet = c.wait().at_most(WAIT).for_element(Locator::Css("#facets [data-facet='rating'] button")).await.expect("rating facet counts");
        assert!(facet.text().await.unwrap().chars().any(|ch| ch.is_ascii_digit()));
        let summary = c.find(Locator::Css("#summary")).await.unwrap().text().await.unwrap();
        assert!(summary.contains("hits"), "{summary}");
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(artifacts().join("ui.png"), png).unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}

#[test]
fn with_a_token_the_form_opens_the_page() {
    require_browser();
    let mut w = world("browser_token", &[("DERIVER__HTTP__TOKEN", "page-token")]);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        let field = c.wait().at_most(WAIT).for_element(Locator::Css("form#login input#token")).await.expect("the token form");
        field.send_keys("page-token").await.unwrap();
        c.find(Locator::Css("form#login button")).await.unwrap().click().await.unwrap();
        c.wait().at_most(WAIT).for_element(Locator::Css("#pipelines tr[data-pipeline='films']")).await.expect("the page after the token");
        let hit = search_shows_marks(&c, "academy").await;
        assert!(hit.to_lowercase().contains("<mark>academy</mark>"), "{hit}");
        let png = c.screenshot().await.unwrap();
        std::fs::write(artifacts().join("ui-token.png"), png).unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}
