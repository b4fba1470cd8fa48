//! `/openapi.json` checked against the running server: `schemathesis` (pinned in
//! tests/openapi/requirements.txt, installed by `scripts/dev-stack.sh install` into
//! `.dev/schemathesis`, or `DERIVER_SCHEMATHESIS`) generates requests for every operation the
//! document describes — valid and invalid ones — and checks that no answer is a server error and
//! that every answer has a documented status, content type and shape. The daemon runs on real
//! Postgres with the films sample, with an API key. Without schemathesis the test fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

const KEY: &str = "openapi-test-key";

fn schemathesis() -> PathBuf {
    let bin = std::env::var_os("DERIVER_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/schemathesis/bin/schemathesis"));
    assert!(bin.exists(), "{} is missing: install the pinned schemathesis with `scripts/dev-stack.sh install`", bin.display());
    bin
}

#[test]
fn the_server_keeps_to_its_openapi_document() {
    let bin = schemathesis();
    let mut w = World::new("openapi");
    w.add_repo_pipeline("films");
    w.setup();
    let mut cmd = w.command();
    cmd.env("DERIVER__HTTP__TOKEN", KEY);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["films"], &["films"]);
    let base = format!("http://127.0.0.1:{}", w.http_port);

    // The document is served without a key and names both APIs.
    let doc: Value = reqwest::blocking::get(format!("{base}/openapi.json")).unwrap().json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/indexes/{index}/search"]["post"].is_object() && doc["paths"]["/multi-search"]["post"].is_object());

    // The change feed of a live pipeline streams for as long as the client listens, which a
    // fuzzer that reads whole answers cannot: it gets the feed's other answers (no such pipeline,
    // a bad `since`); the stream itself is checked here, against the document.
    let feed = reqwest::blocking::Client::new().get(format!("{base}/v1/pipelines/films/changes")).bearer_auth(KEY).send().unwrap();
    assert_eq!(feed.status(), 200);
    let documented = &doc["paths"]["/v1/pipelines/{pipeline}/changes"]["get"]["responses"]["200"]["content"];
    let content_type = feed.headers()["content-type"].to_str().unwrap().to_string();
    assert!(documented.get(&content_type).is_some(), "the feed's {content_type} is not what /openapi.json says: {documented}");
    drop(feed);

    // Index paths name the live index, so that searches, documents and settings are exercised
    // beyond their 404.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"path.uid\" = \"films\"\n\"path.index\" = \"films\"\n").unwrap();
    std::fs::write(
        dir.path().join("deriver_hooks.py"),
        "import schemathesis\n\n\
         @schemathesis.hook\n\
         def filter_case(context, case):\n    \
             return not (case.operation.path == '/v1/pipelines/{pipeline}/changes' and (case.path_parameters or {}).get('pipeline') == 'films')\n",
    )
    .unwrap();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/openapi");
    std::fs::create_dir_all(&artifacts).unwrap();
    let report = artifacts.join("schemathesis.txt");
    let out = std::fs::File::create(&report).unwrap();
    let status = Command::new(&bin)
        .current_dir(dir.path())
        .env("PYTHONPATH", dir.path())
        .env("SCHEMATHESIS_HOOKS", "deriver_hooks")
        .args(["--no-color", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--max-examples", "100", "--workers", "2", "--request-timeout", "40"])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let output = std::fs::read_to_string(&report).unwrap();
    assert!(status.success(), "schemathesis found problems ({status}):\n{output}\n--- daemon log ---\n{}", w.log_text());
    // It ran every operation (the summary counts them) but `GET /openapi.json`, which it leaves
    // out as the document it was given (fetched and checked above).
    let methods = ["get", "post", "put", "patch", "delete"];
    let operations: usize = doc["paths"].as_object().unwrap().values().map(|item| methods.iter().filter(|m| item.get(**m).is_some()).count()).sum();
    assert!(output.contains(&format!("Tested: {}\n", operations - 1)), "not every one of the {operations} operations ran:\n{output}");
}
