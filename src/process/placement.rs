//! Placement and limits of a child: CPU affinity, niceness, resource limits, a memory cap.
//!
//! The parent checks and resolves the settings ([`PlacementSpec::resolve`]) into a
//! [`Placement`], plain fixed-size data that the child applies before user code runs
//! ([`Placement::apply`]): in a forked child that is the post-fork path, so applying is only
//! system calls on data already in place. Spawn and forkserver children receive it in their
//! boot message and apply it before decoding their target.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A resource whose use a child's limit caps (setrlimit(2); Python's `resource.RLIMIT_*`).
///
/// # Examples
/// ```
/// use multiproc::process::{Builder, Resource};
/// fn open_files() -> u64 { 0 }
/// let h = Builder::new().rlimit(Resource::Nofile, 64, 64).spawn(open_files)?;
/// h.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// Address space in bytes (`RLIMIT_AS`).
    #[doc(alias = "RLIMIT_AS")]
    As,
    /// Core file size in bytes (`RLIMIT_CORE`).
    #[doc(alias = "RLIMIT_CORE")]
    Core,
    /// CPU time in seconds (`RLIMIT_CPU`).
    #[doc(alias = "RLIMIT_CPU")]
    Cpu,
    /// Data segment and private mappings in bytes (`RLIMIT_DATA`).
    #[doc(alias = "RLIMIT_DATA")]
    Data,
    /// Largest file the process may write, in bytes (`RLIMIT_FSIZE`).
    #[doc(alias = "RLIMIT_FSIZE")]
    Fsize,
    /// Locked memory in bytes (`RLIMIT_MEMLOCK`).
    #[doc(alias = "RLIMIT_MEMLOCK")]
    Memlock,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    #[doc(alias = "RLIMIT_NOFILE")]
    Nofile,
    /// Processes of the user (`RLIMIT_NPROC`).
    #[doc(alias = "RLIMIT_NPROC")]
    Nproc,
    /// Main thread's stack in bytes (`RLIMIT_STACK`).
    #[doc(alias = "RLIMIT_STACK")]
    Stack,
}

impl Resource {
    fn number(self) -> i32 {
        let name = match self {
            Resource::As => "AS",
            Resource::Core => "CORE",
            Resource::Cpu => "CPU",
            Resource::Data => "DATA",
            Resource::Fsize => "FSIZE",
            Resource::Memlock => "MEMLOCK",
            Resource::Nofile => "NOFILE",
            Resource::Nproc => "NPROC",
            Resource::Stack => "STACK",
        };
        sys::rlimit_number(name).expect("every Resource has an RLIMIT number")
    }
}

/// Unlimited, for [`Builder::rlimit`](super::Builder::rlimit) (`RLIM_INFINITY`).
#[doc(alias = "RLIM_INFINITY")]
pub const UNLIMITED: u64 = sys::RLIM_INFINITY;

/// The most resource limits one child can be given.
const MAX_LIMITS: usize = 10;

/// The settings as the builder collects them, checked at start.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlacementSpec {
    pub(crate) cpus: Option<Vec<usize>>,
    pub(crate) nice: Option<i32>,
    pub(crate) limits: Vec<(Resource, u64, u64)>,
    pub(crate) memory_limit: Option<u64>,
}

/// Resolved settings, applied in the child. Plain data: a forked child applies it without
/// allocating.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Placement {
    cpus: Option<sys::CpuMask>,
    nice: Option<i32>,
    limits: [Option<(i32, u64, u64)>; MAX_LIMITS],
    /// Applied as `RLIMIT_AS`; kept apart so that a death can be blamed on it.
    memory_limit: Option<u64>,
}

fn invalid(message: String) -> Error {
    Error::with_message(ErrorKind::InvalidInput, message)
}

impl PlacementSpec {
    /// Whether nothing was asked for.
    pub(crate) fn is_empty(&self) -> bool {
        self.cpus.is_none()
            && self.nice.is_none()
            && self.limits.is_empty()
            && self.memory_limit.is_none()
    }

