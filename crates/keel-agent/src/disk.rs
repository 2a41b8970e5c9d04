//! The storage VM's own disks: found by virtio-blk serial, opened as keel-virtio's
//! [`FileBackend`] (a `BlockBackend`).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use keel_virtio::host::FileBackend;

/// Why a disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk has the serial.
    #[error("no disk with serial {serial:?} in {dir} (the storage VM's disks: {found})")]
    NoSuchSerial {
        /// The serial.
        serial: String,
        /// Where disks were looked for.
        dir: PathBuf,
        /// The serials seen, for the message.
        found: String,
    },
    /// Two disks have the serial.
    #[error("two disks have serial {serial:?}: {a} and {b}")]
    TwoDisks {
        /// The serial.
        serial: String,
        /// One.
        a: String,
        /// The other.
        b: String,
    },
    /// The disk cannot be opened or sized.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The disk.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Neither a block device nor a regular file.
    #[error("{path} is neither a block device nor a regular file")]
    NotADisk {
        /// The path.
        path: PathBuf,
    },
}

/// The block device (`/dev/<name>`) under `sys_block` (`/sys/block`) whose `serial`
/// attribute is `serial`.
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Result<PathBuf, DiskError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| DiskError::Io {
        path: sys_block.to_path_buf(),
        what: "list",
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut seen = Vec::new();
    let mut hit: Option<String> = None;
    for name in names {
        let Ok(raw) = std::fs::read(sys_block.join(&name).join("serial")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw);
        let s = text.trim_end_matches(|c: char| c.is_whitespace() || c == '\0');
        seen.push(format!("{name}={s:?}"));
        if s == serial {
            if let Some(a) = hit {
                return Err(DiskError::TwoDisks {
                    serial: serial.to_string(),
                    a,
                    b: name,
                });
            }
            hit = Some(name);
        }
    }
    match hit {
        Some(name) => Ok(Path::new("/dev").join(name)),
        None => Err(DiskError::NoSuchSerial {
            serial: serial.to_string(),
            dir: sys_block.to_path_buf(),
            found: if seen.is_empty() {
                "none with a serial".to_string()
            } else {
                seen.join(", ")
            },
        }),
    }
}

/// Open the storage VM's disk at `path` for one client (`O_RDONLY` if `read_only`, else
/// `O_RDWR`): keel-virtio's [`FileBackend`] (positional I/O through the page cache,
/// `fdatasync` to flush, `BLKZEROOUT` to discard on a block device), refused unless it is a
/// block device or a regular file (tests).
pub fn open(path: &Path, read_only: bool) -> Result<FileBackend, DiskError> {
    let io = |what| {
        move |source| DiskError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(io("open"))?;
    let ty = file.metadata().map_err(io("stat"))?.file_type();
    if !ty.is_block_device() && !ty.is_file() {
        return Err(DiskError::NotADisk {
            path: path.to_path_buf(),
        });
    }
    FileBackend::from_file(file, read_only).map_err(io("size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_virtio::{BlockBackend, BlockError};

    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str) -> Temp {
            let p =
                std::env::temp_dir().join(format!("keel-agent-disk-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
            Temp(p)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn image(t: &Temp, len: usize, fill: u8) {
        std::fs::write(&t.0, vec![fill; len]).unwrap();
    }

    #[test]
    fn a_file_disk_reads_writes_and_discards_to_zeros() {
        let t = Temp::new("rw");
        image(&t, 16384, 0xff);
        let mut d = open(&t.0, false).unwrap();
        assert_eq!(d.size(), 16384);

        d.write_at(100, b"keel").unwrap();
        let mut b = [0u8; 6];
        d.read_at(99, &mut b).unwrap();
        d.discard(4096, 4097).unwrap();
        d.flush().unwrap();

        assert_eq!(&b, b"\xffkeel\xff");
        let bytes = std::fs::read(&t.0).unwrap();
        assert_eq!(bytes.len(), 16384);
        assert!(bytes[4096..8193].iter().all(|&x| x == 0));
        assert_eq!(bytes[4095], 0xff);
        assert_eq!(bytes[8193], 0xff);
    }

    #[test]
    fn out_of_range_and_read_only_are_refused() {
        let t = Temp::new("ro");
        image(&t, 4096, 1);
        let mut d = open(&t.0, true).unwrap();

        assert!(matches!(
            d.read_at(4090, &mut [0; 8]),
            Err(BlockError::OutOfRange { offset: 4090, .. })
        ));
        assert!(matches!(
            d.read_at(u64::MAX, &mut [0; 8]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert_eq!(
            d.write_at(0, b"x"),
            Err(BlockError::ReadOnly { op: "write" })
        );
        assert_eq!(
            d.discard(0, 512),
            Err(BlockError::ReadOnly { op: "discard" })
        );
        assert_eq!(std::fs::read(&t.0).unwrap(), vec![1; 4096]);
    }

    #[test]
    fn neither_device_nor_file_is_refused() {
        let e = open(Path::new("/dev/null"), true).unwrap_err();
        assert!(matches!(e, DiskError::NotADisk { .. }), "{e}");
        let e = open(Path::new("/nonexistent/disk"), true).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/disk: open: "),
            "{e}"
        );
    }

    #[test]
    fn disks_are_found_by_serial() {
        let t = Temp::new("sys");
        for (name, serial) in [("vda", "root\n"), ("vdb", "store0"), ("vdc", "store1\0\0")] {
            std::fs::create_dir_all(t.0.join(name)).unwrap();
            std::fs::write(t.0.join(name).join("serial"), serial).unwrap();
        }
        std::fs::create_dir_all(t.0.join("loop0")).unwrap();

        assert_eq!(
            find_by_serial(&t.0, "store0").unwrap(),
            Path::new("/dev/vdb")
        );
        assert_eq!(
            find_by_serial(&t.0, "store1").unwrap(),
            Path::new("/dev/vdc")
        );
        assert_eq!(find_by_serial(&t.0, "root").unwrap(), Path::new("/dev/vda"));
        let e = find_by_serial(&t.0, "store").unwrap_err().to_string();
        assert!(
            e.contains("no disk with serial \"store\"")
                && e.contains("vda=\"root\", vdb=\"store0\", vdc=\"store1\""),
            "{e}"
        );
        std::fs::write(t.0.join("vda").join("serial"), "store0").unwrap();
        let e = find_by_serial(&t.0, "store0").unwrap_err().to_string();
        assert_eq!(e, "two disks have serial \"store0\": vda and vdb");
    }
}
