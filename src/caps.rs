//! The capability bounding set a machine keeps (the same set
//! systemd-nspawn keeps; everything else, e.g. SYS_MODULE, SYS_TIME,
//! SYS_RAWIO, MAC_ADMIN, BPF, is dropped).

use caps::Capability::{self, *};

pub const KEPT: &[Capability] = &[
    CAP_AUDIT_CONTROL,
    CAP_AUDIT_WRITE,
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH,
    CAP_FOWNER,
    CAP_FSETID,
    CAP_IPC_OWNER,
    CAP_KILL,
    CAP_LEASE,
    CAP_LINUX_IMMUTABLE,
    CAP_MKNOD,
    CAP_NET_BIND_SERVICE,
    CAP_NET_BROADCAST,
    CAP_NET_RAW,
    CAP_SETFCAP,
    CAP_SETGID,
    CAP_SETPCAP,
    CAP_SETUID,
    CAP_SYS_ADMIN,
    CAP_SYS_BOOT,
    CAP_SYS_CHROOT,
    CAP_SYS_NICE,
    CAP_SYS_PTRACE,
    CAP_SYS_RESOURCE,
    CAP_SYS_TTY_CONFIG,
];

/// Drop everything but `kept` from the bounding, inheritable and ambient
/// sets, so neither the init nor anything it starts can regain it.
pub fn drop_bounding(kept: &[Capability]) -> Result<(), caps::errors::CapsError> {
    caps::clear(None, caps::CapSet::Ambient)?;
    for cap in caps::all().into_iter().filter(|c| !kept.contains(c)) {
        // A capability the running kernel does not know is already absent.
        if caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, caps::CapSet::Bounding, cap)?;
        }
        caps::drop(None, caps::CapSet::Inheritable, cap)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_dangerous_keeps_needed() {
        for c in [
            CAP_SYS_MODULE,
            CAP_SYS_TIME,
            CAP_SYS_RAWIO,
            CAP_MAC_ADMIN,
            CAP_BPF,
            CAP_NET_ADMIN,
        ] {
            assert!(!KEPT.contains(&c), "{c} must be dropped");
        }
        for c in [
            CAP_SYS_ADMIN,
            CAP_CHOWN,
            CAP_SETUID,
            CAP_SYS_CHROOT,
            CAP_NET_BIND_SERVICE,
        ] {
            assert!(KEPT.contains(&c), "{c} must be kept");
        }
        assert_eq!(KEPT.len(), 26);
    }
}
