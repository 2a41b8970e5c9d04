//! Landlock: the files a sandboxed VMM process may still open.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::{LANDLOCK_ABI, SandboxError, SandboxProfile};

fn landlock_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

/// The Landlock ABI of the running kernel (0: none).
pub(super) fn kernel_abi() -> u8 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only
    // returns the ABI version (or an error).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    u8::try_from(v).unwrap_or(0)
}

/// Restrict this process to the profile's files: returns the ABI enforced (0: none, the
/// kernel has no Landlock) and whether every right asked for is enforced.
pub(super) fn restrict(profile: &SandboxProfile) -> Result<(u8, bool), SandboxError> {
    let abi = ABI::V7;
    debug_assert_eq!(abi as u8, LANDLOCK_ABI);
    let file_rights = AccessFs::from_file(abi);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let read_write = read | AccessFs::WriteFile;
    let device = read_write | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock_error)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock_error)?
        .scope(Scope::from_all(abi))
        .map_err(landlock_error)?
        .create()
        .map_err(landlock_error)?;
    let groups = [
        (&profile.read_only, read),
        (&profile.read_write, read_write),
        (&profile.devices, device),
        (&profile.read_only_devices, read),
    ];
    for (paths, rights) in groups {
        for p in paths {
            let fd = PathFd::new(p)
                .map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, rights & file_rights))
                .map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
        }
    }
    // `std::fs::write` opens with O_TRUNC.
    let write = AccessFs::WriteFile | AccessFs::Truncate;
    let cgroup_rules = profile
        .cgroup_files
        .iter()
        .map(|p| (p, write & file_rights))
        .chain(
            profile
                .cgroup_dirs
                .iter()
                .map(|p| (p, AccessFs::RemoveDir.into())),
        );
    for (p, rights) in cgroup_rules {
        let fd =
            PathFd::new(p).map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
    }
    let status = ruleset.restrict_self().map_err(landlock_error)?;
    Ok(match status.ruleset {
        RulesetStatus::NotEnforced => (0, false),
        RulesetStatus::PartiallyEnforced => (kernel_abi().min(LANDLOCK_ABI), false),
        RulesetStatus::FullyEnforced => (LANDLOCK_ABI, true),
    })
}
