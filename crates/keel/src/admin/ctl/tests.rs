//! `keel ctl`: argument parsing, and its commands against a server on a fake supervisor.

use super::*;
use crate::EXIT_INPUT;
use crate::admin::api::tests::{Server, server};
use crate::admin::model::VmState;
use std::sync::{Arc, Mutex};

/// `unwrap` for results whose error is a [`Failure`] (which has no `Debug`).
trait Must<T> {
    fn must(self) -> T;
}

impl<T> Must<T> for Result<T, Failure> {
    fn must(self) -> T {
        self.unwrap_or_else(|f| panic!("failed ({}): {}", f.status, f.message))
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn parsed(s: &str) -> Invocation {
    parse(args(s)).unwrap_or_else(|f| panic!("{s:?}: {}", f.message))
}

fn refused(s: &str) -> Failure {
    match parse(args(s)) {
        Ok(inv) => panic!("{s:?} parsed as {inv:?}"),
        Err(f) => f,
    }
}

#[test]
fn global_options_may_follow_the_command() {
    let inv = parsed("start web --socket /s --token t --json");

    assert_eq!(inv.action, Action::Start("web".into()));
    assert_eq!(inv.socket, Some(PathBuf::from("/s")));
    assert_eq!(inv.token.as_deref(), Some("t"));
    assert!(inv.json);
}

#[test]
fn create_takes_every_field() {
    let inv = parsed(
        "create --name d --kernel /k --initrd=/i --cmdline quiet --memory-mib 128 --vcpus 2 \
         --disk /a --disk /b --network lan --restart on-failure",
    );

    assert_eq!(
        inv.action,
        Action::Create(Box::new(CreateVm {
            name: "d".into(),
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "quiet".into(),
            memory_mib: 128,
            vcpus: 2,
            disks: vec!["/a".into(), "/b".into()],
            networks: vec!["lan".into()],
            restart: RestartPolicy::OnFailure,
        }))
    );
}

#[test]
fn create_without_memory_is_bad_input() {
    let f = refused("create --name d --kernel /k");

    assert_eq!(f.status, EXIT_INPUT);
    assert!(f.message.contains("--memory-mib"), "{}", f.message);
}

#[test]
fn a_bad_restart_policy_is_bad_input_naming_it() {
    let f = refused("create --name d --kernel /k --memory-mib 1 --restart sometimes");

    assert_eq!(f.status, EXIT_INPUT);
    assert!(f.message.contains("\"sometimes\""));
}

#[test]
fn shutdown_takes_a_deadline() {
    assert_eq!(
        parsed("shutdown web --deadline-ms 500").action,
        Action::Shutdown("web".into(), Some(500))
    );
}

#[test]
fn an_option_of_another_command_is_bad_input() {
    let f = refused("start web --deadline-ms 5");

    assert_eq!(f.status, EXIT_INPUT);
    assert!(f.message.contains("--deadline-ms"));
}

#[test]
fn an_unknown_option_is_bad_input() {
    assert_eq!(refused("list --frobnicate").status, EXIT_INPUT);
}

#[test]
fn a_vm_command_without_its_vm_is_bad_input() {
    let f = refused("start");

    assert_eq!(f.status, EXIT_INPUT);
    assert!(f.message.contains("keel ctl start VM"), "{}", f.message);
}

#[test]
fn an_unknown_command_is_bad_input() {
    assert_eq!(refused("reboot web").status, EXIT_INPUT);
}

#[test]
fn token_create_takes_rights_vms_and_pool() {
    let inv = parsed("token create ops --rights read,start --vms a,b --pool");

    assert_eq!(
        inv.action,
        Action::TokenCreate(Grant {
            name: "ops".into(),
            rights: vec![Right::Read, Right::Start],
            vms: vec!["a".into(), "b".into()],
            pool: true,
        })
    );
}

#[test]
fn token_create_with_an_unknown_right_is_bad_input() {
    let f = refused("token create ops --rights read,fly");

    assert_eq!(f.status, EXIT_INPUT);
    assert!(f.message.contains("\"fly\""));
}

#[test]
fn the_state_dir_gives_the_socket_and_the_admin_token() {
    let s = server("ctl-statedir");
    let inv = parsed(&format!("list --state-dir {}", s.dir.display()));

    let conn = inv.connection().must();

    assert_eq!(conn.socket, s.socket);
    assert_eq!(conn.token, s.admin);
}

#[test]
fn a_token_file_is_read_and_trimmed() {
    let s = server("ctl-tokenfile");
    let f = s.dir.join("t.token");
    std::fs::write(&f, "  secret\n").unwrap();
    let inv = parsed(&format!(
        "list --socket {} --token-file {}",
        s.socket.display(),
        f.display()
    ));

    assert_eq!(inv.connection().must().token, "secret");
}

fn conn(s: &Server) -> Connection {
    Connection {
        socket: s.socket.clone(),
        token: s.admin.clone(),
    }
}

fn output(c: &Connection, action: Action, json: bool) -> Result<String, Failure> {
    let mut out = Vec::new();
    execute(c, &action, json, &mut out).map(|code| {
        assert_eq!(code, 0);
        String::from_utf8(out).unwrap()
    })
}

#[test]
fn list_prints_a_table() {
    let s = server("ctl-list");

    let text = output(&conn(&s), Action::List, false).must();

    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("NAME  STATE    KIND    PID"), "{text}");
    assert!(lines[1].starts_with("a     created  static  -"), "{text}");
}

#[test]
fn list_with_json_prints_the_servers_json() {
    let s = server("ctl-json");

    let text = output(&conn(&s), Action::List, true).must();

    let vms: Vec<VmInfo> = serde_json::from_str(&text).unwrap();
    assert_eq!(vms.len(), 2);
}

#[test]
fn start_prints_the_new_state_and_pid() {
    let s = server("ctl-start");

    let text = output(&conn(&s), Action::Start("a".into()), false).must();

    assert_eq!(text, "vm \"a\": running (pid 4242)\n");
}

#[test]
fn shutdown_sends_the_deadline() {
    let s = server("ctl-shutdown");
    output(&conn(&s), Action::Start("a".into()), false).must();

    output(&conn(&s), Action::Shutdown("a".into(), Some(1500)), false).must();

    assert_eq!(
        *s.fake.last_deadline.lock().unwrap(),
        Some(Duration::from_millis(1500))
    );
}

#[test]
fn create_then_get_shows_a_dynamic_vm() {
    let s = server("ctl-create");
    let create = CreateVm {
        name: "d".into(),
        kernel: "/k".into(),
        initrd: None,
        cmdline: String::new(),
        memory_mib: 96,
        vcpus: 1,
        disks: vec![],
        networks: vec![],
        restart: RestartPolicy::Never,
    };
    output(&conn(&s), Action::Create(Box::new(create)), false).must();

    let text = output(&conn(&s), Action::Get("d".into()), false).must();

    assert!(text.contains("kind:      dynamic\n"), "{text}");
    assert!(text.contains("memory:    96 MiB\n"), "{text}");
}

#[test]
fn a_refused_request_fails_with_the_servers_message() {
    let s = server("ctl-refused");
    let t = s.token("ro", &["read"], &["a"], false);
    let c = Connection {
        token: t,
        ..conn(&s)
    };

    let f = output(&c, Action::Stop("a".into()), false).err().unwrap();

    assert_eq!(f.status, EXIT_FAILURE);
    assert_eq!(f.message, "token \"ro\" lacks right \"stop\" on VM \"a\"");
}

#[test]
fn a_conflict_fails_with_the_servers_message() {
    let s = server("ctl-conflict");

    let f = output(&conn(&s), Action::Pause("a".into()), false)
        .err()
        .unwrap();

    assert_eq!(f.status, EXIT_FAILURE);
    assert_eq!(f.message, "VM \"a\" is created: cannot pause");
}

#[test]
fn an_unreachable_daemon_fails_naming_the_socket() {
    let c = Connection {
        socket: PathBuf::from("/nonexistent/keel.sock"),
        token: "t".into(),
    };

    let f = output(&c, Action::List, false).err().unwrap();

    assert_eq!(f.status, EXIT_FAILURE);
    assert!(
        f.message.contains("/nonexistent/keel.sock"),
        "{}",
        f.message
    );
}

#[test]
fn token_create_prints_a_secret_that_works() {
    let s = server("ctl-token");
    let grant = Grant {
        name: "ops".into(),
        rights: vec![Right::Read],
        vms: vec!["a".into()],
        pool: false,
    };

    let text = output(&conn(&s), Action::TokenCreate(grant), false).must();

    let secret = text.trim();
    assert_eq!(secret.len(), 64);
    let c = Connection {
        token: secret.into(),
        ..conn(&s)
    };
    assert!(output(&c, Action::Get("a".into()), false).is_ok());
}

#[test]
fn token_list_prints_a_table_and_revoke_removes_the_token() {
    let s = server("ctl-tokens");
    s.token("ops", &["read", "start"], &["a", "b"], true);

    output(&conn(&s), Action::TokenRevoke("ops".into()), false).must();
    let text = output(&conn(&s), Action::TokenList, false).must();

    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "RIGHTS", "VMS", "POOL"],
            vec![
                "admin",
                "read,create,start,stop,pause,restart,delete,console,events,tokens",
                "*",
                "yes"
            ]
        ]
    );
    // The columns line up.
    assert_eq!(
        text.lines().next().unwrap().find("VMS"),
        text.lines().nth(1).unwrap().find('*')
    );
}

