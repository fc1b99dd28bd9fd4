//! The operator's first day with the real binary: `check` on files, `-c`, stdin payloads,
//! closed pipes, log levels, state_dir mistakes and the serve lock, `send-test` against the
//! fake Chat, dead-letter ids and names, and config errors that never echo a secret.
//!
//! `KABAR_TEST_BIN` runs these against another kabar binary (to see them fail on an older
//! build); by default they run the one cargo built.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    KabarProcess, TEST_TOKEN, TestConfig, client, notification, post_alerts,
};

const WAIT: Duration = Duration::from_secs(30);

fn kabar_bin() -> PathBuf {
    std::env::var_os("KABAR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kabar")))
}

fn kabar(args: &[&str]) -> Command {
    let mut command = Command::new(kabar_bin());
    command
        .args(args)
        .env_remove("KABAR_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

fn run(args: &[&str]) -> Output {
    kabar(args).output().expect("run kabar")
}

fn text_of(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/alertmanager/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A folder with a dry-run config; `extra` is more YAML (before `spaces:`). Unless
/// `extra` sets one, state_dir is the folder's `state`.
fn dry_run_config(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kabar.yaml");
    let state_dir = if extra.contains("state_dir:") {
        String::new()
    } else {
        format!("state_dir: {}\n", dir.path().join("state").display())
    };
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\n{state_dir}{extra}spaces:\n  ops:\n    dry_run: true\n    receivers: [gchat]\n"
        ),
    )
    .expect("write config");
    (dir, path)
}

// ---------------------------------------------------------------------------------------
// Pipes, files, stdin, flags

/// stdout is a pipe whose reader is already gone: every write fails with EPIPE, as for
/// `kabar render ... | head` once head has read enough.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = kabar(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kabar");
    child.wait_with_output().expect("wait for kabar")
}

#[test]
fn a_closed_stdout_ends_each_command_quietly_instead_of_a_panic() {
    let (dir, config) = dry_run_config("");
    let config = path_str(&config).to_owned();
    kabar::SqliteStore::open(&dir.path().join("state"))
        .expect("create an empty store")
        .close();
    let payload = fixture("grouped-firing.json");
    let commands: [&[&str]; 6] = [
        &["render", "--config", &config, "--payload", &payload],
        &["check", "--config", &config],
        &["dead-letters", "list", "--config", &config],
        &["dead-letters", "list", "--json", "--config", &config],
        &["--help"],
        &["check", "--help"],
    ];
    for args in commands {
        let output = with_closed_stdout(args);
        let (_, stderr) = text_of(&output);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_ne!(
            output.status.code(),
            Some(101),
            "{args:?} panicked: {stderr}"
        );
    }
    drop(dir);
}

#[test]
fn check_takes_files_positionally_like_promtool_and_names_each() {
    let (dir, good) = dry_run_config("");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "spaces:\n  ops:\n    dry_run: true\n    recievers: [x]\n",
    )
    .expect("write");
    let output = run(&["check", path_str(&good), path_str(&bad)]);
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: OK", good.display())),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: spaces.ops.recievers: unknown field",
            bad.display()
        )) && stderr.contains("line 4"),
        "{stderr}"
    );

    for args in [
        vec!["check", path_str(&good)],
        vec!["check", "-c", path_str(&good)],
        vec!["check", "--config", path_str(&good)],
    ] {
        let output = run(&args);
        assert!(output.status.success(), "{args:?}: {:?}", text_of(&output));
    }
    let output = kabar(&["check"])
        .env("KABAR_CONFIG", &good)
        .output()
        .expect("run");
    assert!(output.status.success(), "{:?}", text_of(&output));
    // A file named on the command line is checked instead of KABAR_CONFIG, not besides.
    let output = kabar(&["check", path_str(&good)])
        .env("KABAR_CONFIG", &bad)
        .output()
        .expect("run");
    assert!(output.status.success(), "{:?}", text_of(&output));

    let output = run(&["check"]);
    let (_, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("kabar check FILE"), "{stderr}");
}

