//! Facts about the host: software KVM, the terminal, memory use.

use std::sync::Once;

/// The note printed once when `/dev/kvm` is a software KVM.
pub const SOFTWARE_KVM_NOTE: &str = "note: /dev/kvm is a software KVM (kvm_pvm): guest kernel code is emulated, Linux guests will not boot in useful time here";

/// Whether `/proc/cpuinfo`'s flags lack `vmx`/`svm`, given its text.
pub fn cpuinfo_lacks_virtualization(cpuinfo: &str) -> bool {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    !flags.split_whitespace().any(|f| f == "vmx" || f == "svm")
}

/// Whether `/proc/modules` lists `kvm_pvm`, given its text.
pub fn modules_list_kvm_pvm(modules: &str) -> bool {
    modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some("kvm_pvm"))
}

/// Whether this host's KVM is a software implementation (kvm_pvm, or on x86 no VT-x/AMD-V;
/// arm64's `/proc/cpuinfo` does not list EL2, so there only kvm_pvm counts).
pub fn is_software_kvm() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(look_for_software_kvm)
}

/// [`is_software_kvm`], from the host's files (asked once: a sandboxed VMM can no longer
/// read them).
fn look_for_software_kvm() -> bool {
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let pvm =
        std::path::Path::new("/sys/module/kvm_pvm").exists() || modules_list_kvm_pvm(&modules);
    if cfg!(target_arch = "x86_64") {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        pvm || (!cpuinfo.is_empty() && cpuinfo_lacks_virtualization(&cpuinfo))
    } else {
        pvm
    }
}

/// Print [`SOFTWARE_KVM_NOTE`] once per process (at log level info and above).
pub fn note_software_kvm() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if crate::log::enabled(crate::log::Level::Info) && is_software_kvm() {
            crate::log::info(format_args!("{SOFTWARE_KVM_NOTE}"));
        }
    });
}

/// Peak resident set size in bytes (`VmHWM` of /proc/self/status), given its text.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// This process's peak RSS in bytes.
/// This process's peak RSS in bytes: `VmHWM`, or `getrusage`'s maximum when
/// /proc/self/status cannot be read (a sandboxed VMM).
pub fn peak_rss() -> Option<u64> {
    if let Some(v) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_hwm(&s))
    {
        return Some(v);
    }
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    u64::try_from(usage.ru_maxrss).ok()?.checked_mul(1024)
}

/// The terminal attributes to restore if the process exits without unwinding (a panic hook
/// calling `exit`).
static SAVED_TERMIOS: std::sync::Mutex<Option<libc::termios>> = std::sync::Mutex::new(None);

/// Restore stdin's terminal attributes if [`RawTerminal`] changed them. For panic hooks.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().map(|g| *g).unwrap_or(None);
    if let Some(t) = saved {
        // SAFETY: restoring attributes read from our own stdin earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Puts a terminal on stdin into raw mode and restores it on drop.
#[derive(Debug)]
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; `None` otherwise (then nothing changes).
    pub fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; zero is a valid bit pattern to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill in.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host's "\n" still returns the carriage.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: a valid termios for our own stdin.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        if let Ok(mut g) = SAVED_TERMIOS.lock() {
            *g = Some(saved);
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `enable`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
        if let Ok(mut g) = SAVED_TERMIOS.lock() {
            *g = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_with_vmx_is_hardware() {
        assert!(!cpuinfo_lacks_virtualization("flags\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_lacks_virtualization("flags\t: fpu vme sse\n"));
    }

    #[test]
    fn kvm_pvm_module_is_found_by_name() {
        assert!(modules_list_kvm_pvm(
            "kvm_pvm 123 0 - Live 0x0\nkvm 1 1 kvm_pvm\n"
        ));
        assert!(!modules_list_kvm_pvm("kvm_intel 1 0 - Live\n"));
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        assert_eq!(
            parse_vm_hwm("VmPeak:\t 100 kB\nVmHWM:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
    }
}
