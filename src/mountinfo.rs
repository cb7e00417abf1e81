//! The kernel's mount table (/proc/self/mountinfo), read in one way for the
//! modules that look at it: the cgroup2 mount (`cgroup`), mounts inside a
//! tree berth is to remove (`image`), mounts in the way of an idmapping
//! (`userns`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of the table, with the fields berth uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The mount point (field 5, its \NNN escapes decoded).
    pub point: PathBuf,
    /// The per-mount options (field 6).
    pub options: &'a [u8],
    /// The file system type (the first field after the "-").
    pub fs_type: &'a [u8],
}

/// The mounts of a table's text (paths are bytes: a mount point need not be
/// UTF-8). Lines without the fields are skipped.
pub fn mounts(table: &[u8]) -> impl Iterator<Item = Mount<'_>> {
    table.split(|b| *b == b'\n').filter_map(|line| {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let sep = fields.iter().position(|f| *f == b"-")?;
        Some(Mount {
            point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
            options: fields.get(5)?,
            fs_type: fields.get(sep + 1)?,
        })
    })
}

/// The mounts at `target` or below it (component by component:
/// /srv/ab is not below /srv/a).
pub fn at_or_under<'a>(table: &'a [u8], target: &'a Path) -> impl Iterator<Item = Mount<'a>> {
    mounts(table).filter(move |m| m.point.starts_with(target))
}

/// A mountinfo field with the kernel's \NNN octal escapes (space, tab,
/// newline, backslash) decoded.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|o| field[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) => {
                let v = u32::from(o[0] - b'0') * 64 + u32::from(o[1] - b'0') * 8 + u32::from(o[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_escapes() {
        let table = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            31 22 0:6 / /srv/a\\040b\\134c ro - tmpfs tmpfs rw\n\
            short line\n";
        let all: Vec<Mount> = mounts(table).collect();
        assert_eq!(
            all,
            [
                Mount {
                    point: PathBuf::from("/"),
                    options: b"rw,relatime",
                    fs_type: b"ext4"
                },
                Mount {
                    point: PathBuf::from("/srv/a b\\c"),
                    options: b"ro",
                    fs_type: b"tmpfs"
                },
            ]
        );
        let under: Vec<PathBuf> = at_or_under(table, Path::new("/srv")).map(|m| m.point).collect();
        assert_eq!(under, [PathBuf::from("/srv/a b\\c")]);
        assert_eq!(at_or_under(table, Path::new("/srv/a")).count(), 0);
        assert_eq!(at_or_under(table, Path::new("/")).count(), 2);
    }
}
