//! Keel portable virtio devices.
#![no_std]
