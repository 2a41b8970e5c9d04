//! `keel ctl` as a user runs it: exit statuses and one-line errors (its commands against a
//! server are tested in src/admin/ctl/tests.rs, on a fake supervisor).

use std::process::Command;

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("ctl")
        .args(args)
        .env_remove("KEEL_TOKEN")
        .output()
        .expect("run keel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_argument_exits_2_with_one_line() {
    let (code, _, err) = ctl(&["start"]);

    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("keel: error: "), "{err}");
}

#[test]
fn an_unreachable_daemon_exits_1_with_one_line_naming_the_socket() {
    let (code, _, err) = ctl(&["--socket", "/nonexistent/keel.sock", "--token", "t", "list"]);

    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/keel.sock"), "{err}");
}

#[test]
fn help_prints_the_commands() {
    let (code, out, _) = ctl(&["--help"]);

    assert_eq!(code, 0);
    assert!(out.contains("token create NAME --rights"), "{out}");
}
