//! The supervisor's setup phase: ordered steps that act on the machine's
//! init between its clone and `Go` (the cgroup move today; machined
//! registration, veth pairs and ID maps as they come), each with its undo.
//!
//! On a failure the steps already done are undone in reverse order, and the
//! pending child is killed and reaped (`spawn::Pending`). On the machine's
//! exit the supervisor calls `undo_all` explicitly: release builds abort on
//! panic, so `Drop` is a backstop for early returns, never the plan.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::unistd::Pid;

/// What a step sees of the pending child (`spawn::Pending::handle`).
#[derive(Clone, Copy)]
pub struct Child<'a> {
    pub pid: Pid,
    pub pidfd: BorrowedFd<'a>,
    /// Born in its cgroup (clone3 with CLONE_INTO_CGROUP).
    pub in_cgroup: bool,
}

/// One step of the setup phase.
pub trait ParentStep {
    /// What the step does, for errors ("moving the machine into its cgroup").
    fn name(&self) -> String;
    /// Act on the pending child. Descriptors returned are handed to the
    /// child with `Go`.
    fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>>;
    /// Undo what `run` did (best effort: it runs on failure paths and on
    /// exit, and must not fail the exit).
    fn undo(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
/// A failed step: its name; the cause follows in the error's chain (so
/// `{:#}` reads "STEP: CAUSE").
#[error("{step}")]
pub struct StepError {
    pub step: String,
    #[source]
    pub cause: anyhow::Error,
}

/// The steps of one boot, in order, and how many are done.
pub struct ParentSetup {
    steps: Vec<Box<dyn ParentStep>>,
    done: usize,
}

impl ParentSetup {
    pub fn new(steps: Vec<Box<dyn ParentStep>>) -> Self {
        ParentSetup { steps, done: 0 }
    }

    /// Run every step in order; on a failure, undo those done (in reverse)
    /// and return the failing step's error. Returns the descriptors for `Go`.
    pub fn run(&mut self, child: Child<'_>) -> Result<Vec<OwnedFd>, StepError> {
        let mut fds = Vec::new();
        while self.done < self.steps.len() {
            let step = &mut self.steps[self.done];
            match step.run(child) {
                Ok(more) => {
                    fds.extend(more);
                    self.done += 1;
                }
                Err(cause) => {
                    // The failing step's own partial work first (undo is
                    // safe on a step that did nothing), then the others.
                    step.undo();
                    let step = step.name();
                    self.undo_all();
                    return Err(StepError { step, cause });
                }
            }
        }
        Ok(fds)
    }

    /// Undo every step done, last first. Safe to call more than once.
    pub fn undo_all(&mut self) {
        while self.done > 0 {
            self.done -= 1;
            self.steps[self.done].undo();
        }
    }
}

impl Drop for ParentSetup {
    fn drop(&mut self) {
        self.undo_all();
    }
}

/// Move the child into the machine's cgroup, when clone3 could not place
/// it there at birth (kernels before 5.7). Nothing to undo: the cgroup goes
/// with the machine.
pub struct MoveToCgroup {
    pub cgroup: PathBuf,
}

impl ParentStep for MoveToCgroup {
    fn name(&self) -> String {
        format!("moving the machine into its cgroup {}", self.cgroup.display())
    }

    fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        if !child.in_cgroup {
            std::fs::write(self.cgroup.join("cgroup.procs"), child.pid.to_string())?;
        }
        Ok(vec![])
    }
}

/// Restrict the devices of a machine berth starts on its own to those it
/// creates (`devices`), on the cgroup above the payload (berth's scope),
/// before the machine's init makes or opens any node. Nothing to undo: the
/// program goes with the scope.
pub struct DevicePolicy {
    pub cgroup: PathBuf,
}

impl ParentStep for DevicePolicy {
    fn name(&self) -> String {
        // The cause names the cgroup.
        "restricting the machine's devices".to_string()
    }

    fn run(&mut self, _child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        crate::devices::restrict(&self.cgroup)?;
        Ok(vec![])
    }
}

/// Register the machine with systemd-machined, its leader already in the
/// unit's payload cgroup (berth runs as machine@NAME.service). Undone by
/// unregistering (best effort: machined also drops it with the unit).
pub struct RegisterMachine {
    pub bus: std::rc::Rc<crate::bus::SystemBus>,
    pub registration: crate::bus::Registration,
    /// The host ends of the machine's links (filled by the network step).
    pub links: crate::net::LinkIndexes,
    pub registered: bool,
}

impl ParentStep for RegisterMachine {
    fn name(&self) -> String {
        format!(
            "registering machine \"{}\" with systemd-machined",
            self.registration.name
        )
    }

    fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        self.registration.leader = child.pid.as_raw() as u32;
        self.registration.ifindices = self.links.borrow().clone();
        // After a reboot (the unit restarted) machined may still be
        // dropping the machine of the previous run: give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.bus.machine_exists(&self.registration.name)? && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.bus.register_machine(&self.registration)?;
        self.registered = true;
        Ok(vec![])
    }

    fn undo(&mut self) {
        if std::mem::take(&mut self.registered) {
            let _ = self.bus.unregister_machine(&self.registration.name);
        }
    }
}

/// Started from a shell on a systemd host: machined asks systemd for the
/// scope machine-NAME.scope in machine.slice (delegated, device policy
/// closed, the machine's limits) and moves the leader there; berth then
/// moves it one level down, into scope/payload, the root of its cgroup
/// namespace, so the limits on the scope stay out of its reach.
pub struct CreateMachine {
    pub bus: std::rc::Rc<crate::bus::SystemBus>,
    pub registration: crate::bus::Registration,
    pub properties: Vec<(&'static str, zbus::Variant<'static>)>,
    /// The host ends of the machine's links (filled by the network step).
    pub links: crate::net::LinkIndexes,
    /// The cgroup2 mount.
    pub mount: PathBuf,
    /// The scope, once made.
    pub scope: Option<PathBuf>,
}

