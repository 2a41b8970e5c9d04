//! Host backends for std targets: a raw image file behind virtio-blk, the OS's entropy
//! behind virtio-rng, a non-blocking file descriptor as virtio-console input.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::string::ToString;
use std::vec::Vec;

use crate::block::{BlockBackend, BlockError, GuestIoSlice, Vectored};
use crate::console::ConsoleInput;
use crate::device::EventSource;
use crate::rng::{EntropyError, EntropySource};

/// `BLKSSZGET`: `_IO(0x12, 104)`, a block device's logical block size (`int`).
const BLKSSZGET: u32 = 0x1268;
/// `BLKZEROOUT`: `_IO(0x12, 127)`, zero `[start, start + len)` (`u64[2]`, logical-block
/// aligned); the page cache of the range is dropped, so reads see the zeros.
const BLKZEROOUT: u32 = 0x127f;

/// A raw disk image in a host file or on a block device (positional I/O through the page
/// cache, `fdatasync` to flush).
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    size: u64,
    read_only: bool,
    /// A block device's logical block size (`BLKZEROOUT`'s alignment); `None`: a file.
    block: Option<u64>,
}

impl FileBackend {
    /// Open the image at `path`; `read_only` opens it O_RDONLY.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileBackend> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        FileBackend::from_file(file, read_only)
    }

    /// An image over an already open `file` (opened for writing unless `read_only`): a
    /// regular file or a block device; its file offset is not used (positional I/O only).
    pub fn from_file(mut file: File, read_only: bool) -> io::Result<FileBackend> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let meta = file.metadata()?;
        // A block device's metadata says 0 bytes: its size is where its end is.
        let (size, block) = if meta.file_type().is_block_device() {
            (
                file.seek(SeekFrom::End(0))?,
                Some(logical_block_size(&file)?),
            )
        } else {
            (meta.len(), None)
        };
        Ok(FileBackend {
            file,
            size,
            read_only,
            block,
        })
    }

    /// Another handle on the same image (its own descriptor, the same open file).
    pub fn try_clone(&self) -> io::Result<FileBackend> {
        Ok(FileBackend {
            file: self.file.try_clone()?,
            size: self.size,
            read_only: self.read_only,
            block: self.block,
        })
    }

    /// Whether it is a block device (discards become `BLKZEROOUT`).
    pub fn is_block_device(&self) -> bool {
        self.block.is_some()
    }
}

/// A block device's logical block size (a power of two; 512 if the device says otherwise).
fn logical_block_size(file: &File) -> io::Result<u64> {
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to `ssz`, alive
    // for the call; the descriptor belongs to `file`, open for the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSSZGET as libc::Ioctl,
            &mut ssz as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(ssz)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(512))
}

/// Most iovecs one `preadv`/`pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

fn io_error(op: &'static str, offset: u64, e: &io::Error) -> BlockError {
    BlockError::Io {
        op,
        offset,
        message: e.to_string(),
    }
}