#[test]
fn every_flag_has_help_text() {
    for command in [
        vec!["serve"],
        vec!["check"],
        vec!["render"],
        vec!["send-test"],
        vec!["dead-letters", "list"],
        vec!["dead-letters", "retry"],
        vec!["dead-letters", "drop"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let output = run(&args);
        let (help, _) = text_of(&output);
        assert!(output.status.success(), "{args:?}");
        let options = help.split("Options:").nth(1).expect("an Options section");
        for line in options.lines().filter(|l| l.trim_start().starts_with('-')) {
            let described = line
                .trim()
                .split("  ")
                .filter(|part| !part.trim().is_empty())
                .count()
                > 1;
            assert!(
                described,
                "{args:?}: flag without help text: {line:?}\n{help}"
            );
        }
        assert!(help.contains("-c, --config <FILE>"), "{args:?}: {help}");
    }
}

#[test]
fn render_reads_the_payload_from_stdin() {
    let (_dir, config) = dry_run_config("");
    let from_file = run(&[
        "render",
        "--config",
        path_str(&config),
        "--payload",
        &fixture("firing.json"),
    ]);
    assert!(from_file.status.success(), "{:?}", text_of(&from_file));

    let mut child = kabar(&["render", "--config", path_str(&config), "--payload", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let payload = std::fs::read(fixture("firing.json")).expect("fixture");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&payload).expect("write payload");
    }
    let from_stdin = child.wait_with_output().expect("wait");
    assert!(from_stdin.status.success(), "{:?}", text_of(&from_stdin));
    let parse = |out: &Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("render prints JSON")
    };
    let (file_json, stdin_json) = (parse(&from_file), parse(&from_stdin));
    assert_eq!(stdin_json[0]["threadKey"], file_json[0]["threadKey"]);
    assert_eq!(stdin_json[0]["body"], file_json[0]["body"]);
}

#[test]
fn a_payload_beyond_max_body_bytes_is_refused_like_the_service_would() {
    let (dir, config) = dry_run_config("max_body_bytes: 1024\n");
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"pad\": \"{}\"}}", "x".repeat(5000))).expect("write");
    let output = run(&[
        "render",
        "--config",
        path_str(&config),
        "--payload",
        path_str(&big),
    ]);
    let (_, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("larger than max_body_bytes (1024 bytes)"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Log levels

/// Starts `kabar serve` with `args` and returns its stderr once `needle` shows up or it
/// exits; the child is killed either way.
fn serve_until(config: &Path, args: &[&str], needle: &str) -> (String, Option<i32>) {
    let log = config.with_extension("log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut full = vec!["serve", "--config", path_str(config)];
    full.extend_from_slice(args);
    let mut child = kabar(&full)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn kabar serve");
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) {
            break None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    (std::fs::read_to_string(&log).unwrap_or_default(), code)
}

#[test]
fn log_level_aliases_work_and_unknown_levels_are_refused_with_the_list() {
    let (dir, config) = dry_run_config("");
    // `warning` used to be read as a target name by tracing: nothing was logged at all.
    let (log, _) = serve_until(&config, &["--log-level", "warning"], "no auth configured");
    assert!(
        log.contains("WARN") && log.contains("no auth configured"),
        "{log}"
    );
    assert!(
        !log.contains("INFO"),
        "warn level logs no info lines: {log}"
    );

    let output = run(&[
        "serve",
        "--config",
        path_str(&config),
        "--log-level",
        "verbose",
    ]);
    let (_, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown log level \"verbose\"")
            && stderr.contains("error, warn, info, debug or trace"),
        "{stderr}"
    );
    drop(dir);
}

// ---------------------------------------------------------------------------------------
// state_dir

#[test]
fn a_state_dir_that_is_a_file_fails_check_and_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, "a file").expect("write");
    let (_config_dir, config) = dry_run_config(&format!("state_dir: {}\n", file.display()));
    let output = run(&["check", "--config", path_str(&config)]);
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    let (log, code) = serve_until(&config, &[], "kabar is listening");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is a file, not a folder"), "{log}");
}