#[test]
fn events_prints_one_line_per_event_until_the_stream_ends() {
    let s = server("ctl-events");
    let t = s.token("ev", &["read", "events"], &["*"], false);
    let c = Connection {
        token: t,
        ..conn(&s)
    };
    let shown = Shared::default();
    let mut sink = shown.clone();
    let out = std::thread::spawn(move || execute(&c, &Action::Events, false, &mut sink));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.fake.subscribers() == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    s.fake.emit(Event::State {
        vm: "a".into(),
        from: VmState::Created,
        to: VmState::Running,
    });
    s.fake.emit(Event::Crashed {
        vm: "a".into(),
        exit: "killed by signal 9".into(),
    });
    while shown
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        < 2
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Revoking the token ends its stream.
    s.admin("DELETE", "/v1/tokens/ev", "");

    assert_eq!(out.join().unwrap().must(), 0);
    assert_eq!(
        String::from_utf8(shown.0.lock().unwrap().clone()).unwrap(),
        "vm \"a\": created -> running\nvm \"a\": crashed (killed by signal 9)\n"
    );
}

/// Output shared with the test while `attach` writes it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Types `first`, waits until `shown` has `wait_for`, then types `then`.
struct Typist {
    first: Option<Vec<u8>>,
    shown: Shared,
    wait_for: Vec<u8>,
    then: Option<Vec<u8>>,
}

