//! What a new user meets first: every configuration mistake exits 2 with a sentence naming the
//! key (as `shared/spec/cli-and-config.md` and the README say), output cut short by a closed
//! pipe ends quietly, and logs written to a file or pipe carry no colour codes.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs `cmd` to its end (at most 60 s): (exit code, or -signal; stdout; stderr).
fn finish(mut cmd: Command) -> (i32, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end within 60 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    use std::os::unix::process::ExitStatusExt;
    (status.code().unwrap_or_else(|| -status.signal().unwrap_or(0)), out, err)
}

#[test]
fn every_configuration_mistake_exits_2_naming_the_key() {
    let w = World::on(&env().pg, "config", None);
    w.add_pipeline(
        "things",
        "version: 1\npipeline: things\nsource: { table: public.thing }\nfields: { id: thing.id }\ntargets:\n  - redis: { key: \"thing:{id}\", type: json }\n",
    );
    w.sql("CREATE TABLE thing (id integer PRIMARY KEY)");
    let file = |name: &str, text: &str| {
        let p = w.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let syntax = file("syntax.toml", "[postgres\nurl = 'x'\n");
    let unknown = file("unknown.toml", &format!("[postgres]\nurl = '{}'\nslots = 'x'\n", w.url()));
    let pg_url = w.url();
    // (what, extra arguments before the command, environment overrides, variables to remove, text the error names)
    type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a configuration file that does not exist",
            vec!["--config".into(), "/nonexistent/deriver.toml".into()],
            vec![],
            vec![],
            "/nonexistent/deriver.toml does not exist",
        ),
        ("a TOML syntax error", vec!["--config".into(), syntax], vec![], vec![], "could not read the configuration"),
        ("an unknown key", vec!["--config".into(), unknown], vec![], vec!["DERIVER__POSTGRES__URL"], "slots"),
        ("a value of the wrong type", vec![], vec![("DERIVER__RUNTIME__BATCH_MAX_MS", "soon".into())], vec![], "batch_max_ms"),
        ("no postgres.url", vec![], vec![], vec!["DERIVER__POSTGRES__URL"], "postgres.url is not set"),
        (
            "a malformed postgres.url",
            vec![],
            vec![("DERIVER__POSTGRES__URL", "postgres://h:notaport/db".into())],
            vec![],
            "postgres.url is not a valid connection string",
        ),
        ("an unknown sslmode", vec![], vec![("DERIVER__POSTGRES__URL", format!("{pg_url}?sslmode=sometimes"))], vec![], "sslmode `sometimes`"),
        (
            "a missing password_file",
            vec![],
            vec![("DERIVER__POSTGRES__PASSWORD_FILE", "/nonexistent/pw".into())],
            vec![],
            "postgres.password_file /nonexistent/pw",
        ),
        ("a malformed redis.url", vec![], vec![("DERIVER__REDIS__URL", "redis://h:notaport/".into())], vec![], "is not a valid Redis URL"),
        (
            "several Redis nodes without redis.cluster",
            vec![],
            vec![("DERIVER__REDIS__URL", "redis://h:1/,redis://h:2/".into())],
            vec![],
            "set redis.cluster = true",
        ),
        ("a slot name Postgres would not take", vec![], vec![("DERIVER__POSTGRES__SLOT", "Bad-Name".into())], vec![], "postgres.slot `Bad-Name`"),
        ("an audit share out of range", vec![], vec![("DERIVER__AUDIT__SAMPLE_PERCENT", "0".into())], vec![], "audit.sample_percent"),
        ("an address that cannot be listened on", vec![], vec![("DERIVER__HTTP__LISTEN", "not-an-address".into())], vec![], "(http.listen)"),
    ];
    for (what, args, envs, removed, names) in &cases {
        let mut cmd = w.command();
        cmd.args(args).arg("run");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        for k in removed {
            cmd.env_remove(k);
        }
        let (code, out, err) = finish(cmd);
        assert_eq!(code, 2, "{what}: exit {code}\n{out}\n{err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{what}: no `error:` line in {err}"));
        assert!(err.contains(names), "{what}: want `{names}` in: {line}\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }

    // Not a configuration mistake: the port is taken by another process (exit 1).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = w.command();
    cmd.env("DERIVER__HTTP__LISTEN", taken.local_addr().unwrap().to_string()).arg("run");
    let (code, _, err) = finish(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn output_cut_short_ends_quietly_and_logs_to_a_pipe_have_no_colour() {
    let w = World::new("pipe");
    w.add_repo_pipeline("films");
    w.setup();
    // `deriver status | head -0`: the reader is gone before deriver writes.
    for args in [&["status"][..], &["plan"], &["validate"]] {
        let mut cmd = w.command();
        cmd.args(args).env("DERIVER_LOG", "debug");
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(status.success() || status.signal() == Some(libc::SIGPIPE), "{args:?}: {status:?}\n{err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
    // Logs to a pipe (or a file, or a journal): plain text, no ANSI escape sequences; and none
    // with NO_COLOR either way.
    let mut cmd = w.command();
    cmd.arg("status").env("DERIVER_LOG", "debug");
    let (code, out, err) = finish(cmd);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("DEBUG") && err.contains("connected to Postgres"), "the debug log is there: {err}");
    assert!(!err.contains('\u{1b}') && !out.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// A monitoring probe runs `deriver status` while the daemon starts: without a daemon answering,
/// status reads the dead-letter store, which takes its lock for a moment. The start waits for it
/// instead of failing ("cannot open the dead-letter store").
#[test]
fn a_daemon_starting_while_a_command_reads_the_dead_letter_store_waits_for_it() {
    let mut w = World::new("deadstore");
    w.add_repo_pipeline("films");
    w.setup();
    let dir = deriver::runtime::state_dir(&w.index_dir());
    // What `deriver status` does without a daemon, held long enough to meet the start.
    let held = deriver::runtime::dead_letters::DeadLetters::open(&dir).unwrap();
    w.start();
    std::thread::sleep(Duration::from_secs(3));
    let still_running = w.daemon.as_mut().unwrap().try_wait().unwrap().is_none();
    drop(held);
    assert!(still_running, "the daemon gave up while the store was held:\n{}", w.log_text());
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}