#[cfg(unix)]
#[test]
fn a_state_dir_kabar_cannot_write_fails_check_and_serve_with_the_uid_hint() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let config = dir.path().join("kabar.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstate_dir: {}\nspaces:\n  ops:\n    dry_run: true\n",
            state.display()
        ),
    )
    .expect("write");
    // Root writes anywhere: then run kabar as nobody, against a folder owned by root.
    let as_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let command = |args: &[&str]| {
        let mut command = kabar(args);
        if as_root {
            command.uid(65534).gid(65534);
        }
        command
    };
    let output = command(&["check", "--config", path_str(&config)])
        .output()
        .expect("run check");
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let expected_uid = if as_root {
        "uid 65534".to_owned()
    } else {
        String::new()
    };
    for needle in ["is not writable", "fsGroup", expected_uid.as_str()] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    let output = command(&["serve", "--config", path_str(&config)])
        .output()
        .expect("run serve");
    let (_, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not writable") && stderr.contains("fsGroup"),
        "{stderr}"
    );

    // A state_dir that does not exist yet and cannot be created here may just be checked
    // away from where kabar runs (CI checking a pod's config): check warns, serve fails.
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstate_dir: {}\nspaces:\n  ops:\n    dry_run: true\n",
            state.join("not-yet").display()
        ),
    )
    .expect("write");
    let output = command(&["check", "--config", path_str(&config)])
        .output()
        .expect("run check");
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("warning: kabar could not create state_dir here"),
        "{stdout}"
    );
    let output = command(&["serve", "--config", path_str(&config)])
        .output()
        .expect("run serve");
    assert_eq!(output.status.code(), Some(1), "{:?}", text_of(&output));
}

