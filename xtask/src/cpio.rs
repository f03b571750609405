//! A writer for the "newc" cpio format (the SVR4 portable format with no CRC, magic `070701`),
//! the format Linux unpacks as an initramfs. Linux accepts several archives concatenated, later
//! entries replacing earlier ones, which is how xtask appends per-run files to a cached base image.
//! Format reference: the Linux kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Builds one newc archive in memory.
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1000,
        }
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        self.ino += 1;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    /// A directory (parents are not created implicitly: add them first).
    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | (perm & 0o7777), &[]);
    }

    /// A regular file with the given content.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (perm & 0o7777), data);
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes());
    }

    /// Add a host file (following symlinks) under `name`, keeping its permission bits.
    pub fn host_file(&mut self, name: &str, src: &Path) -> io::Result<()> {
        let data = fs::read(src)?;
        let perm = fs::metadata(src)?.permissions().mode();
        self.file(name, perm, &data);
        Ok(())
    }

    /// Add a host directory tree under `prefix` (symlinks kept as symlinks).
    pub fn host_tree(&mut self, prefix: &str, dir: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let name = format!("{}/{}", prefix, e.file_name().to_string_lossy());
            let m = fs::symlink_metadata(&p)?;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p)?;
                self.symlink(&name, &t.to_string_lossy());
            } else if m.is_dir() {
                self.dir(&name, m.mode());
                self.host_tree(&name, &p)?;
            } else if m.is_file() {
                self.file(&name, m.mode(), &fs::read(&p)?);
            }
        }
        Ok(())
    }

    /// Finish the archive (trailer) and return its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Parse a newc archive back into (name, mode, data) entries (test helper).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "bad magic at {off}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let data_off = (110 + namesize + 3) & !3;
            let data = b[data_off..data_off + size].to_vec();
            let next = (data_off + size + 3) & !3;
            off += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn roundtrip_entries_and_alignment() {
        let mut c = Cpio::new();
        c.dir("/tests", 0o755);
        c.file("tests/a.sh", 0o755, b"#!/bin/sh\necho hi\n");
        c.file("odd", 0o644, b"12345");
        c.symlink("bin/sh", "busybox");
        let bytes = c.finish();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].0, "tests");
        assert_eq!(e[0].1, S_IFDIR | 0o755);
        assert_eq!(
            e[1],
            (
                "tests/a.sh".into(),
                S_IFREG | 0o755,
                b"#!/bin/sh\necho hi\n".to_vec()
            )
        );
        assert_eq!(e[2].2, b"12345");
        assert_eq!(
            e[3],
            ("bin/sh".into(), S_IFLNK | 0o777, b"busybox".to_vec())
        );
    }

    #[test]
    #[ignore = "needs GNU cpio: run by `cargo xtask test host`, which installs it"]
    fn gnu_cpio_reads_it() {
        let mut c = Cpio::new();
        c.dir("d", 0o755);
        c.file("d/f", 0o600, b"content");
        let bytes = c.finish();
        let mut child = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "d\nd/f\n");
    }
}
