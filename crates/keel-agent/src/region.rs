//! A client's forwarding region mapped into the agent: `/dev/mem` at its guest-physical
//! address in the storage VM, or (tests) a regular file.
//!
//! The region lies outside the storage VM's RAM, so arm64 Linux maps it from `/dev/mem` as
//! Device memory: every access must be aligned and no Rust reference may point into it.
//! The agent touches it only through the slot rings (`keel_core::ring::slot`), whose
//! accesses are aligned atomic word (or byte) loads and stores, never a `&[u8]`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use keel_core::ring::slot::SlotWindow;
use keel_virtio::forward::{ForwardError, ForwardGeometry};

/// Why a region cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// `/dev/mem` (or the file) cannot be opened.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// Why not.
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The region file is shorter than the region (touching the rest would be SIGBUS).
    #[error("region file {path} has {len} bytes, the region needs {need}")]
    FileTooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The region's length.
        need: usize,
    },
    /// `mmap` refused.
    #[error("cannot map {what} at {offset:#x}+{len:#x}: {source}{hint}")]
    Map {
        /// `/dev/mem` or the file.
        what: PathBuf,
        /// Offset (the guest-physical address for /dev/mem).
        offset: u64,
        /// Bytes.
        len: usize,
        /// Why not.
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The rings do not fit the region.
    #[error("{0}")]
    Rings(#[from] ForwardError),
}

/// A shared mapping of a forwarding region, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` owns its mapping (the address and length only; nothing in the
// process refers to it through references), and mappings are per process, not per
// thread: using or unmapping it from another thread is sound.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Map `len` bytes of physical memory at `gpa` through `/dev/mem`.
    pub fn dev_mem(gpa: u64, len: usize) -> Result<Mapping, RegionError> {
        let path = PathBuf::from("/dev/mem");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(&path)
            .map_err(|source| RegionError::Open {
                path: path.clone(),
                source,
                hint: " (is the kernel built with CONFIG_DEVMEM, and is the agent root?)",
            })?;
        Mapping::map(
            &file,
            &path,
            gpa,
            len,
            " (with STRICT_DEVMEM the address must not be RAM or claimed by a driver: is the \
             region outside the memory node of the device tree?)",
        )
    }

    /// Map the first `len` bytes of the regular file at `path` (tests: the region a client
    /// VMM maps the same file for).
    pub fn file(path: &Path, len: usize) -> Result<Mapping, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| RegionError::Open {
                path: path.to_path_buf(),
                source,
                hint: "",
            })?;
        let flen = file
            .metadata()
            .map_err(|source| RegionError::Open {
                path: path.to_path_buf(),
                source,
                hint: "",
            })?
            .len();
        if flen < len as u64 {
            return Err(RegionError::FileTooShort {
                path: path.to_path_buf(),
                len: flen,
                need: len,
            });
        }
        Mapping::map(&file, path, 0, len, "")
    }

    fn map(
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
        hint: &'static str,
    ) -> Result<Mapping, RegionError> {
        let err = |source| RegionError::Map {
            what: path.to_path_buf(),
            offset,
            len,
            source,
            hint,
        };
        let off = libc::off_t::try_from(offset)
            .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        if len == 0 {
            return Err(err(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // SAFETY: a new shared mapping chosen by the kernel (no address hint, so nothing
        // existing is replaced); the descriptor is open for the call and the mapping
        // outlives it by design. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| err(io::Error::other("null")))?;
        Ok(Mapping { base, len })
    }

    /// The first byte mapped (for rings elsewhere in the mapping; never make a reference
    /// into it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The two ring windows (requests, responses) of the region, for `geometry`. Each
    /// call gives new windows over the same memory (a server made again after its ring
    /// broke).
    ///
    /// The windows hold the mapping's address: keep the mapping alive (and unmoved: it
    /// is, the address does not change when the `Mapping` moves) while they live.
    pub fn windows(
        &self,
        geometry: ForwardGeometry,
    ) -> Result<(SlotWindow, SlotWindow), RegionError> {
        // SAFETY: the mapping is readable and writable for `len` bytes and stays mapped
        // until `self` drops, which its owner (`agent::Client`) does only after the
        // windows and the server made of them (declared before it, dropped first). No
        // Rust reference into it is ever made: the windows reach it only through atomics.
        // The peer (the client VMM) writes it only as bytes.
        Ok(unsafe { geometry.windows(self.base.as_ptr(), self.len) }?)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is the mapping made in `map`, unmapped only here;
        // nothing made from it outlives the `Mapping` (see `windows`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::ring::slot::{Pop, SlotConsumer, SlotProducer};

    const G: ForwardGeometry = ForwardGeometry {
        slots: 4,
        max_data: 512,
    };

    fn temp(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("keel-agent-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn two_mappings_of_one_file_share_the_rings() {
        let p = temp("shared", G.region_len() as u64);
        let a = Mapping::file(&p, G.region_len()).unwrap();
        let b = Mapping::file(&p, G.region_len()).unwrap();
        let mut prod = SlotProducer::attach(a.windows(G).unwrap().0);
        let mut cons = SlotConsumer::attach(b.windows(G).unwrap().0);

        prod.push(b"hello").unwrap();
        let mut buf = [0u8; 64];

        assert_eq!(cons.pop(&mut buf).unwrap(), Pop::Record(5));
        assert_eq!(&buf[..5], b"hello");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_short_file_or_region_is_refused() {
        let p = temp("short", 4096);
        let e = Mapping::file(&p, G.region_len()).unwrap_err();
        assert!(
            matches!(e, RegionError::FileTooShort { len: 4096, .. }),
            "{e}"
        );
        let m = Mapping::file(&p, 4096).unwrap();
        let e = m.windows(G).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        let e = Mapping::file(Path::new("/nonexistent/keel"), 4096).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot open /nonexistent/keel"),
            "{e}"
        );
        std::fs::remove_file(p).unwrap();
    }
}