#[test]
fn a_relative_state_dir_is_beside_the_config_whatever_the_working_directory() {
    let (dir, config) = dry_run_config("state_dir: data\n");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let output = kabar(&["check", "--config", path_str(&config)])
        .current_dir(elsewhere.path())
        .output()
        .expect("run");
    let (stdout, stderr) = text_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("state_dir {}", dir.path().join("data").display())),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_second_kabar_on_one_state_dir_refuses_while_dead_letters_still_works() {
    let config = TestConfig::new("spaces:\n  ops:\n    dry_run: true\n");
    let log = config.dir.path().join("first.log");
    let first = KabarProcess::spawn(&config.path, &log);
    let first_log = first.logs();
    assert!(
        first_log.contains("state_dir locked")
            && first_log.contains(&config.state_dir().display().to_string()),
        "the absolute state_dir is logged at start-up: {first_log}"
    );

    let second_config = config.path.clone();
    let second = tokio::task::spawn_blocking(move || {
        let mut child = kabar(&["serve", "--config", path_str(&second_config)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the second kabar");
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().expect("wait")
    })
    .await
    .expect("join");
    let (_, stderr) = text_of(&second);
    assert_eq!(
        second.status.code(),
        Some(1),
        "the second kabar kept running: {stderr}"
    );
    assert!(
        stderr.contains(&format!("in use by another kabar (pid {})", first.pid()))
            && stderr.contains(&config.state_dir().display().to_string()),
        "{stderr}"
    );

    // The dead-letter CLI opens the same store beside the server, without the lock.
    let path = config.path.clone();
    let listed = tokio::task::spawn_blocking(move || {
        run(&["dead-letters", "list", "--config", path_str(&path)])
    })
    .await
    .expect("join");
    assert!(listed.status.success(), "{:?}", text_of(&listed));
    assert!(text_of(&listed).0.contains("no dead letters"));
    drop(first);

    // Once the first is gone (even by kill, as here), the lock is free.
    let again = KabarProcess::spawn(&config.path, &config.dir.path().join("again.log"));
    drop(again);
}

// ---------------------------------------------------------------------------------------
// send-test

struct SendTest {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn send_test(config: &Path, space: &str) -> SendTest {
    let (config, space) = (config.to_owned(), space.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        run(&[
            "send-test",
            "--config",
            path_str(&config),
            "--space",
            &space,
        ])
    })
    .await
    .expect("join");
    let (stdout, stderr) = text_of(&output);
    SendTest {
        code: output.status.code(),
        stdout,
        stderr,
    }
}

fn send_test_config(chat: &FakeChat, spaces: &str) -> TestConfig {
    TestConfig::new(&format!(
        "delivery:\n  allow_any_host: true\n  request_timeout: 1s\nspaces:\n  ops:\n    webhook_url: \"{}\"\n{spaces}",
        chat.webhook_url("ops")
    ))
}

fn assert_no_url(result: &SendTest, chat: &FakeChat) {
    let all = format!("{}{}", result.stdout, result.stderr);
    for secret in chat.secrets() {
        assert!(!all.contains(&secret), "send-test printed a secret: {all}");
    }
    assert!(
        !all.contains("/v1/spaces/"),
        "send-test printed the URL: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_posts_one_marked_message_and_reports_chats_name_for_it() {
    let chat = FakeChat::start().await;
    let config = send_test_config(&chat, "  demo:\n    dry_run: true\n");
    let result = send_test(&config.path, "ops").await;
    assert_eq!(result.code, Some(0), "{}{}", result.stdout, result.stderr);
    let messages = chat.messages("ops");
    assert_eq!(messages.len(), 1, "exactly one message");
    assert!(
        messages[0]
            .shown()
            .contains("Test message from kabar send-test"),
        "{}",
        messages[0].shown()
    );
    assert_eq!(
        result.stdout.trim(),
        format!(
            "posted to ops: Chat accepted the message ({})",
            messages[0].name
        )
    );
    assert_no_url(&result, &chat);

    // A dry-run space posts nothing and shows the body instead.
    let result = send_test(&config.path, "demo").await;
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    assert!(
        result.stdout.contains("dry_run is set, nothing was posted"),
        "{}",
        result.stdout
    );
    assert!(
        result.stdout.contains("Test message from kabar send-test"),
        "{}",
        result.stdout
    );
    assert_eq!(chat.messages("ops").len(), 1);

    let result = send_test(&config.path, "nope").await;
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("no space \"nope\"") && result.stderr.contains("demo, ops"),
        "{}",
        result.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_explains_each_refusal_and_fails() {
    let chat = FakeChat::start().await;
    // The fake's own answers to a wrong key (400) and a wrong token (403).
    let good = chat.webhook_url("ops");
    let wrong_key = good.replace("FAKEKEY-ops", "FAKEKEY-wrong");
    let wrong_token = good.replace("FAKETOKEN-ops", "FAKETOKEN-wrong");
    let config = TestConfig::new(&format!(
        "delivery:\n  allow_any_host: true\n  request_timeout: 1s\ndefaults:\n  format: text\nspaces:\n  ops:\n    webhook_url: \"{good}\"\n  badkey:\n    webhook_url: \"{wrong_key}\"\n  badtoken:\n    webhook_url: \"{wrong_token}\"\n  closed:\n    webhook_url: \"http://127.0.0.1:1/v1/spaces/closed/messages?key=k-closed-1&token=t-closed-2\"\n"
    ));

    let result = send_test(&config.path, "badkey").await;
    assert_eq!(result.code, Some(1));
    assert!(
        result
            .stderr
            .contains("Chat refused it: 400 INVALID_ARGUMENT: API key not valid"),
        "{}",
        result.stderr
    );
    assert_no_url(&result, &chat);

    let result = send_test(&config.path, "badtoken").await;
    assert_eq!(result.code, Some(1));
    assert!(
        result
            .stderr
            .contains("Chat refused it: 403 PERMISSION_DENIED")
            && result
                .stderr
                .contains("webhook was deleted or the app removed")
            && result.stderr.contains("create a new webhook"),
        "{}",
        result.stderr
    );
    assert_no_url(&result, &chat);

    for (failure, expected) in [
        (Failure::status(404), "Chat refused it: 404 NOT_FOUND"),
        (Failure::Html404, "Chat refused it: 404"),
        (
            Failure::status(429),
            "Chat refused it for now: 429 RESOURCE_EXHAUSTED",
        ),
        (Failure::status(503), "Chat failed: 503 UNAVAILABLE"),
    ] {
        chat.set_mode(Some("ops"), Mode::Fail(failure.clone()));
        let result = send_test(&config.path, "ops").await;
        assert_eq!(result.code, Some(1), "{failure:?}: {}", result.stdout);
        assert!(
            result.stderr.contains(expected),
            "{failure:?}: {}",
            result.stderr
        );
        assert_no_url(&result, &chat);
    }

    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_secs(5),
            accept: false,
        },
    );
    let result = send_test(&config.path, "ops").await;
    assert_eq!(result.code, Some(1));
    assert!(
        result
            .stderr
            .contains("no answer from webhook on 127.0.0.1 within 1s"),
        "{}",
        result.stderr
    );
    assert_no_url(&result, &chat);
    chat.set_mode(Some("ops"), Mode::Normal);

    let result = send_test(&config.path, "closed").await;
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("cannot reach webhook on 127.0.0.1"),
        "{}",
        result.stderr
    );
    assert!(
        !result.stderr.contains("k-closed-1") && !result.stderr.contains("t-closed-2"),
        "{}",
        result.stderr
    );
    assert!(chat.messages("ops").is_empty(), "nothing was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_falls_back_to_text_when_chat_refuses_the_card() {
    let chat = FakeChat::start().await;
    let config = send_test_config(&chat, "");
    chat.fail_next("ops", 1, Failure::status(400));
    let result = send_test(&config.path, "ops").await;
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    assert!(
        result.stdout.contains("Chat refused the card"),
        "{}",
        result.stdout
    );
    assert!(
        result
            .stdout
            .contains("posted to ops: Chat accepted the message"),
        "{}",
        result.stdout
    );
    let messages = chat.messages("ops");
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].body.get("cardsV2").is_none(),
        "the text version"
    );
}

