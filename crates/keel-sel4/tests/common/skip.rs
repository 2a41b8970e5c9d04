//! How a seL4 test that cannot run here says so: a loud line on stderr (written past the
//! test harness's capture, so it is seen) and one line in `$KEEL_SKIP_LOG`, which
//! `scripts/test.sh` counts. Included by the test binaries with `#[path]`.

/// Print `line` loudly and record it as a skip.
pub fn loud_skip(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("\n!!!!!!!! {line} !!!!!!!!\n\n").as_bytes());
    if let Some(log) = std::env::var_os("KEEL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write(2) per line: parallel tests append to the same file.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}
