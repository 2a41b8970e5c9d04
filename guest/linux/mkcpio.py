#!/usr/bin/env python3
"""Write a newc ("070701") cpio archive of a staging directory to stdout.

Used by build.sh for the Keel guest initramfs. Every entry is owned by 0:0 and
has mtime 0, entries are sorted, so the same tree gives the same bytes. Device
nodes, which an unprivileged build cannot create in the staging tree, are
given as extra arguments: `c:<path>:<mode-octal>:<major>:<minor>`.

usage: mkcpio.py <staging-dir> [c:dev/console:600:5:1 ...] > initrd.cpio
"""

import os
import stat
import sys


def header(ino, mode, nlink, size, rmaj, rmin, namesize):
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def entry(out, ino, name, mode, nlink=1, data=b"", rdev=(0, 0)):
    bname = name.encode() + b"\0"
    hdr = header(ino, mode, nlink, len(data), rdev[0], rdev[1], len(bname))
    out.write(hdr + bname + pad4(len(hdr) + len(bname)))
    out.write(data + pad4(len(data)))


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    root = argv[1]
    out = sys.stdout.buffer
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            items.append((os.path.relpath(full, root), full))
    items.sort()
    ino = 1
    for rel, full in items:
        st = os.lstat(full)
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entry(out, ino, rel, stat.S_IFDIR | perm, nlink=2)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full).encode()
            entry(out, ino, rel, stat.S_IFLNK | 0o777, data=target)
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                entry(out, ino, rel, stat.S_IFREG | perm, data=f.read())
        else:
            sys.stderr.write("mkcpio: unsupported file type: %s\n" % full)
            return 1
        ino += 1
    for spec in argv[2:]:
        kind, path, mode, major, minor = spec.split(":")
        if kind != "c":
            sys.stderr.write("mkcpio: only char devices are supported: %s\n" % spec)
            return 2
        entry(out, ino, path, stat.S_IFCHR | int(mode, 8), rdev=(int(major), int(minor)))
        ino += 1
    entry(out, ino, "TRAILER!!!", 0)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
