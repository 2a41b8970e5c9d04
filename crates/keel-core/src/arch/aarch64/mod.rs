//! aarch64: Linux `Image` boot, run-time device-tree generation, PSCI, software vGIC.
