//! Attaching the endpoint programs to an endpoint's host-side veth, and the pinned links that
//! keep them attached while no agent runs.
//!
//! `cil_from_container` goes on tc ingress of the host-side interface (packets leaving the pod)
//! and `cil_to_container` on its tc egress (packets entering the pod), as TCX links (kernel
//! 6.6 or newer). The interface lives in the node's network namespace, which need not be the agent's:
//! the attach runs on a short-lived helper thread that joins that namespace with
//! `setns(CLONE_NEWNET)`. Only that thread switches; the caller's thread and any async runtime
//! workers stay where they are, and the namespace switch ends with the thread. (Legacy netlink
//! clsact filters are avoided: detaching one from the wrong namespace fails and leaves it
//! enforcing, whereas a TCX link is detached by dropping its last reference, wherever that is.)
//!
//! Links are pinned where upstream pins them: `<bpf-root>/cilium/endpoints/<id>/links/` with
//! the program names `cil_from_container` and `cil_to_container`. A pinned link stays attached
//! after the agent exits, so enforcement continues through a restart; a restarted agent adopts
//! the pins simply by finding them (nothing is re-attached on load).
//!
//! Attaching again — the same endpoint after a restart, an upgrade that brings new programs, or a
//! moved interface — creates fresh links for the programs loaded now, placed first in the TCX
//! chain so they take over at once, then atomically renames their pins over the old ones. The
//! old links lose their last reference with the rename and detach. So after an upgrade the
//! programs of existing endpoints are replaced as the agent re-attaches its endpoints; until
//! then the pinned links keep running the previous programs against the same pinned maps.
//! Detaching removes the pins; with no process holding the link, it detaches. (The kernel
//! releases a link whose last pin went away from a workqueue, so that takes a moment.)

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, MultiProgLink, SchedClassifier, TcAttachType};
use tracing::debug;

use crate::api::EndpointId;
use crate::loader::{BpfObjects, FROM_CONTAINER, TO_CONTAINER};

/// Where link pins live, relative to the bpf root (upstream's `cilium/endpoints`).
const ENDPOINTS_DIR: &str = "cilium/endpoints";
const LINKS_DIR: &str = "links";

/// The two attachments of an endpoint: the program and the tc hook it runs on.
const HOOKS: [(&str, TcAttachType); 2] = [
    (FROM_CONTAINER, TcAttachType::Ingress),
    (TO_CONTAINER, TcAttachType::Egress),
];

/// The link pins of every endpoint under one bpf root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPins {
    endpoints_dir: PathBuf,
}

impl LinkPins {
    /// The pins under `bpf_root` (which must be a bpffs mount).
    pub fn new(bpf_root: &Path) -> Self {
        LinkPins {
            endpoints_dir: bpf_root.join(ENDPOINTS_DIR),
        }
    }

    /// The directory holding `endpoint`'s link pins.
    pub fn links_dir(&self, endpoint: EndpointId) -> PathBuf {
        self.endpoints_dir
            .join(endpoint.get().to_string())
            .join(LINKS_DIR)
    }

    /// The pin of `endpoint`'s link for `program` (`cil_from_container` or `cil_to_container`).
    pub fn link_pin(&self, endpoint: EndpointId, program: &str) -> PathBuf {
        self.links_dir(endpoint).join(program)
    }

    /// The endpoints that have at least one pinned link, in id order: what a restarted agent
    /// finds still attached.
    pub fn attached(&self) -> io::Result<Vec<EndpointId>> {
        let entries = match fs::read_dir(&self.endpoints_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut endpoints = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u16>().ok())
                .map(EndpointId::new)
            else {
                continue;
            };
            if HOOKS
                .iter()
                .any(|(program, _)| self.link_pin(id, program).exists())
            {
                endpoints.push(id);
            }
        }
        endpoints.sort();
        Ok(endpoints)
    }

    /// Attaches both programs of `objects` to `ifname` in the network namespace `netns`
    /// (`None`: the caller's), replacing an earlier attachment of `endpoint`, and pins the
    /// links. Attaching what is already attached is a no-op. On error nothing new stays
    /// attached and an earlier attachment is left as it was.
    pub fn attach(
        &self,
        objects: &mut BpfObjects,
        endpoint: EndpointId,
        ifname: &str,
        netns: Option<&Path>,
    ) -> io::Result<()> {
        let existing: Vec<Option<LinkTarget>> = HOOKS
            .iter()
            .map(|(program, _)| pinned_link_target(&self.link_pin(endpoint, program)))
            .collect::<io::Result<_>>()?;
        let links = in_netns(netns, || attach_links(objects, ifname, &existing))?;
        let dir = self.links_dir(endpoint);
        fs::create_dir_all(&dir)?;
        for ((program, _), link) in HOOKS.iter().zip(links) {
            // Already attached as asked: the pinned link stays.
            let Some(link) = link else { continue };
            let pin = dir.join(program);
            // bpffs rejects names with a dot, so no hidden-file convention here.
            let staging = dir.join(format!("{program}_next"));
            remove_if_present(&staging)?;
            // Pinning next to the final name and renaming replaces an old pin atomically:
            // there is never a moment where the endpoint has neither link pinned.
            let pinned = link.pin(&staging).map_err(io::Error::other)?;
            fs::rename(&staging, &pin)?;
            drop(pinned);
        }
        debug!(%endpoint, ifname, "endpoint programs attached and pinned");
        Ok(())
    }

    /// Removes `endpoint`'s link pins, which detaches the programs; `false` if there were none.
    pub fn detach(&self, endpoint: EndpointId) -> io::Result<bool> {
        let mut removed = false;
        for (program, _) in HOOKS {
            removed |= remove_if_present(&self.link_pin(endpoint, program))?;
        }
        let dir = self.links_dir(endpoint);
        for dir in [dir.as_path(), dir.parent().unwrap_or(&dir)] {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                // Gone already, or holding something else (a staging pin of a failed attach).
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(err) => return Err(err),
            }
        }
        if removed {
            debug!(%endpoint, "endpoint programs detached");
        }
        Ok(removed)
    }
}

fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// What a pinned link is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkTarget {
    program_id: u32,
    ifindex: u32,
}

/// The program and interface of the TCX link pinned at `pin`, if there is one.
fn pinned_link_target(pin: &Path) -> io::Result<Option<LinkTarget>> {
    let link = match PinnedLink::from_pin(pin) {
        Ok(link) => link,
        Err(LinkError::SyscallError(aya::sys::SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(err) => return Err(io::Error::other(err)),
    };
    let link = SchedClassifierLink::try_from(FdLink::from(link)).map_err(io::Error::other)?;
    let fd = link.fd().map_err(io::Error::other)?;
    // Dropping `link` afterwards closes our fd only: the pin keeps the link.
    link_info::tcx_target(fd).map(Some)
}

/// Creates one TCX link per hook; they stay attached only as long as the returned links (or
/// their pins) live. `None` for a hook whose pinned link (`existing`) already runs the
/// current program on this interface.
fn attach_links(
    objects: &mut BpfObjects,
    ifname: &str,
    existing: &[Option<LinkTarget>],
) -> io::Result<Vec<Option<FdLink>>> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not an interface name"),
        ));
    }
    let name = std::ffi::CString::new(ifname)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: a valid NUL-terminated name; the lookup happens in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("interface {ifname}: {err}"),
        ));
    }
    let mut links = Vec::with_capacity(HOOKS.len());
    for ((program, hook), existing) in HOOKS.into_iter().zip(existing) {
        let classifier = if program == FROM_CONTAINER {
            objects.from_container_mut()
        } else {
            objects.to_container_mut()
        }
        .map_err(io::Error::other)?;
        let program_id = classifier.info().map_err(program_io_error)?.id();
        let current = LinkTarget {
            program_id,
            ifindex,
        };
        // TCX refuses the same program twice on one hook, and re-attaching what runs already
        // would only churn: keep the pinned link.
        if *existing == Some(current) {
            links.push(None);
            continue;
        }
        links.push(Some(attach_first(classifier, ifname, hook)?));
    }
    Ok(links)
}

fn attach_first(
    classifier: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
) -> io::Result<FdLink> {
    // First in the chain: a replacement takes over before the link it replaces is removed.
    let id = classifier
        .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
        .map_err(program_io_error)?;
    let link = classifier.take_link(id).map_err(program_io_error)?;
    FdLink::try_from(link).map_err(io::Error::other)
}

/// Keeps the errno of a failed syscall (ENODEV for a missing interface, ...) visible.
fn program_io_error(err: aya::programs::ProgramError) -> io::Error {
    use aya::programs::ProgramError;
    match err {
        ProgramError::SyscallError(aya::sys::SyscallError { call, io_error }) => {
            io::Error::new(io_error.kind(), format!("{call}: {io_error}"))
        }
        ProgramError::TcError(aya::programs::tc::TcError::IoError(io_error)) => io_error,
        other => io::Error::other(other),
    }
}

/// Runs `f` in the network namespace at `netns` on a helper thread (or right here for `None`).
fn in_netns<T, F>(netns: Option<&Path>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let Some(netns) = netns else {
        return f();
    };
    // Open before spawning so a bad path fails without a thread.
    let ns = File::open(netns).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("network namespace {}: {err}", netns.display()),
        )
    })?;
    thread::scope(|scope| {
        let worker = scope.spawn(move || {
            // SAFETY: setns only reads the fd, which `ns` keeps open for the call. It changes
            // the network namespace of this (helper) thread alone.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
    })
}

/// The one link query aya 0.14 does not expose: the interface of a TCX link.
mod link_info {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use super::LinkTarget;

    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// Offset of the `tcx.ifindex` member of `struct bpf_link_info`: `type`, `id`, `prog_id`,
    /// then the 8-byte aligned union.
    const TCX_IFINDEX_OFFSET: usize = 16;
    const PROG_ID_OFFSET: usize = 8;

    /// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    pub(super) fn tcx_target(fd: BorrowedFd<'_>) -> io::Result<LinkTarget> {
        // Larger than the kernel's struct bpf_link_info; the kernel fills what it knows and
        // requires the rest to be zero.
        let mut info = [0u8; 128];
        let attr = InfoAttr {
            bpf_fd: u32::try_from(fd.as_raw_fd())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command, `info` is writable for
        // `info_len` bytes and outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                std::ptr::from_ref(&attr),
                size_of::<InfoAttr>() as libc::c_uint,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let word = |offset: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&info[offset..offset + 4]);
            u32::from_ne_bytes(bytes)
        };
        Ok(LinkTarget {
            program_id: word(PROG_ID_OFFSET),
            ifindex: word(TCX_IFINDEX_OFFSET),
        })
    }
}
