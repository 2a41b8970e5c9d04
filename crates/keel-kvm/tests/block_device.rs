//! A disk on a host block device (docs/config.md: `path` may be "a regular file or block
//! device"): `FileBackend` sizes it by its end, not by its metadata (which says 0 for a
//! block device), and its discards read back as zeros. Needs root and a free loop device
//! (`losetup`); without them the test prints `SKIPPED: …` and records the skip.

use std::process::Command;

use keel_virtio::{BlockBackend, FileBackend};

#[path = "common/skip.rs"]
mod skip;

/// A loop device over a fresh image of `len` bytes filled with `fill`; detached on drop.
struct Loop {
    dev: String,
    image: std::path::PathBuf,
}

impl Loop {
    fn new(len: usize, fill: u8) -> Option<Loop> {
        let image = std::env::temp_dir().join(format!("keel-blkdev-{}.img", std::process::id()));
        std::fs::write(&image, vec![fill; len]).ok()?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output()
            .ok()?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&image);
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop { dev, image })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn a_block_device_disk_has_the_devices_size_and_discards_read_back_as_zeros() {
    let test = "a_block_device_disk_has_the_devices_size_and_discards_read_back_as_zeros";
    let Some(lo) = Loop::new(2 << 20, 0xa5) else {
        skip::skip(
            "block_device",
            test,
            "no loop device (needs root and losetup)",
        );
        return;
    };

    let mut disk = FileBackend::open(&lo.dev, false).unwrap();
    let size = disk.size();
    disk.write_at(4096, &[7; 512]).unwrap();
    // Not block-aligned at either end: BLKZEROOUT for the whole blocks, zeros written for
    // the partial ones.
    let (at, len) = ((1u64 << 20) + 100, 8192u64);
    disk.discard(at, len).unwrap();
    disk.flush().unwrap();
    let mut written = [0u8; 512];
    disk.read_at(4096, &mut written).unwrap();
    let mut around = vec![1u8; len as usize + 2];
    disk.read_at(at - 1, &mut around).unwrap();
    let past_end = disk.read_at(2 << 20, &mut [0u8; 512]);

    assert!(disk.is_block_device());
    assert_eq!(size, 2 << 20);
    assert_eq!(written, [7; 512]);
    assert_eq!(
        around[0], 0xa5,
        "the byte before the discarded range changed"
    );
    assert!(around[1..=len as usize].iter().all(|&b| b == 0));
    assert_eq!(
        around[len as usize + 1],
        0xa5,
        "the byte after the discarded range changed"
    );
    assert!(past_end.is_err());
}
