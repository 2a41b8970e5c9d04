//! x86_64: Linux boot protocol (bzImage, boot_params, e820), PVH, long-mode page tables.