    /// Checks every setting against what this process may grant, and resolves them.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a CPU this process may not run on (or an empty set), a
    /// niceness outside -20..=19 or below the current one without the privilege to lower it,
    /// a soft limit above its hard limit, a hard limit above the current hard limit without
    /// privilege, or too many limits; [`ErrorKind::Io`] if the current settings cannot be read.
    pub(crate) fn resolve(&self) -> Result<Placement> {
        let mut p = Placement::default();
        if let Some(cpus) = &self.cpus {
            p.cpus = Some(cpu_mask(cpus)?);
        }
        if let Some(nice) = self.nice {
            if !(-20..=19).contains(&nice) {
                return Err(invalid(format!("niceness {nice} is outside -20..=19")));
            }
            let now = sys::nice()?;
            if nice < now && !sys::is_root() {
                let (soft, _) = sys::rlimit(sys::rlimit_number("NICE").expect("NICE exists"))?;
                // RLIMIT_NICE allows a nice value down to 20 - soft.
                let floor = 20 - soft.min(40) as i32;
                if nice < floor {
                    return Err(invalid(format!(
                        "niceness {nice} is below this process's {now}: lowering it needs \
                         privilege (CAP_SYS_NICE or RLIMIT_NICE)"
                    )));
                }
            }
            p.nice = Some(nice);
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(invalid(format!(
                "at most {MAX_LIMITS} resource limits per process"
            )));
        }
        for (slot, &(resource, soft, hard)) in p.limits.iter_mut().zip(&self.limits) {
            check_limit(resource, soft, hard)?;
            *slot = Some((resource.number(), soft, hard));
        }
        if let Some(bytes) = self.memory_limit {
            if bytes == 0 {
                return Err(invalid("memory_limit must be above 0".to_owned()));
            }
            check_limit(Resource::As, bytes, bytes)?;
            p.memory_limit = Some(bytes);
        }
        Ok(p)
    }
}

fn check_limit(resource: Resource, soft: u64, hard: u64) -> Result<()> {
    if soft > hard {
        return Err(invalid(format!(
            "{resource:?} limit: soft limit {soft} is above hard limit {hard}"
        )));
    }
    let (_, current_hard) = sys::rlimit(resource.number())?;
    if hard > current_hard && !sys::is_root() {
        return Err(invalid(format!(
            "{resource:?} limit: hard limit {hard} is above this process's hard limit \
             {current_hard}, which only a privileged process may raise"
        )));
    }
    Ok(())
}

/// The mask of `cpus`, each of which this process must be allowed to run on.
pub(crate) fn cpu_mask(cpus: &[usize]) -> Result<sys::CpuMask> {
    if cpus.is_empty() {
        return Err(invalid("an empty CPU set".to_owned()));
    }
    let allowed = sys::allowed_cpus()?;
    let mut mask = [0u64; sys::MAX_CPUS / 64];
    for &cpu in cpus {
        if !allowed.contains(&cpu) {
            return Err(invalid(format!(
                "CPU {cpu} is not among the CPUs this process may run on ({allowed:?})"
            )));
        }
        mask[cpu / 64] |= 1 << (cpu % 64);
    }
    Ok(mask)
}

impl Placement {
    /// The hard memory cap, if any.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// Applies the settings to the calling process. Async-signal-safe: system calls only,
    /// and on failure a static message for stderr.
    pub(crate) fn apply(&self) -> std::result::Result<(), &'static str> {
        if let Some(mask) = &self.cpus {
            sys::set_affinity(mask)
                .map_err(|_| "multiproc: could not set the child's CPU affinity\n")?;
        }
        if let Some(nice) = self.nice {
            sys::set_nice(nice).map_err(|_| "multiproc: could not set the child's niceness\n")?;
        }
        for &(resource, soft, hard) in self.limits.iter().flatten() {
            sys::set_rlimit(resource, soft, hard)
                .map_err(|_| "multiproc: could not set a resource limit of the child\n")?;
        }
        if let Some(bytes) = self.memory_limit {
            let resource = sys::rlimit_number("AS").expect("AS exists");
            sys::set_rlimit(resource, bytes, bytes)
                .map_err(|_| "multiproc: could not set the child's memory limit\n")?;
        }
        Ok(())
    }

    /// Applies the settings, writing why to stderr if that fails; `false` then (the child
    /// must not run its target).
    pub(crate) fn apply_or_report(&self) -> bool {
        match self.apply() {
            Ok(()) => true,
            Err(message) => {
                sys::write_stderr(message.as_bytes());
                false
            }
        }
    }
}

/// Whether a child with `placement` that ended with `exitcode` ran out of memory, as far as
/// can be told: Rust aborts (SIGABRT) when an allocation fails, and under a memory limit
/// that is by far the likeliest abort. An explicit `abort()` under a limit is misread.
pub(crate) fn died_of_memory_limit(memory_limit: Option<u64>, exitcode: i32) -> bool {
    memory_limit.is_some() && exitcode == -sys::SIGABRT
}
