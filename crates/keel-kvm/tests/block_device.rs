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
    disk.discard(1 << 20, 8192).unwrap();
    disk.flush().unwrap();
    let mut written = [0u8; 512];
    disk.read_at(4096, &mut written).unwrap();
    let mut discarded = vec![1u8; 8192];
    disk.read_at(1 << 20, &mut discarded).unwrap();
    let mut after = [0u8; 16];
    disk.read_at((1 << 20) + 8192, &mut after).unwrap();
    let past_end = disk.read_at(2 << 20, &mut [0u8; 512]);

    assert_eq!(size, 2 << 20);
    assert_eq!(written, [7; 512]);
    assert!(discarded.iter().all(|&b| b == 0));
    assert_eq!(after, [0xa5; 16]);
    assert!(past_end.is_err());
}
