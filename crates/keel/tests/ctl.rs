//! `keel ctl` as a user runs it: exit statuses and one-line errors, and against a real
//! `keel daemon` running test guests on /dev/kvm (each command against a fake supervisor is
//! tested in src/admin/ctl/tests.rs).
//!
//! Without /dev/kvm the daemon tests print `SKIPPED: /dev/kvm not available` and record the
//! skip in `$KEEL_SKIP_LOG`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "common/run.rs"]
mod run;
#[path = "../../keel-kvm/tests/common/skip.rs"]
mod skip;

use run::{KEEL, Scratch};

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(KEEL)
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

/// A `keel daemon` on a system of test guests, stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    state: PathBuf,
    scratch: Scratch,
}

impl Daemon {
    /// Start `keel daemon` on `toml`; returns once its socket and admin token exist.
    fn start(test: &str, toml: &str) -> Daemon {
        let scratch = Scratch::new(test);
        let sys = scratch.write("system.toml", toml);
        let state = scratch.path("state");
        let log = std::fs::File::create(scratch.path("daemon.log")).unwrap();
        let child = Command::new(KEEL)
            .arg("daemon")
            .arg(&sys)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run keel daemon");
        let d = Daemon {
            child,
            state,
            scratch,
        };
        d.wait_for("the API socket and admin.token", || {
            d.state.join("keel.sock").exists() && d.state.join("admin.token").exists()
        });
        d
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "no {what} after 30 s; keel daemon's stderr:\n{}",
                std::fs::read_to_string(self.scratch.path("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `keel ctl --state-dir STATE args...` with `stdin`.
    fn ctl(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let mut child = Command::new(KEEL)
            .arg("ctl")
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("KEEL_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run keel ctl");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        // Stdin stays open (a console keeps streaming) until the command ends.
        let out = child.wait_with_output().unwrap();
        drop(input);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// VM `vm`'s state, as `keel ctl --json get` says.
    fn state_of(&self, vm: &str) -> String {
        let (code, out, err) = self.ctl(&["--json", "get", vm], b"");
        assert_eq!(code, 0, "{err}");
        let start = out.find("\"state\":\"").expect("a state field") + 9;
        out[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to the daemon this test started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A system of one test-guest VM "web" that powers off on a `poweroff` line.
fn system(kernel: &Path) -> String {
    format!(
        "[system]\nname = \"ctl\"\n\n[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"64M\"\ncmdline = \"keeltest=await-poweroff:60000\"\nserial = \"stdio\"\n",
        kernel.display()
    )
}

/// The test guest with `await-poweroff`, or `None` after a loud skip without /dev/kvm.
fn guest_or_skip(test: &str) -> Option<PathBuf> {
    if !skip::kvm_or_skip("ctl", test) {
        return None;
    }
    Some(guest::testguest_with(b"await-poweroff").expect("the test guest has await-poweroff"))
}

#[test]
fn ctl_lists_the_running_vm_of_a_real_daemon() {
    let Some(kernel) = guest_or_skip("ctl_lists_the_running_vm_of_a_real_daemon") else {
        return;
    };
    let d = Daemon::start("list", &system(&kernel));
    d.wait_for("VM web running", || d.state_of("web") == "running");

    let (code, out, err) = d.ctl(&["list"], b"");

    assert_eq!(code, 0, "{err}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..3),
        Some(&["web", "running", "static"][..]),
        "{out}"
    );
}

#[test]
fn a_token_without_the_right_is_refused_by_a_real_daemon() {
    let Some(kernel) = guest_or_skip("a_token_without_the_right_is_refused_by_a_real_daemon")
    else {
        return;
    };
    let d = Daemon::start("refused", &system(&kernel));
    let (code, secret, err) = d.ctl(
        &["token", "create", "ro", "--rights", "read", "--vms", "web"],
        b"",
    );
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = d.ctl(&["--token", secret.trim(), "stop", "web"], b"");

    assert_eq!(code, 1);
    assert_eq!(
        err,
        "keel: error: token \"ro\" lacks right \"stop\" on VM \"web\"\n"
    );
}

#[test]
fn a_poweroff_typed_on_the_console_stops_the_vm() {
    let Some(kernel) = guest_or_skip("a_poweroff_typed_on_the_console_stops_the_vm") else {
        return;
    };
    let d = Daemon::start("console", &system(&kernel));
    // Typed earlier, the line would be lost: the guest resets its UART's FIFO at boot.
    let log = d.state.join("vms/web/serial.log");
    d.wait_for("the guest awaiting poweroff", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("awaiting poweroff"))
    });

    // The console ends when the VM's VMM does. (What the guest prints as it powers off is
    // not checked: the VMM's console relay may lose its last bytes when the process ends.)
    let (code, _, err) = d.ctl(&["console", "web"], b"poweroff\n");

    assert_eq!(code, 0, "{err}");
    d.wait_for("VM web stopped", || d.state_of("web") == "stopped");
}