impl ParentStep for CreateMachine {
    fn name(&self) -> String {
        format!("creating machine \"{}\" with systemd-machined", self.registration.name)
    }

    fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        self.registration.leader = child.pid.as_raw() as u32;
        self.registration.ifindices = self.links.borrow().clone();
        // The previous boot's machine (a reboot, or a killed berth) may
        // still be on its way out of machined.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.bus.machine_exists(&self.registration.name)? && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.bus.create_machine(&self.registration, self.properties.clone())?;
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid))?;
        let path = crate::cgroup::own_cgroup(&text)
            .ok_or_else(|| anyhow::anyhow!("the machine's leader has no cgroup2 path"))?;
        let scope = self.mount.join(path.trim_start_matches('/'));
        let payload = scope.join("payload");
        std::fs::create_dir(&payload).map_err(|e| anyhow::anyhow!("creating {}: {e}", payload.display()))?;
        std::fs::write(payload.join("cgroup.procs"), child.pid.to_string())
            .map_err(|e| anyhow::anyhow!("moving the machine into {}: {e}", payload.display()))?;
        crate::cgroup::enable_all_controllers(&scope)?;
        self.scope = Some(scope);
        Ok(vec![])
    }

    fn undo(&mut self) {
        // The scope goes when its last process has: wait for it, so the
        // name is free for the next boot.
        if let Some(scope) = self.scope.take() {
            let _ = std::fs::remove_dir(scope.join("payload"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while scope.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = self.bus.unregister_machine(&self.registration.name);
        }
    }
}

/// The machine's limits on the unit berth runs as (runtime properties, so
/// `systemctl show machine@NAME` shows them), above the payload cgroup.
pub struct UnitLimits {
    pub bus: std::rc::Rc<crate::bus::SystemBus>,
    pub unit: String,
    pub properties: Vec<(&'static str, zbus::Variant<'static>)>,
    /// Whether the machine's file sets any limit (else the properties
    /// only reset earlier ones, and a cgroup that is no systemd unit,
    /// as a test's stand-in, has none to reset).
    pub limited: bool,
}

impl ParentStep for UnitLimits {
    fn name(&self) -> String {
        format!("setting the limits of {}", self.unit)
    }

    fn run(&mut self, _child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        match self.bus.set_unit_properties(&self.unit, self.properties.clone()) {
            // Nothing to set, only earlier limits to reset: say so, boot on.
            Err(e) if !self.limited => {
                tracing::warn!(unit = %self.unit, "not resetting the limits of {}: {e}", self.unit);
                Ok(vec![])
            }
            r => r.map(|()| vec![]).map_err(Into::into),
        }
    }
}

/// The machine's limits written into berth's own cgroup above the payload
/// (hosts without systemd).
pub struct CgroupLimits {
    pub cgroup: PathBuf,
    pub files: Vec<(&'static str, String)>,
}

impl ParentStep for CgroupLimits {
    fn name(&self) -> String {
        format!("setting the limits of {}", self.cgroup.display())
    }

    fn run(&mut self, _child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        crate::cgroup::apply_limits(&self.cgroup, &self.files)?;
        Ok(vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::fd::AsFd;
    use std::rc::Rc;

    struct Recorder {
        name: &'static str,
        fail: bool,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl ParentStep for Recorder {
        fn name(&self) -> String {
            self.name.to_string()
        }
        fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
            self.log
                .borrow_mut()
                .push(format!("run {} on {}", self.name, child.pid));
            if self.fail {
                anyhow::bail!("no such bridge");
            }
            let (r, _w) = nix::unistd::pipe()?;
            Ok(vec![r])
        }
        fn undo(&mut self) {
            self.log.borrow_mut().push(format!("undo {}", self.name));
        }
    }

    fn steps(log: &Rc<RefCell<Vec<String>>>, plan: &[(&'static str, bool)]) -> ParentSetup {
        ParentSetup::new(
            plan.iter()
                .map(|(name, fail)| -> Box<dyn ParentStep> {
                    Box::new(Recorder {
                        name,
                        fail: *fail,
                        log: log.clone(),
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn steps_run_in_order_and_failure_undoes_in_reverse() {
        let (fake_pidfd, _w) = nix::unistd::pipe().unwrap();
        let child = Child {
            pid: Pid::from_raw(4242),
            pidfd: fake_pidfd.as_fd(),
            in_cgroup: true,
        };
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut setup = steps(&log, &[("cgroup", false), ("veth", false), ("bridge", true)]);
        let e = setup.run(child).unwrap_err();
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "bridge: no such bridge");
        assert_eq!(
            *log.borrow(),
            [
                "run cgroup on 4242",
                "run veth on 4242",
                "run bridge on 4242",
                "undo bridge",
                "undo veth",
                "undo cgroup"
            ]
        );
        // Success hands every step's descriptors on; exit undoes all once.
        log.borrow_mut().clear();
        let mut setup = steps(&log, &[("a", false), ("b", false)]);
        assert_eq!(setup.run(child).unwrap().len(), 2);
        setup.undo_all();
        setup.undo_all();
        drop(setup);
        assert_eq!(*log.borrow(), ["run a on 4242", "run b on 4242", "undo b", "undo a"]);
        // Dropped without an explicit undo (an early return): undone too.
        log.borrow_mut().clear();
        let mut setup = steps(&log, &[("a", false)]);
        setup.run(child).unwrap();
        drop(setup);
        assert_eq!(*log.borrow(), ["run a on 4242", "undo a"]);
    }
}