impl Read for Typist {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = if let Some(f) = self.first.take() {
            f
        } else if let Some(t) = self.then.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !self
                .shown
                .0
                .lock()
                .unwrap()
                .windows(self.wait_for.len())
                .any(|w| w == self.wait_for.as_slice())
            {
                if std::time::Instant::now() > deadline {
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            t
        } else {
            return Ok(0);
        };
        buf[..chunk.len()].copy_from_slice(&chunk);
        Ok(chunk.len())
    }
}

#[test]
fn console_echoes_typed_bytes_and_ctrl_a_x_detaches() {
    let s = server("ctl-console");
    let c = conn(&s);
    let (stream, early) = c.open("/v1/vms/a/console", 101).must();
    let shown = Shared::default();
    let typist = Typist {
        // Ctrl-A Ctrl-A sends one Ctrl-A.
        first: Some(b"hi\x01\x01".to_vec()),
        shown: shown.clone(),
        wait_for: b"hi\x01".to_vec(),
        then: Some(b"\x01x".to_vec()),
    };

    let detached = attach(stream, &early, typist, &mut shown.clone()).unwrap();

    assert!(detached);
    assert_eq!(shown.0.lock().unwrap().as_slice(), b"hi\x01");
}

#[test]
fn console_of_an_unknown_vm_fails_with_the_servers_message() {
    let s = server("ctl-console-404");

    let Err(f) = conn(&s).open("/v1/vms/zz/console", 101) else {
        panic!("the console of an unknown VM opened");
    };

    assert_eq!(f.status, EXIT_FAILURE);
    assert_eq!(f.message, "no VM named \"zz\"");
}

#[test]
fn get_shows_a_vms_networks_with_their_macs() {
    use crate::admin::model::Supervisor;
    let mut v = crate::admin::fake::FakeSupervisor::new(&["web"])
        .get("web")
        .unwrap();
    v.nics = vec![crate::admin::model::NicInfo {
        network: "lan".into(),
        mac: "06:4b:50:1d:00:00".into(),
    }];

    let text = super::vm_details(&v);

    assert!(
        text.contains("nets:      lan 06:4b:50:1d:00:00\n"),
        "{text}"
    );
}
