//! x86_64: the platform layout Keel gives its guests and the boot code that fills it.
//!
//! Everything here is portable (no_std, no hypervisor calls): the loaders write into
//! [`GuestRam`](crate::memory::GuestRam) and return a [`BootEntry`](crate::hv::BootEntry)
//! that the backend turns into registers.
//!
//! - [`layout`]: where each boot structure lives in guest-physical memory.
//! - [`elf`]: ELF kernels, with the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
//! - [`bzimage`]: Linux `bzImage` (setup header, `boot_params`).
//! - [`e820`]: the memory map both boot protocols hand over.
//! - [`pvh`]: `hvm_start_info` and its memory map.
//! - [`gdt`]: the flat GDT and the identity-mapped long-mode page tables.
//! - [`mptable`]: the Intel MP table listing vCPUs and the IOAPIC.
//! - [`acpi`]: the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for guests that need ACPI.
//! - [`cmdline`]: the kernel command line, with one `virtio_mmio.device=` per device.
//! - [`boot`]: the whole sequence, as the VMM calls it.

pub mod acpi;
pub mod boot;
pub mod bzimage;
pub mod cmdline;
pub mod e820;
pub mod elf;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod pvh;

mod error;

pub use boot::{LoadedKernel, load_kernel};
pub use error::BootError;
