//! Errors of the x86_64 boot code.

use crate::memory::GuestMemoryError;

/// Why a kernel, initrd or boot structure could not be placed in guest memory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The image is neither an ELF file nor a bzImage.
    #[error(
        "not a kernel image: no ELF magic and no bzImage \"HdrS\" header (first bytes {head:02x?})"
    )]
    NotAKernel {
        /// The first bytes of the file (up to 4).
        head: [u8; 4],
    },
    /// The image is too short for the structure being read.
    #[error("{what}: image is {len} bytes, too short (needs {need})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// The image length.
        len: u64,
        /// The bytes needed.
        need: u64,
    },
    /// An ELF header field has a value Keel does not accept.
    #[error("ELF {field} is {value:#x}: {why}")]
    BadElf {
        /// The header field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What was expected.
        why: &'static str,
    },
    /// An ELF segment does not fit in the file or in guest RAM.
    #[error("ELF segment {index} ({what} {value:#x}) {why}")]
    BadSegment {
        /// Program-header index.
        index: usize,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A bzImage setup-header field has a value Keel does not accept.
    #[error("bzImage {field} is {value:#x}: {why}")]
    BadBzImage {
        /// The setup-header field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What was expected.
        why: &'static str,
    },
    /// The kernel does not fit in guest RAM at its load address.
    #[error("kernel of {size:#x} bytes at {gpa:#x} does not fit in guest RAM")]
    KernelTooBig {
        /// Load address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The initrd does not fit between the end of the kernel and the top of low RAM.
    #[error(
        "initrd of {size:#x} bytes does not fit in low guest RAM between {low:#x} and {high:#x}"
    )]
    InitrdTooBig {
        /// Size in bytes.
        size: u64,
        /// End of the kernel.
        low: u64,
        /// Top of usable low RAM.
        high: u64,
    },
    /// The command line is longer than the kernel or the layout allows.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit (without the terminating NUL).
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte at {at}")]
    CmdlineNul {
        /// Byte offset.
        at: usize,
    },
    /// Too many vCPUs for the MP table (the APIC ids must be below the IOAPIC's id).
    #[error("{vcpus} vCPUs do not fit the MP table (1..={max})")]
    TooManyVcpus {
        /// vCPUs asked for.
        vcpus: u32,
        /// The maximum.
        max: u32,
    },
    /// The guest RAM layout lacks a region Keel's boot structures need.
    #[error("guest RAM must cover {start:#x}..{end:#x} for the boot structures")]
    LowRamMissing {
        /// Start of the needed range.
        start: u64,
        /// End of the needed range.
        end: u64,
    },
    /// More memory-map entries than the boot structure has room for.
    #[error("the memory map has {entries} entries, the limit is {max}")]
    TooManyMemoryRegions {
        /// Entries needed.
        entries: usize,
        /// Room available.
        max: usize,
    },
    /// A guest-memory write failed.
    #[error("writing the {what}: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: GuestMemoryError,
    },
}

impl BootError {
    pub(crate) fn mem(what: &'static str) -> impl FnOnce(GuestMemoryError) -> BootError {
        move |source| BootError::Memory { what, source }
    }
}
