//! An in-memory [`Supervisor`] for the API's and `keel ctl`'s tests: VMs are records that
//! move between states as the real supervisor's would, consoles echo what they are sent, and
//! every change is an event.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use super::model::{AdminError, CreateVm, Event, RestartPolicy, Supervisor, VmInfo, VmState};

/// The fake.
#[derive(Debug, Default)]
pub struct FakeSupervisor {
    vms: Mutex<Vec<VmInfo>>,
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// The last shutdown deadline asked for.
    pub last_deadline: Mutex<Option<Duration>>,
}

fn info(name: &str, is_static: bool) -> VmInfo {
    VmInfo {
        name: name.into(),
        state: VmState::Created,
        r#static: is_static,
        pid: None,
        memory_mib: 64,
        vcpus: 1,
        restart: RestartPolicy::Never,
        restarts: 0,
        last_exit: None,
        nics: Vec::new(),
    }
}

impl FakeSupervisor {
    /// Static VMs `names`, all created.
    pub fn new(names: &[&str]) -> FakeSupervisor {
        let f = FakeSupervisor::default();
        *f.vms.lock().unwrap() = names.iter().map(|n| info(n, true)).collect();
        f
    }

    /// Send `event` to every subscriber still listening.
    pub fn emit(&self, event: Event) {
        self.subscribers
            .lock()
            .unwrap()
            .retain(|s| s.send(event.clone()).is_ok());
    }

    /// How many subscribers are listening.
    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().unwrap().len()
    }

    /// Move `vm` to `to` if it is in one of `from`; emits the state event.
    fn transition(
        &self,
        vm: &str,
        from: &[VmState],
        to: VmState,
        action: &'static str,
    ) -> Result<VmInfo, AdminError> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .iter_mut()
            .find(|v| v.name == vm)
            .ok_or_else(|| AdminError::NotFound(vm.into()))?;
        if !from.contains(&v.state) {
            return Err(AdminError::Conflict {
                vm: vm.into(),
                state: v.state,
                action,
            });
        }
        let was = v.state;
        v.state = to;
        v.pid = matches!(
            to,
            VmState::Running | VmState::Paused | VmState::ShuttingDown
        )
        .then_some(4242);
        let out = v.clone();
        drop(vms);
        self.emit(Event::State {
            vm: vm.into(),
            from: was,
            to,
        });
        Ok(out)
    }
}

const STARTABLE: &[VmState] = &[VmState::Created, VmState::Stopped, VmState::Crashed];
const LIVE: &[VmState] = &[VmState::Running, VmState::Paused, VmState::ShuttingDown];

impl Supervisor for FakeSupervisor {
    fn list(&self) -> Vec<VmInfo> {
        self.vms.lock().unwrap().clone()
    }

    fn get(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.vms
            .lock()
            .unwrap()
            .iter()
            .find(|v| v.name == vm)
            .cloned()
            .ok_or_else(|| AdminError::NotFound(vm.into()))
    }

    fn create(&self, req: CreateVm) -> Result<VmInfo, AdminError> {
        let mut vms = self.vms.lock().unwrap();
        if vms.iter().any(|v| v.name == req.name) {
            return Err(AdminError::Exists(req.name));
        }
        if req.memory_mib > 1024 {
            return Err(AdminError::Limit {
                limit: "limits.memory_mib",
                detail: format!("{} MiB asked, 1024 MiB left", req.memory_mib),
            });
        }
        let mut v = info(&req.name, false);
        v.memory_mib = req.memory_mib;
        v.vcpus = req.vcpus;
        v.restart = req.restart;
        vms.push(v.clone());
        drop(vms);
        self.emit(Event::Created { vm: req.name });
        Ok(v)
    }

    fn start(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.transition(vm, STARTABLE, VmState::Running, "start")
    }

    fn pause(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.transition(vm, &[VmState::Running], VmState::Paused, "pause")
    }

    fn resume(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.transition(vm, &[VmState::Paused], VmState::Running, "resume")
    }

    fn shutdown(&self, vm: &str, deadline: Duration) -> Result<VmInfo, AdminError> {
        *self.last_deadline.lock().unwrap() = Some(deadline);
        self.transition(vm, &[VmState::Running], VmState::ShuttingDown, "shut down")
    }

    fn stop(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.transition(vm, LIVE, VmState::Stopped, "stop")
    }

    fn restart(&self, vm: &str) -> Result<VmInfo, AdminError> {
        let all = [STARTABLE, LIVE].concat();
        self.transition(vm, &all, VmState::Running, "restart")
    }

    fn delete(&self, vm: &str) -> Result<(), AdminError> {
        let mut vms = self.vms.lock().unwrap();
        let i = vms
            .iter()
            .position(|v| v.name == vm)
            .ok_or_else(|| AdminError::NotFound(vm.into()))?;
        if vms[i].r#static {
            return Err(AdminError::Invalid(format!(
                "VM \"{vm}\" is declared in the description: it cannot be deleted"
            )));
        }
        vms.remove(i);
        drop(vms);
        self.emit(Event::Deleted { vm: vm.into() });
        Ok(())
    }

    fn console(&self, vm: &str) -> Result<UnixStream, AdminError> {
        self.get(vm)?;
        let (ours, mut theirs) =
            UnixStream::pair().map_err(|e| AdminError::Internal(e.to_string()))?;
        // The "guest" echoes every byte back.
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = theirs.read(&mut buf) {
                if n == 0 || theirs.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Ok(ours)
    }

    fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        self.subscribers.lock().unwrap().push(tx);
        rx
    }
}
