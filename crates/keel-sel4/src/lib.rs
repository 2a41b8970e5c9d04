//! Keel on seL4 (to come).
#![no_std]