impl FileBackend {
    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<(), BlockError> {
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

    /// Deallocate the range; it reads back as zeros and the file keeps its size.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor belongs to
        // `self.file`, which is open for the duration of the call.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// One `preadv` (`write` false) or `pwritev` of the whole of `bufs` at `offset`,
    /// repeated only for what a short transfer left (and in batches of `IOV_MAX`).
    fn transfer_vectored(
        &self,
        op: &'static str,
        write: bool,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<(), BlockError> {
        let total = bufs
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.len() as u64));
        let out_of_range = || BlockError::OutOfRange {
            op,
            offset,
            len: total.unwrap_or(u64::MAX),
            size: self.size,
        };
        self.check_range(op, offset, total.ok_or_else(out_of_range)?)?;
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let fd = self.file.as_raw_fd();
        let mut first = 0usize;
        let mut at = offset;
        while first < iov.len() {
            let batch = iov.get(first..).unwrap_or(&[]);
            let count = batch.len().min(IOV_MAX);
            let pos = libc::off_t::try_from(at).map_err(|_| out_of_range())?;
            // SAFETY: every iovec describes guest RAM that `GuestIoSlice::of_ram` found
            // inside one mapped region of the `GuestRam` behind the device's memory
            // (`GuestMemory::mapped`), which the device keeps mapped for this call. The kernel copies to or from it; no Rust reference to that memory
            // exists, so the guest writing it at the same time is no aliasing violation.
            // `batch` holds at least `count` iovecs, `count <= IOV_MAX` fits a c_int.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, batch.as_ptr(), count as libc::c_int, pos)
                } else {
                    libc::preadv(fd, batch.as_ptr(), count as libc::c_int, pos)
                }
            };
            let mut n = match usize::try_from(n) {
                Ok(0) => {
                    return Err(BlockError::Io {
                        op,
                        offset: at,
                        message: "the file ended early (was it truncated?)".to_string(),
                    });
                }
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(io_error(op, at, &e));
                }
            };
            at += n as u64;
            // Skip what was transferred: whole iovecs, then part of the next one.
            while n > 0 {
                let Some(v) = iov.get_mut(first) else { break };
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let zeros = [0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| io_error("discard", offset + done, &e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// `BLKZEROOUT` over the logical blocks (of `block` bytes) inside `[offset, offset +
    /// len)`, `pwrite` of zeros for the partial blocks at either end.
    fn zero_block_device(&self, block: u64, offset: u64, len: u64) -> Result<(), BlockError> {
        // In range: checked by the caller, so `offset + len` does not overflow.
        let end = offset + len;
        let first = offset.next_multiple_of(block);
        let last = end / block * block;
        if first >= last {
            return self.write_zeros(offset, len);
        }
        self.write_zeros(offset, first - offset)?;
        let range: [u64; 2] = [first, last - first];
        // SAFETY: BLKZEROOUT reads two u64 through the pointer, which points to `range`,
        // alive for the call; the descriptor belongs to `self.file`, open for the call.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                BLKZEROOUT as libc::Ioctl,
                range.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io_error("discard", first, &io::Error::last_os_error()));
        }
        self.write_zeros(last, end - last)
    }
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_range("read", offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("read", offset, &e))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        self.check_range("write", offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_error("write", offset, &e))
    }

    fn read_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        self.transfer_vectored("read", false, offset, bufs)
            .map(|()| Vectored::Done)
    }

    fn write_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        self.transfer_vectored("write", true, offset, bufs)
            .map(|()| Vectored::Done)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.file.sync_data().map_err(|e| io_error("flush", 0, &e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "discard" });
        }
        self.check_range("discard", offset, len)?;
        if let Some(block) = self.block {
            return self.zero_block_device(block, offset, len);
        }
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching: the range must still read back as zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.write_zeros(offset, len),
            Err(e) => Err(io_error("discard", offset, &e)),
        }
    }
}

/// The host's entropy (`/dev/urandom`).
#[derive(Debug)]
pub struct OsEntropy {
    file: File,
}

impl OsEntropy {
    /// Open `/dev/urandom`.
    pub fn open() -> io::Result<OsEntropy> {
        Ok(OsEntropy::from_file(File::open("/dev/urandom")?))
    }

    /// Entropy from an already open `/dev/urandom` (a sandboxed VMM's kept descriptor).
    pub fn from_file(file: File) -> OsEntropy {
        OsEntropy { file }
    }
}

impl EntropySource for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.file
            .read_exact(buf)
            .map_err(|e| EntropyError(std::format!("reading /dev/urandom: {e}")))
    }
}

/// virtio-console input from a host file descriptor (stdin, a pipe, a socket), read without
/// blocking. Its event source is the descriptor's number: a VMM waits for it to become
/// readable (edge-triggered, see `docs/virtio.md`) and hands the event to the console.
///
/// The descriptor is put in `O_NONBLOCK` mode. That flag belongs to the open file
/// description, which a duplicated stdin shares with the process's other users of the
/// terminal: the flags it had are restored on drop.
#[derive(Debug)]
pub struct FdConsoleInput {
    file: File,
    saved_flags: libc::c_int,
    ended: bool,
}

