//! The running Microkit protection domain (seL4 only): the symbols the Microkit tool
//! patches into the PD's ELF, and the channel operations libmicrokit offers
//! (`microkit_notify`, `microkit_irq_ack`, `microkit_ppcall`), checked against them.

use alloc::string::String;

use crate::abi::microkit as mk;
use crate::microkit::{channel_allowed, endpoint_cap, irq_cap, notification_cap};
use crate::msginfo::MessageInfo;
use crate::syscall::{self as sys, Sel4Error};

// The symbols the Microkit tool writes (libmicrokit's names, types and sizes). They live in
// .bss/.data; `#[used]` and the reads below keep them in the ELF for the tool to find.
#[unsafe(no_mangle)]
#[used]
static mut microkit_name: [u8; mk::PD_NAME_LENGTH] = [0; mk::PD_NAME_LENGTH];
#[unsafe(no_mangle)]
#[used]
static mut microkit_passive: u8 = 0;
#[unsafe(no_mangle)]
#[used]
static mut microkit_irqs: u64 = 0;
#[unsafe(no_mangle)]
#[used]
static mut microkit_notifications: u64 = 0;
#[unsafe(no_mangle)]
#[used]
static mut microkit_pps: u64 = 0;
#[unsafe(no_mangle)]
#[used]
static mut microkit_ioports: u64 = 0;

/// A channel the PD does not have (for that operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The system file gives the PD no such channel.
    #[error("channel {channel} is not a {what} channel of this PD")]
    NotAllowed {
        /// The channel.
        channel: u32,
        /// notification, IRQ or protected-call.
        what: &'static str,
    },
    /// The kernel refused.
    #[error(transparent)]
    Kernel(#[from] Sel4Error),
}

/// The PD's name as the Microkit tool wrote it.
pub fn name() -> String {
    // SAFETY: written by the Microkit tool before the PD started, never written after;
    // read by value.
    let bytes = unsafe { (&raw const microkit_name).read_volatile() };
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..n]).into()
}

/// Whether the PD is passive (runs only on the scheduling context of its callers).
pub fn passive() -> bool {
    // SAFETY: as in `name`.
    unsafe { (&raw const microkit_passive).read_volatile() != 0 }
}

fn mask(word: *const u64) -> u64 {
    // SAFETY: one of the u64 symbols above, written by the tool before start only.
    unsafe { word.read_volatile() }
}

/// Channels with an IRQ (bit n: channel n).
pub fn irq_channels() -> u64 {
    mask(&raw const microkit_irqs)
}

/// Channels the PD may notify.
pub fn notification_channels() -> u64 {
    mask(&raw const microkit_notifications)
}

/// Channels the PD may call (protected procedure calls).
pub fn pp_channels() -> u64 {
    mask(&raw const microkit_pps)
}

/// x86 I/O-port ids (always 0 on arm64).
pub fn ioport_ids() -> u64 {
    mask(&raw const microkit_ioports)
}

/// `microkit_notify`: signal the other end of `channel`.
pub fn notify(channel: u32) -> Result<(), ChannelError> {
    if !channel_allowed(notification_channels(), channel) {
        return Err(ChannelError::NotAllowed {
            channel,
            what: "notification",
        });
    }
    sys::signal(notification_cap(channel));
    Ok(())
}

/// `microkit_irq_ack`: let the IRQ on `channel` fire again.
pub fn irq_ack(channel: u32) -> Result<(), ChannelError> {
    if !channel_allowed(irq_channels(), channel) {
        return Err(ChannelError::NotAllowed {
            channel,
            what: "IRQ",
        });
    }
    Ok(sys::irq_ack(irq_cap(channel))?)
}

/// `microkit_ppcall`: call the PD at the other end of `channel` with `info` (message
/// registers from the IPC buffer); returns its reply's tag.
pub fn ppcall(channel: u32, info: MessageInfo) -> Result<MessageInfo, ChannelError> {
    if !channel_allowed(pp_channels(), channel) {
        return Err(ChannelError::NotAllowed {
            channel,
            what: "protected-call",
        });
    }
    Ok(sys::call(endpoint_cap(channel), info))
}
