//! The one map operation aya 0.14 does not expose: deleting an element of an array of maps
//! (which clears the slot). Everything else goes through aya.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// The `bpf_attr` prefix BPF_MAP_DELETE_ELEM reads: map fd, padding, key pointer.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Deletes `key` from the map behind `fd`.
pub(crate) fn map_delete_u32(fd: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = MapElemAttr {
        map_fd: fd,
        pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_DELETE_ELEM and `key` outlives the
    // call; the kernel reads at most `size_of::<MapElemAttr>()` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<MapElemAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
