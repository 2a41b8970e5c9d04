//! The legacy PC devices Keel emulates in the VMM (the PIC, PIT, IOAPIC and LAPIC are KVM's).

pub mod acpi_power;
pub mod debug_exit;
pub mod i8042;
pub mod serial;

pub use acpi_power::AcpiPower;
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::SerialDevice;