impl FdConsoleInput {
    /// Input from `fd`, switched to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<FdConsoleInput> {
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL only reads the flags of a descriptor `fd` owns.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL with an integer argument on a descriptor `fd` owns.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FdConsoleInput {
            file: File::from(fd),
            saved_flags: flags,
            ended: false,
        })
    }

    /// Input from this process's stdin (a duplicate of descriptor 0).
    pub fn stdin() -> io::Result<FdConsoleInput> {
        FdConsoleInput::new(io::stdin().as_fd().try_clone_to_owned()?)
    }

    /// Whether the input has ended (end of file, or a read error other than "nothing
    /// waiting"): the VMM should stop waiting on the event source, which stays readable.
    pub fn has_ended(&self) -> bool {
        self.ended
    }
}

impl ConsoleInput for FdConsoleInput {
    fn event_source(&self) -> Option<EventSource> {
        // An ended input stays readable (end of file): it is no event source any more.
        if self.ended {
            return None;
        }
        // A valid descriptor is never negative.
        u64::try_from(self.file.as_raw_fd()).ok().map(EventSource)
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        if self.ended || buf.is_empty() {
            return 0;
        }
        loop {
            match (&self.file).read(buf) {
                Ok(0) => {
                    self.ended = true;
                    return 0;
                }
                Ok(n) => return n.min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
                Err(_) => {
                    self.ended = true;
                    return 0;
                }
            }
        }
    }
}

impl Drop for FdConsoleInput {
    fn drop(&mut self) {
        // SAFETY: F_SETFL with an integer argument on the descriptor `self.file` owns.
        // Failure leaves the flag set, which is all that can be done here.
        let _ = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETFL, self.saved_flags) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{GuestAddress, GuestMemory, GuestRam};
    use std::path::PathBuf;

