//! Running the `keel` binary from a test: its exit status and whole output, with a timeout.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// How `keel` ended, and everything it printed.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub status: i32,
    /// All of stdout.
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub took: Duration,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.took, self.stdout, self.stderr
        )
    }
}

/// Run `keel args` to its end (stdin empty), killing it and failing the test after
/// `timeout`; `on_start` gets its pid once it runs. Logs one line tagged `tag`.
pub fn run_keel(tag: &str, args: &[&str], timeout: Duration, on_start: impl FnOnce(u32)) -> Run {
    let start = Instant::now();
    let mut child = Command::new(KEEL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    on_start(child.id());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        status: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        took: start.elapsed(),
    };
    eprintln!(
        "{tag}: keel {} -> exit {} in {:?}",
        args.join(" "),
        run.status,
        run.took
    );
    run
}
