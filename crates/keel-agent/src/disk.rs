//! The storage VM's own disks: found by virtio-blk serial, served through
//! [`BlockBackend`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use keel_virtio::{BlockBackend, BlockError};

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`, the device's size in bytes.
const BLKGETSIZE64: u32 = 0x8008_1272;
/// `BLKSSZGET`: `_IO(0x12, 104)`, the logical block size (`int`).
const BLKSSZGET: u32 = 0x1268;
/// `BLKZEROOUT`: `_IO(0x12, 127)`, zero `[start, start + len)` (`u64[2]`, logical-block
/// aligned); the page cache of the range is dropped, so reads see the zeros.
const BLKZEROOUT: u32 = 0x127f;

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

/// A disk of the storage VM (a block device; a regular file in tests) opened for one
/// client: positional I/O through the page cache, `fdatasync` to flush.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    /// Logical block size of a block device (`BLKZEROOUT`'s alignment); `None` for a file.
    block: Option<u64>,
}

fn ioctl_error(path: &Path, what: &'static str) -> DiskError {
    DiskError::Io {
        path: path.to_path_buf(),
        what,
        source: io::Error::last_os_error(),
    }
}

impl Disk {
    /// Open the disk at `path` (`O_RDONLY` if `read_only`, else `O_RDWR`).
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, DiskError> {
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
        let ty = file.metadata().map_err(io("stat"))?;
        let (size, block) = if ty.file_type().is_block_device() {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
            // `size`, alive for the call; the descriptor is open.
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    BLKGETSIZE64 as libc::Ioctl,
                    &mut size as *mut u64,
                )
            };
            if rc != 0 {
                return Err(ioctl_error(path, "BLKGETSIZE64"));
            }
            let mut ssz: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer, which points to `ssz`.
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    BLKSSZGET as libc::Ioctl,
                    &mut ssz as *mut libc::c_int,
                )
            };
            if rc != 0 {
                return Err(ioctl_error(path, "BLKSSZGET"));
            }
            let ssz = u64::try_from(ssz)
                .ok()
                .filter(|s| s.is_power_of_two())
                .unwrap_or(512);
            (size, Some(ssz))
        } else if ty.file_type().is_file() {
            (ty.len(), None)
        } else {
            return Err(DiskError::NotADisk {
                path: path.to_path_buf(),
            });
        };
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            block,
        })
    }

    /// Another handle on the same disk (a client's server made again).
    pub fn try_clone(&self) -> io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            size: self.size,
            read_only: self.read_only,
            block: self.block,
        })
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange {
                op,
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn io(&self, op: &'static str, offset: u64, e: &io::Error) -> BlockError {
        BlockError::Io {
            op,
            offset,
            message: format!("{}: {e}", self.path.display()),
        }
    }

    /// Write zeros over `[offset, offset + len)` with `pwrite`.
    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let zeros = [0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| self.io("discard", offset + done, &e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// `BLKZEROOUT` over the blocks inside `[offset, offset + len)`, `pwrite` of zeros for
    /// the partial blocks at either end.
    fn zero_block_device(&self, block: u64, offset: u64, len: u64) -> Result<(), BlockError> {
        let end = offset + len;
        let first = offset.next_multiple_of(block);
        let last = end / block * block;
        if first >= last {
            return self.write_zeros(offset, len);
        }
        self.write_zeros(offset, first - offset)?;
        let range: [u64; 2] = [first, last - first];
        // SAFETY: BLKZEROOUT reads two u64 through the pointer, which points to `range`,
        // alive for the call; the descriptor is open.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                BLKZEROOUT as libc::Ioctl,
                range.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(self.io("discard", first, &io::Error::last_os_error()));
        }
        self.write_zeros(last, end - last)
    }

    /// Punch a hole (a sparse file keeps its size), or write zeros where that is not
    /// supported.
    fn zero_file(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    n,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        self.write_zeros(offset, len)
    }
}

impl BlockBackend for Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check("read", offset, buf.len() as u64)?;
        // read_exact_at: pread until done, again after EINTR, an error at end of file.
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io("read", offset, &e))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        self.check("write", offset, data.len() as u64)?;
        // write_all_at: pwrite until done, again after EINTR, an error if nothing is written.
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io("write", offset, &e))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        // fdatasync (again after EINTR): the page cache is written and, on a block device,
        // the device is told to flush its cache.
        self.file.sync_data().map_err(|e| self.io("flush", 0, &e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "discard" });
        }
        self.check("discard", offset, len)?;
        match self.block {
            Some(block) => self.zero_block_device(block, offset, len),
            None => self.zero_file(offset, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut d = Disk::open(&t.0, false).unwrap();
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
        let mut d = Disk::open(&t.0, true).unwrap();

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
        let e = Disk::open(Path::new("/dev/null"), true).unwrap_err();
        assert!(matches!(e, DiskError::NotADisk { .. }), "{e}");
        let e = Disk::open(Path::new("/nonexistent/disk"), true).unwrap_err();
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