// ---------------------------------------------------------------------------------------
// Dead letters

#[tokio::test]
async fn the_dead_letter_id_in_the_log_is_the_one_the_cli_takes() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = TestConfig::new(&format!(
        "delivery:\n  allow_any_host: true\n  rate_limit_per_second: 50\ndefaults:\n  format: text\nspaces:\n  ops:\n    webhook_url: \"{}\"\n",
        chat.webhook_url("ops")
    ));
    let log = config.dir.path().join("kabar.log");
    let kabar_process = KabarProcess::spawn(&config.path, &log);
    // Two delivered first, so outbox ids and dead-letter ids differ.
    for name in ["Fine1", "Fine2"] {
        let (status, _) = post_alerts(
            &kabar_process.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
        assert_eq!(status, 200);
    }
    chat.wait_for_messages("ops", 2, WAIT).await;
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(403)));
    let (status, _) = post_alerts(
        &kabar_process.url("/alerts"),
        &notification("ops", &[("Refused", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    kabar_process
        .wait_for_log("message dead-lettered", WAIT)
        .await;
    let logs = kabar_process.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("message dead-lettered"))
        .expect("the dead-letter line");
    let logged_id: i64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id= in {line}"));

    let path = config.path.clone();
    let listed = tokio::task::spawn_blocking(move || {
        run(&[
            "dead-letters",
            "list",
            "--json",
            "--config",
            path_str(&path),
        ])
    })
    .await
    .expect("join");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let ids: Vec<i64> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .collect();
    assert_eq!(
        ids,
        vec![logged_id],
        "the log's id={logged_id} is the CLI's id"
    );

    let path = config.path.clone();
    let id = logged_id.to_string();
    let dropped = tokio::task::spawn_blocking(move || {
        run(&[
            "dead-letters",
            "drop",
            "--id",
            &id,
            "--config",
            path_str(&path),
        ])
    })
    .await
    .expect("join");
    let (stdout, stderr) = text_of(&dropped);
    assert!(stdout.contains("1 dead letter deleted"), "{stdout}{stderr}");
}

#[test]
fn dead_letters_with_an_unknown_space_says_so_and_lists_the_configured_ones() {
    let (dir, config) = dry_run_config("");
    kabar::SqliteStore::open(&dir.path().join("state"))
        .expect("create an empty store")
        .close();
    let output = run(&[
        "dead-letters",
        "list",
        "--config",
        path_str(&config),
        "--space",
        "opps",
    ]);
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("no space \"opps\"") && stderr.contains("configured spaces: ops"),
        "{stderr}"
    );
    let output = run(&[
        "dead-letters",
        "list",
        "--config",
        path_str(&config),
        "--space",
        "ops",
    ]);
    assert!(output.status.success(), "{:?}", text_of(&output));
}

// ---------------------------------------------------------------------------------------
// Secrets in config errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_never_echo_a_secret_in_check_the_log_or_the_reload_answer() {
    const ENV_SECRET: &str = "env-expanded-s3cret-5150";
    let chat = FakeChat::start().await;
    let good_body = format!(
        "delivery:\n  allow_any_host: true\nspaces:\n  ops:\n    webhook_url: \"{}\"\n",
        chat.webhook_url("ops")
    );
    let config = TestConfig::new(&good_body);
    let log = config.dir.path().join("kabar.log");
    let kabar_process =
        KabarProcess::spawn_with_env(&config.path, &log, &[("KABAR_SECRET", ENV_SECRET)]);

    // (YAML body without listen/state_dir/auth, the forms the secret could be printed in)
    let auth = |value: &str| format!("auth:\n  bearer_token: {value}\n{good_body}");
    let basic = |value: &str| {
        format!("auth:\n  basic:\n    username: am\n    password: {value}\n{good_body}")
    };
    let proxy = |value: &str| {
        format!(
            "auth:\n  bearer_token: {TEST_TOKEN}\ndelivery:\n  allow_any_host: true\n  proxy_url: {value}\nspaces:\n  ops:\n    dry_run: true\n"
        )
    };
    let webhook = |value: &str| {
        format!(
            "auth:\n  bearer_token: {TEST_TOKEN}\ndelivery:\n  allow_any_host: true\nspaces:\n  ops:\n    webhook_url: {value}\n"
        )
    };
    let wrap = |body: String| format!("auth:\n  bearer_token: {TEST_TOKEN}\n{body}");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (basic("987654321987"), vec!["987654321987"]),
        (auth("0x1F2E3D"), vec!["0x1F2E3D", "2043453"]),
        (auth("!!int t4g-int-secret"), vec!["t4g-int"]),
        (auth("\"pa55${w0rd part}\""), vec!["w0rd part", "pa55"]),
        (auth(".inf"), vec!["inf`"]),
        (basic("6.02214076e23"), vec!["6.02214076", "602214076"]),
        (auth("[l1st-secret-1, l1st-secret-2]"), vec!["l1st-secret"]),
        (basic("{m4p-secret: m4p-value}"), vec!["m4p-secret", "m4p-value"]),
        (proxy("31415926535"), vec!["31415926535"]),
        (webhook("27182818284"), vec!["27182818284"]),
        (
            wrap("spaces:\n  ops: \"${KABAR_SECRET}\"\n".to_owned()),
            vec![ENV_SECRET],
        ),
        (
            format!("auth: \"${{KABAR_SECRET}}\"\n{good_body}"),
            vec![ENV_SECRET],
        ),
        (
            format!("auth:\n  basic: \"am:${{KABAR_SECRET}}\"\n{good_body}"),
            vec![ENV_SECRET],
        ),
        (
            wrap("spaces:\n  ops: \"https://chat.googleapis.com/v1/spaces/SP4CE-S3CRET/messages?key=k&token=t\"\n".to_owned()),
            vec!["SP4CE-S3CRET"],
        ),
    ];
    let mut reload_bodies = Vec::new();
    for (body, forms) in &cases {
        // TestConfig adds listen and state_dir; `body` brings its own auth.
        config.rewrite(body);
        let path = config.path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            kabar(&["check", "--config", path_str(&path)])
                .env("KABAR_SECRET", ENV_SECRET)
                .output()
                .expect("run check")
        })
        .await
        .expect("join");
        let (stdout, stderr) = text_of(&checked);
        assert_eq!(checked.status.code(), Some(1), "{body}: {stdout}");
        let reload = client()
            .post(kabar_process.url("/-/reload"))
            .bearer_auth(TEST_TOKEN)
            .send()
            .await
            .expect("reload answers");
        assert!(reload.status().as_u16() >= 400, "{body}");
        let reload_body = reload.text().await.unwrap_or_default();
        assert!(
            reload_body.contains("auth")
                || reload_body.contains("spaces")
                || reload_body.contains("delivery"),
            "the authenticated caller sees the reason: {reload_body}"
        );
        for form in forms {
            assert!(
                !stderr.contains(form),
                "check echoed {form} for {body}: {stderr}"
            );
            assert!(
                !reload_body.contains(form),
                "reload echoed {form} for {body}: {reload_body}"
            );
        }
        reload_bodies.push(reload_body);
    }
    let logs = kabar_process.logs();
    assert!(logs.contains("configuration reload failed"), "{logs}");
    for (body, forms) in &cases {
        for form in forms {
            assert!(!logs.contains(form), "the log echoed {form} for {body}");
        }
    }
}

