//! Per-architecture code that is still hypervisor-agnostic: boot protocols, platform layouts,
//! and (on arm64) the models a seL4 VMM must provide itself (software GIC distributor, PSCI).
//!
//! Both architectures are compiled on every host so that their pure logic is unit-tested
//! everywhere; nothing here executes architecture-specific instructions.

pub mod aarch64;
pub mod kernel;
pub mod x86_64;