    /// A scratch image of `len` bytes, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(name: &str, contents: &[u8]) -> Image {
            let path = std::env::temp_dir().join(std::format!(
                "keel-virtio-{}-{name}.img",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Image(path)
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn file_backend_round_trips_data() {
        let img = Image::new("rt", &[0u8; 4096]);
        let mut f = FileBackend::open(&img.0, false).unwrap();

        f.write_at(512, b"keel").unwrap();
        let mut b = [0u8; 4];
        f.read_at(512, &mut b).unwrap();

        assert_eq!(&b, b"keel");
        assert_eq!(f.size(), 4096);
    }

    #[test]
    fn file_backend_read_only_refuses_writes() {
        let img = Image::new("ro", &[7u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();

        assert_eq!(
            f.write_at(0, b"x"),
            Err(BlockError::ReadOnly { op: "write" })
        );
        assert_eq!(std::fs::read(&img.0).unwrap()[0], 7);
    }

    #[test]
    fn file_backend_read_past_end_is_refused() {
        let img = Image::new("end", &[0u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();
        let mut b = [0u8; 8];

        assert!(matches!(
            f.read_at(1020, &mut b),
            Err(BlockError::OutOfRange { offset: 1020, .. })
        ));
    }

    #[test]
    fn file_backend_discard_reads_back_zeros() {
        let img = Image::new("discard", &[9u8; 16384]);
        let mut f = FileBackend::open(&img.0, false).unwrap();

        f.discard(4096, 4096).unwrap();

        let data = std::fs::read(&img.0).unwrap();
        assert_eq!(data.len(), 16384);
        assert!(data[4096..8192].iter().all(|&b| b == 0));
        assert_eq!((data[4095], data[8192]), (9, 9));
    }

    /// Guest RAM of two pages at 0x1000 and the slices of `pieces` (gpa, len) in it.
    fn guest_slices(ram: &GuestRam, pieces: &[(u64, usize)]) -> Vec<GuestIoSlice> {
        pieces
            .iter()
            .map(|&(gpa, len)| GuestIoSlice::of_ram(ram, GuestAddress(gpa), len).unwrap())
            .collect()
    }

    #[test]
    fn file_backend_reads_vectored_into_guest_memory() {
        let contents: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8).collect();
        let img = Image::new("readv", &contents);
        let mut f = FileBackend::open(&img.0, true).unwrap();
        let ram = GuestRam::anonymous(&[(0x1000, 0x2000)]).unwrap();
        let bufs = guest_slices(&ram, &[(0x2000, 512), (0x1000, 1024)]);

        let r = f.read_vectored_at(1024, &bufs);

        assert_eq!(r, Ok(Vectored::Done));
        let mut got = [0u8; 1536];
        ram.read(GuestAddress(0x2000), &mut got[..512]).unwrap();
        ram.read(GuestAddress(0x1000), &mut got[512..]).unwrap();
        assert_eq!(&got[..], &contents[1024..2560]);
    }

    #[test]
    fn file_backend_writes_vectored_from_guest_memory() {
        let img = Image::new("writev", &[0u8; 4096]);
        let mut f = FileBackend::open(&img.0, false).unwrap();
        let ram = GuestRam::anonymous(&[(0x1000, 0x2000)]).unwrap();
        ram.write(GuestAddress(0x1800), &[0xaa; 512]).unwrap();
        ram.write(GuestAddress(0x1000), &[0xbb; 512]).unwrap();
        let bufs = guest_slices(&ram, &[(0x1800, 512), (0x1000, 512)]);

        let r = f.write_vectored_at(512, &bufs);

        assert_eq!(r, Ok(Vectored::Done));
        let data = std::fs::read(&img.0).unwrap();
        assert!(data[512..1024].iter().all(|&b| b == 0xaa));
        assert!(data[1024..1536].iter().all(|&b| b == 0xbb));
        assert_eq!((data[511], data[1536]), (0, 0));
    }

    #[test]
    fn file_backend_vectored_read_past_end_is_refused() {
        let img = Image::new("readv-end", &[0u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();
        let ram = GuestRam::anonymous(&[(0x1000, 0x1000)]).unwrap();
        let bufs = guest_slices(&ram, &[(0x1000, 512), (0x1200, 512)]);

        assert!(matches!(
            f.read_vectored_at(512, &bufs),
            Err(BlockError::OutOfRange {
                offset: 512,
                len: 1024,
                ..
            })
        ));
    }

    #[test]
    fn file_backend_read_only_refuses_vectored_writes() {
        let img = Image::new("writev-ro", &[7u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();
        let ram = GuestRam::anonymous(&[(0x1000, 0x1000)]).unwrap();
        let bufs = guest_slices(&ram, &[(0x1000, 512)]);

        assert_eq!(
            f.write_vectored_at(0, &bufs),
            Err(BlockError::ReadOnly { op: "write" })
        );
        assert_eq!(std::fs::read(&img.0).unwrap()[0], 7);
    }

    #[test]
    fn file_disk_over_unmapped_memory_serves_reads_and_writes_by_copying() {
        use crate::block::{Block, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
        use crate::testing::{BounceMemory, GuestDriver, RAM_SIZE};
        let contents: Vec<u8> = (0..8192u32).map(|i| (i / 512) as u8).collect();
        let img = Image::new("bounce", &contents);
        let disk = Block::new(FileBackend::open(&img.0, false).unwrap(), "file");
        let mem = std::sync::Arc::new(BounceMemory::new(0, RAM_SIZE as usize));
        let mut d = GuestDriver::start_with_memory(disk, mem);
        let header = |kind: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            h
        };
        let (h_in, data, s_in) = (
            d.buffer(&header(VIRTIO_BLK_T_IN, 3)),
            d.alloc(1024),
            d.alloc(1),
        );
        let (h_out, out, s_out) = (
            d.buffer(&header(VIRTIO_BLK_T_OUT, 10)),
            d.buffer(&[0xcc; 512]),
            d.alloc(1),
        );

        d.submit(0, &[(h_in, 16, false), (data, 1024, true), (s_in, 1, true)]);
        d.submit(
            0,
            &[(h_out, 16, false), (out, 512, false), (s_out, 1, true)],
        );

        assert_eq!(d.read_mem(s_in, 1)[0], VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(data, 1024), &contents[3 * 512..5 * 512]);
        assert_eq!(d.read_mem(s_out, 1)[0], VIRTIO_BLK_S_OK);
        let file = std::fs::read(&img.0).unwrap();
        assert_eq!(&file[10 * 512..11 * 512], &[0xcc; 512]);
        assert_eq!((file[10 * 512 - 1], file[11 * 512]), (9, 11));
    }

    /// A pipe: (read end, write end).
    fn pipe() -> (OwnedFd, File) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given, of two c_ints.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn fd_console_input_names_its_descriptor_as_event_source() {
        let (r, _w) = pipe();
        let raw = r.as_raw_fd();

        let input = FdConsoleInput::new(r).unwrap();

        assert_eq!(input.event_source(), Some(EventSource(raw as u64)));
    }

    #[test]
    fn fd_console_input_reads_what_arrived_without_blocking_for_more() {
        use std::io::Write as _;
        let (r, mut w) = pipe();
        let mut input = FdConsoleInput::new(r).unwrap();
        w.write_all(b"hello").unwrap();
        let mut buf = [0u8; 3];

        let first = input.read(&mut buf);
        let first_bytes = buf;
        let second = input.read(&mut buf);
        let third = input.read(&mut buf);

        assert_eq!((first, &first_bytes), (3, b"hel"));
        assert_eq!((second, &buf[..2]), (2, &b"lo"[..]));
        assert_eq!(third, 0);
        assert!(!input.has_ended());
    }

    #[test]
    fn fd_console_input_reports_the_end_of_input() {
        let (r, w) = pipe();
        let mut input = FdConsoleInput::new(r).unwrap();
        drop(w);

        let n = input.read(&mut [0u8; 8]);

        assert_eq!(n, 0);
        assert!(input.has_ended());
    }

    #[test]
    fn fd_console_input_restores_the_descriptor_flags_on_drop() {
        let (r, _w) = pipe();
        let keep = r.try_clone().unwrap();

        drop(FdConsoleInput::new(r).unwrap());

        // SAFETY: F_GETFL only reads the flags of a descriptor `keep` owns.
        let flags = unsafe { libc::fcntl(keep.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn console_over_a_pipe_delivers_input_on_its_event() {
        use crate::console::{Console, ConsoleOutput, INPUT_EVENT, RECEIVEQ};
        use crate::testing::GuestDriver;
        use std::io::Write as _;
        struct Discard;
        impl ConsoleOutput for Discard {
            fn write(&mut self, _bytes: &[u8]) {}
        }
        let (r, mut w) = pipe();
        let console = Console::new(Discard).with_input(FdConsoleInput::new(r).unwrap());
        let mut d = GuestDriver::start(console);
        let a = d.alloc(16);
        d.post(RECEIVEQ, &[(a, 16, true)]);
        w.write_all(b"typed\n").unwrap();

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.read_mem(a, 6), b"typed\n");
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 6)));
        assert!(d.irq.is_high());
    }

    #[test]
    fn file_backend_open_missing_file_fails() {
        assert!(FileBackend::open("/nonexistent/keel.img", true).is_err());
    }

    #[test]
    fn os_entropy_fills_buffer() {
        let mut e = OsEntropy::open().unwrap();
        let mut b = [0u8; 64];
        e.fill(&mut b).unwrap();
        assert!(b.iter().any(|&x| x != 0));
    }
}
