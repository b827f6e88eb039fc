//! `weir validate` on the shipped pipelines and on one malformed pipeline per error kind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn weir() -> Command {
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"));
    // The shipped http-thumbnail pipeline reads its token from the environment.
    weir.env("WEIR_HTTP_TOKEN", "a-token-for-validation-only");
    weir
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn every_shipped_pipeline_validates() {
    let out = weir().current_dir(repo()).args(["validate", "pipelines"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let shipped = std::fs::read_dir(repo().join("pipelines")).unwrap().count();
    assert_eq!(stdout.matches(": ok").count(), shipped, "{stdout}");
}

/// Each file's first line is `# expect: <text>`; validation must fail with exit code 1
/// and print `<file>:<line>:<column>: ...<text>...`.
#[test]
fn each_malformed_pipeline_fails_with_its_position_and_reason() {
    let dir = repo().join("fixtures/pipelines/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "one file per error kind");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text.lines().next().unwrap().strip_prefix("# expect: ").expect("first line is `# expect: ...`");
        let out = weir().current_dir(repo()).arg("validate").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}: {stdout}", file.display());
        let line = stdout
            .lines()
            .find(|l| l.contains(expect))
            .unwrap_or_else(|| panic!("{}: expected {expect:?} in:\n{stdout}", file.display()));
        let location =
            line.strip_prefix(&format!("{}:", file.display())).unwrap_or_else(|| panic!("no file name: {line}"));
        let mut parts = location.splitn(3, ':');
        let (row, col) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(row.parse::<usize>().is_ok() && col.parse::<usize>().is_ok(), "no line:column in {line}");
    }
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    std::fs::write(
        &file,
        r#"name = "many"
colour = "blue"
[trigger]
kind = "object_store"
url = "file://./data"
[limits]
concurrency = 0
timeout = "never"
[[step]]
name = "a"
function = "no.such"
[[step]]
name = "a"
function = "object.put"
"#,
    )
    .unwrap();
    let out = weir().arg("validate").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    for expected in [
        "2:1: unknown key `colour`",
        "7:15:",
        "8:11: invalid duration",
        "11:12: unknown function",
        "missing field `key`",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

/// librdkafka's own message for a refused option quotes its value; a misspelt
/// `sasl.password` would print the password (from the file or from `${env:…}`).
#[test]
fn a_refused_librdkafka_option_never_prints_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("fixtures/pipelines/bad/kafka-misspelt-option.toml");
    let from_env = dir.path().join("from-env.toml");
    let text = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(&from_env, text.replace("\"hunter2-never-printed\"", "\"${env:WEIR_TEST_PASSWORD}\"")).unwrap();
    for file in [fixture, from_env] {
        let out =
            weir().env("WEIR_TEST_PASSWORD", "hunter2-never-printed").arg("validate").arg(&file).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.contains("sasl.pasword"), "the option is named: {all}");
        assert!(!all.contains("hunter2"), "the value is printed: {all}");
    }
}