/// `kabar check` on a PostgreSQL config names the server and database, never the URL's
/// password, and does not connect (the host does not exist here) nor need a state_dir.
#[test]
fn check_names_the_postgres_store_without_its_password_or_a_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kabar.yaml");
    std::fs::write(
        &path,
        "state_dir: /nonexistent/kabar\nstore:\n  postgres:\n    url: 'postgres://kabar:pg-hunter2-%40x@db.invalid:6432/alerts?sslmode=require'\n    lease: 20s\nspaces:\n  ops:\n    dry_run: true\n",
    )
    .expect("write");
    let output = run(&["check", path_str(&path)]);
    let (stdout, stderr) = text_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("store PostgreSQL database alerts on db.invalid:6432 (lease 20s"),
        "{stdout}"
    );
    assert!(!stdout.contains("state_dir"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn render_shows_the_action_buttons_an_app_space_card_is_sent_with() {
    let (_dir, config) = dry_run_config(
        "chat_app:\n  dry_run: true\n  project_number: \"123456789012\"\n  alertmanager: {url: \"http://127.0.0.1:9093\"}\n",
    );
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!(
            "delivery:\n  allow_any_host: false\n{text}  oncall:\n    space: spaces/AAAArender\n    receivers: [gchat]\n  hook:\n    webhook_url: \"https://chat.googleapis.com/v1/spaces/AAAAhook/messages?key=k&token=t\"\n    receivers: [gchat]\n"
        ),
    )
    .expect("add an app space and a webhook space");
    let render = |space: &str| {
        let output = kabar(&[
            "render",
            "--config",
            path_str(&config),
            "--payload",
            &fixture("firing.json"),
            "--space",
            space,
        ])
        .output()
        .expect("run render");
        let (stdout, stderr) = text_of(&output);
        assert!(output.status.success(), "{stderr}");
        stdout
    };
    let stdout = render("oncall");
    assert!(stdout.contains("\"Acknowledge\""), "{stdout}");
    assert!(stdout.contains("\"Silence 24h\""), "{stdout}");
    assert!(stdout.contains("\"function\": \"silence:1h\""), "{stdout}");
    // A webhook cannot receive clicks: its card keeps link buttons only.
    let stdout = render("hook");
    assert!(stdout.contains("\"openLink\""), "{stdout}");
    assert!(
        !stdout.contains("Acknowledge") && !stdout.contains("\"action\""),
        "{stdout}"
    );
}
