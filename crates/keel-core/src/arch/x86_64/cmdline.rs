//! The kernel command line: the user's part plus one `virtio_mmio.device=` per device, in
//! the Linux syntax the platform contract uses (`virtio_mmio.device=4K@0xd0000000:5`).

use alloc::string::String;
use core::fmt::Write;

use super::BootError;

/// A command line under construction, with a length limit (without the NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    text: String,
    max: usize,
}

impl Cmdline {
    /// An empty command line of at most `max` bytes (without the terminating NUL).
    pub fn new(max: usize) -> Cmdline {
        Cmdline {
            text: String::new(),
            max,
        }
    }

    /// Append `words` (separated from what is there by one space).
    pub fn push(&mut self, words: &str) -> Result<(), BootError> {
        let words = words.trim();
        if words.is_empty() {
            return Ok(());
        }
        if let Some(at) = words.bytes().position(|b| b == 0) {
            return Err(BootError::CmdlineNul { at });
        }
        let sep = usize::from(!self.text.is_empty());
        let len = self.text.len() + sep + words.len();
        if len > self.max {
            return Err(BootError::CmdlineTooLong { len, max: self.max });
        }
        if sep == 1 {
            self.text.push(' ');
        }
        self.text.push_str(words);
        Ok(())
    }

    /// Append the location of one virtio-mmio device.
    pub fn push_virtio_mmio(&mut self, base: u64, size: u64, irq: u32) -> Result<(), BootError> {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "virtio_mmio.device={}@{:#x}:{}",
            size_text(size),
            base,
            irq
        );
        self.push(&s)
    }

    /// The text, without the NUL.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The bytes to write into guest memory, with the terminating NUL.
    pub fn to_bytes_with_nul(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::with_capacity(self.text.len() + 1);
        v.extend_from_slice(self.text.as_bytes());
        v.push(0);
        v
    }
}

/// `4096` → `4K`, as Linux's `memparse` reads it; sizes that are not whole KiB stay bytes.
fn size_text(size: u64) -> String {
    let mut s = String::new();
    let _ = match size {
        s0 if s0 != 0 && s0 % (1 << 20) == 0 => write!(s, "{}M", size >> 20),
        s0 if s0 != 0 && s0 % (1 << 10) == 0 => write!(s, "{}K", size >> 10),
        _ => write!(s, "{size}"),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_devices_are_appended_in_linux_syntax() {
        let mut c = Cmdline::new(256);
        c.push("console=ttyS0").unwrap();
        c.push_virtio_mmio(0xd000_0000, 0x1000, 5).unwrap();
        c.push_virtio_mmio(0xd000_1000, 0x1000, 6).unwrap();
        assert_eq!(
            c.as_str(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn too_long_cmdline_is_rejected_with_its_length() {
        let mut c = Cmdline::new(10);
        c.push("12345").unwrap();
        assert_eq!(
            c.push("67890"),
            Err(BootError::CmdlineTooLong { len: 11, max: 10 })
        );
        assert_eq!(c.as_str(), "12345");
    }

    #[test]
    fn nul_byte_is_rejected() {
        let mut c = Cmdline::new(10);
        assert_eq!(c.push("a\0b"), Err(BootError::CmdlineNul { at: 1 }));
    }

    #[test]
    fn bytes_end_with_nul() {
        let mut c = Cmdline::new(10);
        c.push("quiet").unwrap();
        assert_eq!(c.to_bytes_with_nul(), b"quiet\0");
    }
}
