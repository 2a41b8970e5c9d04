//! Checks against the host's files (`std`): kernels exist and are kernels for the VM's arch,
//! initrds exist, disks open with the mode the VM needs, output files can be written.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{ErrorKind, SpecError};
use crate::kernel::{check_kernel, elf_headers_end, probe_kernel};
use crate::model::{Output, System, VmSpec};
use crate::validate::vm_label;

/// Bytes of a kernel read to recognise it.
const KERNEL_PROBE: u64 = 64 << 10;
/// Program headers further into an ELF than this are not looked for.
const KERNEL_PROBE_MAX: u64 = 16 << 20;

/// The OS error text without Rust's " (os error N)" suffix.
pub(crate) fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Runs every host check on a validated system, VMs in file order.
pub fn check_host(system: &System) -> Result<(), SpecError> {
    for (index, vm) in system.vms().iter().enumerate() {
        check_vm_files(&vm_label(index, Some(&vm.name)), vm)?;
    }
    check_served_fit(system)
}

/// Each served range fits the storage VM's disk file as it is now.
fn check_served_fit(system: &System) -> Result<(), SpecError> {
    let vms = system.vms();
    for (index, vm) in vms.iter().enumerate() {
        for (i, disk) in vm.disks.iter().enumerate() {
            let Some(s) = &disk.served else { continue };
            if s.server_passthrough.is_some() {
                continue; // a device of the storage VM: its agent checks the range
            }
            let Some(sd) = vms
                .iter()
                .find(|v| v.name == s.server)
                .and_then(|v| v.disks.get(s.server_disk))
            else {
                continue; // refused by validation already
            };
            // The length of a file or block device alike (a block device's metadata says 0).
            let len = File::open(sd.path.as_path())
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .unwrap_or(0);
            let end = s.start.saturating_add(s.size);
            if end > len {
                return Err(SpecError::new(
                    format!("{}: disk {i}", vm_label(index, Some(&vm.name))),
                    ErrorKind::ServedPastEnd(Box::new(crate::error::ServedPastEnd {
                        server: s.server.clone(),
                        server_disk: s.server_disk,
                        path: sd.path.to_string(),
                        len,
                        start: s.start,
                        end,
                    })),
                ));
            }
        }
    }
    Ok(())
}

fn check_vm_files(at: &str, vm: &VmSpec) -> Result<(), SpecError> {
    let fail = |kind| SpecError::new(at, kind);
    let kernel = vm.kernel.as_path();
    let mut file = open_regular(kernel, "kernel").map_err(fail)?;
    let image = read_probe(&mut file).map_err(|e| {
        fail(ErrorKind::CannotOpen {
            key: "kernel",
            path: vm.kernel.to_string(),
            mode: "read-only",
            reason: io_reason(&e),
        })
    })?;
    check_kernel(probe_kernel(&image), vm.arch).map_err(|reason| {
        fail(ErrorKind::NotAKernel {
            path: vm.kernel.to_string(),
            arch: vm.arch,
            reason,
        })
    })?;
    if let Some(initrd) = &vm.initrd {
        open_regular(initrd.as_path(), "initrd").map_err(fail)?;
    }
    check_output(at, "serial", &vm.serial)?;
    for (i, disk) in vm
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.served.is_none())
    {
        let here = format!("{at}: disk {i}");
        open_disk(disk.path.as_path(), !disk.read_only).map_err(|k| SpecError::new(here, k))?;
    }
    for (i, console) in vm.consoles.iter().enumerate() {
        check_output(&format!("{at}: console {i}"), "output", &console.output)?;
    }
    Ok(())
}

/// Reads the first 64 KiB of a kernel, and further if an ELF's program headers lie beyond.
fn read_probe(file: &mut File) -> io::Result<Vec<u8>> {
    let mut image = Vec::new();
    file.by_ref().take(KERNEL_PROBE).read_to_end(&mut image)?;
    if let Some(end) = elf_headers_end(&image) {
        let have = image.len() as u64;
        if end > have && end <= KERNEL_PROBE_MAX {
            file.seek(SeekFrom::Start(have))?;
            file.by_ref().take(end - have).read_to_end(&mut image)?;
        }
    }
    Ok(image)
}

fn not_found_or(key: &'static str, path: &Path, mode: &'static str, e: &io::Error) -> ErrorKind {
    if e.kind() == io::ErrorKind::NotFound {
        ErrorKind::NotFound {
            key,
            path: path.display().to_string(),
        }
    } else {
        ErrorKind::CannotOpen {
            key,
            path: path.display().to_string(),
            mode,
            reason: io_reason(e),
        }
    }
}

/// Opens a regular file for reading.
fn open_regular(path: &Path, key: &'static str) -> Result<File, ErrorKind> {
    let meta = std::fs::metadata(path).map_err(|e| not_found_or(key, path, "read-only", &e))?;
    if !meta.is_file() {
        return Err(ErrorKind::NotAFile {
            key,
            path: path.display().to_string(),
        });
    }
    File::open(path).map_err(|e| not_found_or(key, path, "read-only", &e))
}

/// A disk is a regular file or a block device, opened as the VM will open it.
fn open_disk(path: &Path, write: bool) -> Result<(), ErrorKind> {
    let mode = if write { "read-write" } else { "read-only" };
    let meta = std::fs::metadata(path).map_err(|e| not_found_or("path", path, mode, &e))?;
    if !(meta.is_file() || is_block_device(&meta)) {
        return Err(ErrorKind::NotAFile {
            key: "path",
            path: path.display().to_string(),
        });
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(drop)
        .map_err(|e| not_found_or("path", path, mode, &e))
}

#[cfg(unix)]
fn is_block_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device()
}

#[cfg(not(unix))]
fn is_block_device(_meta: &std::fs::Metadata) -> bool {
    false
}

/// A file output needs an existing directory; an existing file must be appendable. Nothing is
/// created here: the VMM creates the file when it starts.
fn check_output(at: &str, key: &'static str, output: &Output) -> Result<(), SpecError> {
    let Output::File(path) = output else {
        return Ok(());
    };
    let path = path.as_path();
    let fail = |kind| SpecError::new(at, kind);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(fail(ErrorKind::NotAFile {
            key,
            path: path.display().to_string(),
        })),
        Ok(_) => OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| {
                fail(ErrorKind::CannotOpen {
                    key,
                    path: path.display().to_string(),
                    mode: "for appending",
                    reason: io_reason(&e),
                })
            }),
        Err(_) => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                Err(fail(ErrorKind::NoOutputDir {
                    key,
                    path: path.display().to_string(),
                    dir: dir.display().to_string(),
                }))
            }
        }
    }
}
