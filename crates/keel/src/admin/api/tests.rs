//! The API against an in-memory supervisor, over a real Unix socket.

use super::*;
use crate::admin::fake::FakeSupervisor;
use crate::admin::http::Response;
use crate::admin::model::{VmInfo, VmState};
use crate::admin::tokens::ADMIN_TOKEN_FILE;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

/// A server on a fake supervisor in its own state directory.
pub(crate) struct Server {
    pub(crate) dir: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) admin: String,
    pub(crate) fake: Arc<FakeSupervisor>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The serving thread stays blocked in accept; the directory goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start a server with static VMs `vms` and `limits`.
pub(crate) fn server_with(tag: &str, vms: &[&str], limits: Limits) -> Server {
    let dir = std::env::temp_dir().join(format!("keel-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("keel.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fake = Arc::new(FakeSupervisor::new(vms));
    let sup: Arc<dyn Supervisor> = fake.clone();
    let state = dir.clone();
    std::thread::spawn(move || serve_with(listener, &state, sup, limits));
    let token_file = dir.join(ADMIN_TOKEN_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !token_file.exists() {
        assert!(Instant::now() < deadline, "no admin.token after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    Server {
        dir,
        socket,
        admin,
        fake,
    }
}

/// A server with static VMs "a" and "b".
pub(crate) fn server(tag: &str) -> Server {
    server_with(tag, &["a", "b"], Limits::default())
}

impl Server {
    pub(crate) fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: &str,
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http::request(
            &self.socket,
            method,
            path,
            &headers,
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    pub(crate) fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        self.call(Some(&self.admin.clone()), method, path, body)
    }

    /// A new token (created by the admin token).
    pub(crate) fn token(&self, name: &str, rights: &[&str], vms: &[&str], pool: bool) -> String {
        let body = serde_json::json!({ "name": name, "rights": rights, "vms": vms, "pool": pool });
        let r = self.admin("POST", "/v1/tokens", &body.to_string());
        assert_eq!(r.status, 201, "{}", r.error_message());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

fn vm(r: &Response) -> VmInfo {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

fn names(r: &Response) -> Vec<String> {
    let vms: Vec<VmInfo> = serde_json::from_slice(&r.body).unwrap();
    vms.into_iter().map(|v| v.name).collect()
}

const CREATE: &str = r#"{"name": "d", "kernel": "/k", "memory_mib": 64}"#;

#[test]
fn version_answers_a_token_without_rights() {
    let s = server("version");
    let t = s.token("none", &[], &[], false);

    let r = s.call(Some(&t), "GET", "/v1/version", "");

    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn list_shows_every_vm_to_the_admin() {
    let s = server("list");

    let r = s.admin("GET", "/v1/vms", "");

    assert_eq!(r.status, 200);
    assert_eq!(names(&r), ["a", "b"]);
}

#[test]
fn list_shows_only_the_vms_a_token_may_read() {
    let s = server("list-scope");
    let t = s.token("t", &["read"], &["b"], false);

    let r = s.call(Some(&t), "GET", "/v1/vms", "");

    assert_eq!(names(&r), ["b"]);
}

#[test]
fn list_without_the_read_right_is_refused_naming_it() {
    let s = server("list-noread");
    let t = s.token("t", &["start"], &["*"], false);

    let r = s.call(Some(&t), "GET", "/v1/vms", "");

    assert_eq!(r.status, 403);
    assert_eq!(r.error_message(), "token \"t\" lacks right \"read\"");
}

#[test]
fn get_returns_the_vm() {
    let s = server("get");

    let r = s.admin("GET", "/v1/vms/a", "");

    assert_eq!(r.status, 200);
    assert_eq!(vm(&r).name, "a");
    assert!(vm(&r).r#static);
}

#[test]
fn get_of_an_unknown_vm_is_404_naming_it() {
    let s = server("get-404");

    let r = s.admin("GET", "/v1/vms/zz", "");

    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("\"zz\""));
}

#[test]
fn create_answers_201_with_a_dynamic_vm() {
    let s = server("create");

    let r = s.admin("POST", "/v1/vms", CREATE);

    assert_eq!(r.status, 201, "{}", r.error_message());
    assert_eq!(vm(&r).name, "d");
    assert!(!vm(&r).r#static);
}

#[test]
fn create_of_an_existing_name_is_409() {
    let s = server("create-409");

    let r = s.admin(
        "POST",
        "/v1/vms",
        r#"{"name": "a", "kernel": "/k", "memory_mib": 64}"#,
    );

    assert_eq!(r.status, 409);
}

#[test]
fn create_beyond_a_limit_is_403_naming_the_limit() {
    let s = server("create-limit");

    let r = s.admin(
        "POST",
        "/v1/vms",
        r#"{"name": "d", "kernel": "/k", "memory_mib": 4096}"#,
    );

    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("limits.memory_mib"));
}

#[test]
fn create_with_an_unknown_field_is_400() {
    let s = server("create-field");

    let r = s.admin(
        "POST",
        "/v1/vms",
        r#"{"name": "d", "kernel": "/k", "memory_mib": 64, "gpu": true}"#,
    );

    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("gpu"), "{}", r.error_message());
}

#[test]
fn create_without_a_body_is_400() {
    let s = server("create-nobody");

    let r = s.admin("POST", "/v1/vms", "");

    assert_eq!(r.status, 400);
}

#[test]
fn create_without_the_pool_scope_is_refused() {
    let s = server("create-nopool");
    let t = s.token("t", &["create"], &["*"], false);

    let r = s.call(Some(&t), "POST", "/v1/vms", CREATE);

    assert_eq!(r.status, 403);
    assert_eq!(
        r.error_message(),
        "token \"t\" lacks right \"create\" on the pool"
    );
}

#[test]
fn delete_of_a_dynamic_vm_answers_204() {
    let s = server("delete");
    s.admin("POST", "/v1/vms", CREATE);

    let r = s.admin("DELETE", "/v1/vms/d", "");

    assert_eq!(r.status, 204);
    assert_eq!(s.admin("GET", "/v1/vms/d", "").status, 404);
}

#[test]
fn delete_of_a_static_vm_is_400() {
    let s = server("delete-static");

    let r = s.admin("DELETE", "/v1/vms/a", "");

    assert_eq!(r.status, 400);
}

#[test]
fn start_runs_a_created_vm() {
    let s = server("start");

    let r = s.admin("PUT", "/v1/vms/a/start", "");

    assert_eq!(r.status, 200);
    assert_eq!(vm(&r).state, VmState::Running);
}

#[test]
fn pause_pauses_a_running_vm() {
    let s = server("pause");
    s.admin("PUT", "/v1/vms/a/start", "");

    let r = s.admin("PUT", "/v1/vms/a/pause", "");

    assert_eq!(vm(&r).state, VmState::Paused);
}

#[test]
fn pause_of_a_created_vm_is_409() {
    let s = server("pause-409");

    let r = s.admin("PUT", "/v1/vms/a/pause", "");

    assert_eq!(r.status, 409);
    assert_eq!(r.error_message(), "VM \"a\" is created: cannot pause");
}

#[test]
fn resume_runs_a_paused_vm() {
    let s = server("resume");
    s.admin("PUT", "/v1/vms/a/start", "");
    s.admin("PUT", "/v1/vms/a/pause", "");

    let r = s.admin("PUT", "/v1/vms/a/resume", "");

    assert_eq!(vm(&r).state, VmState::Running);
}

#[test]
fn shutdown_passes_the_deadline_asked_for() {
    let s = server("shutdown");
    s.admin("PUT", "/v1/vms/a/start", "");

    let r = s.admin("PUT", "/v1/vms/a/shutdown", r#"{"deadline_ms": 250}"#);

    assert_eq!(vm(&r).state, VmState::ShuttingDown);
    assert_eq!(
        *s.fake.last_deadline.lock().unwrap(),
        Some(Duration::from_millis(250))
    );
}

#[test]
fn shutdown_without_a_body_gives_ten_seconds() {
    let s = server("shutdown-default");
    s.admin("PUT", "/v1/vms/a/start", "");

    let r = s.admin("PUT", "/v1/vms/a/shutdown", "");

    assert_eq!(r.status, 200);
    assert_eq!(
        *s.fake.last_deadline.lock().unwrap(),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn shutdown_beyond_an_hour_is_400() {
    let s = server("shutdown-long");
    s.admin("PUT", "/v1/vms/a/start", "");

    let r = s.admin("PUT", "/v1/vms/a/shutdown", r#"{"deadline_ms": 3600001}"#);

    assert_eq!(r.status, 400);
}

#[test]
fn stop_stops_a_running_vm() {
    let s = server("stop");
    s.admin("PUT", "/v1/vms/a/start", "");

    let r = s.admin("PUT", "/v1/vms/a/stop", "");

    assert_eq!(vm(&r).state, VmState::Stopped);
}

#[test]
fn restart_runs_a_stopped_vm() {
    let s = server("restart");

    let r = s.admin("PUT", "/v1/vms/a/restart", "");

    assert_eq!(r.status, 200);
    assert_eq!(vm(&r).state, VmState::Running);
}

#[test]
fn a_request_without_a_token_is_401() {
    let s = server("401-none");

    let r = s.call(None, "GET", "/v1/vms", "");

    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn a_request_with_a_wrong_token_is_401() {
    let s = server("401-wrong");

    let r = s.call(Some(&"0".repeat(64)), "GET", "/v1/vms", "");

    assert_eq!(r.status, 401);
    assert_eq!(r.error_message(), "unknown or revoked token");
}

#[test]
fn a_basic_authorization_is_401() {
    let s = server("401-basic");
    let auth = format!("Basic {}", s.admin);

    let r = http::request(
        &s.socket,
        "GET",
        "/v1/vms",
        &[("Authorization", &auth)],
        &[],
        Duration::from_secs(5),
    )
    .unwrap();

    assert_eq!(r.status, 401);
}

#[test]
fn a_revoked_token_is_401_on_its_next_request() {
    let s = server("401-revoked");
    let t = s.token("t", &["read"], &["*"], false);
    assert_eq!(s.call(Some(&t), "GET", "/v1/vms", "").status, 200);

    let revoke = s.admin("DELETE", "/v1/tokens/t", "");

    assert_eq!(revoke.status, 204);
    assert_eq!(s.call(Some(&t), "GET", "/v1/vms", "").status, 401);
}

#[test]
fn a_missing_right_is_403_naming_token_right_and_vm() {
    let s = server("403");
    let t = s.token("ops", &["read"], &["a"], false);

    let r = s.call(Some(&t), "PUT", "/v1/vms/a/start", "");

    assert_eq!(r.status, 403);
    assert_eq!(
        r.error_message(),
        "token \"ops\" lacks right \"start\" on VM \"a\""
    );
}

#[test]
fn a_token_for_one_vm_cannot_touch_another() {
    let s = server("scope");
    let t = s.token("t", &["read", "start"], &["a"], false);

    let other = s.call(Some(&t), "PUT", "/v1/vms/b/start", "");
    let own = s.call(Some(&t), "PUT", "/v1/vms/a/start", "");

    assert_eq!(other.status, 403);
    assert_eq!(
        other.error_message(),
        "token \"t\" lacks right \"start\" on VM \"b\""
    );
    assert_eq!(own.status, 200);
}

#[test]
fn a_token_cannot_learn_whether_a_vm_outside_its_scope_exists() {
    let s = server("scope-404");
    let t = s.token("t", &["read"], &["a"], false);

    let r = s.call(Some(&t), "GET", "/v1/vms/zz", "");

    assert_eq!(r.status, 403);
}

#[test]
fn pool_rights_apply_to_dynamic_vms() {
    let s = server("pool");
    let t = s.token("p", &["create", "start", "read"], &[], true);
    assert_eq!(s.call(Some(&t), "POST", "/v1/vms", CREATE).status, 201);

    let r = s.call(Some(&t), "PUT", "/v1/vms/d/start", "");

    assert_eq!(r.status, 200);
    assert_eq!(names(&s.call(Some(&t), "GET", "/v1/vms", "")), ["d"]);
}

#[test]
fn pool_rights_do_not_apply_to_static_vms() {
    let s = server("pool-static");
    let t = s.token("p", &["start"], &[], true);

    let r = s.call(Some(&t), "PUT", "/v1/vms/a/start", "");

    assert_eq!(r.status, 403);
    assert_eq!(
        r.error_message(),
        "token \"p\" lacks right \"start\" on VM \"a\""
    );
}

#[test]
fn token_create_answers_201_with_a_working_secret() {
    let s = server("tok-create");

    let r = s.admin(
        "POST",
        "/v1/tokens",
        r#"{"name": "t", "rights": ["read"], "vms": ["a"]}"#,
    );

    assert_eq!(r.status, 201);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["name"], "t");
    let secret = v["token"].as_str().unwrap();
    assert_eq!(secret.len(), 64);
    assert_eq!(s.call(Some(secret), "GET", "/v1/vms/a", "").status, 200);
}

#[test]
fn token_list_shows_grants_and_no_secrets() {
    let s = server("tok-list");
    let secret = s.token("t", &["read", "start"], &["a"], true);

    let r = s.admin("GET", "/v1/tokens", "");

    assert_eq!(r.status, 200);
    let grants: Vec<Grant> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0], Grant::admin("admin"));
    assert_eq!(
        grants[1],
        Grant {
            name: "t".into(),
            rights: vec![Right::Read, Right::Start],
            vms: vec!["a".into()],
            pool: true
        }
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains(&secret) && !text.contains(&s.admin));
    assert!(!text.contains("sha256"));
}

#[test]
fn token_create_with_an_unknown_right_is_400() {
    let s = server("tok-badright");

    let r = s.admin(
        "POST",
        "/v1/tokens",
        r#"{"name": "t", "rights": ["fly"], "vms": []}"#,
    );

    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("fly"));
}

#[test]
fn a_token_cannot_create_a_token_with_more_rights_than_its_own() {
    let s = server("tok-escalate");
    let t = s.token("deleg", &["tokens", "read"], &["a"], false);

    let r = s.call(
        Some(&t),
        "POST",
        "/v1/tokens",
        r#"{"name": "x", "rights": ["start"], "vms": ["a"]}"#,
    );

    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("\"start\""));
}

#[test]
fn revoking_an_unknown_token_is_404() {
    let s = server("tok-404");

    let r = s.admin("DELETE", "/v1/tokens/nobody", "");

    assert_eq!(r.status, 404);
}

#[test]
fn token_routes_need_the_tokens_right() {
    let s = server("tok-right");
    let t = s.token("t", &["read"], &["*"], true);

    let r = s.call(Some(&t), "GET", "/v1/tokens", "");

    assert_eq!(r.status, 403);
    assert_eq!(r.error_message(), "token \"t\" lacks right \"tokens\"");
}

/// Open the event stream with `token`; returns once the supervisor has the subscriber.
fn open_events(
    s: &Server,
    token: &str,
) -> io::BufReader<std::io::Chain<io::Cursor<Vec<u8>>, UnixStream>> {
    let before = s.fake.subscribers();
    let auth = format!("Bearer {token}");
    let (r, stream, rest) = http::open(
        &s.socket,
        "GET",
        "/v1/events",
        &[("Authorization", &auth)],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("content-length"), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.fake.subscribers() == before {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    io::BufReader::new(io::Cursor::new(rest).chain(stream))
}

fn state(vm: &str, from: VmState, to: VmState) -> Event {
    Event::State {
        vm: vm.into(),
        from,
        to,
    }
}

#[test]
fn the_event_stream_delivers_events_in_order() {
    let s = server("events");
    let mut lines = open_events(&s, &s.admin.clone());
    let sent = [
        state("a", VmState::Created, VmState::Running),
        Event::Crashed {
            vm: "a".into(),
            exit: "exit 1".into(),
        },
        Event::Restarted {
            vm: "a".into(),
            restarts: 1,
        },
        state("b", VmState::Created, VmState::Running),
    ];

    for e in &sent {
        s.fake.emit(e.clone());
    }

    let got: Vec<Event> = (0..sent.len())
        .map(|_| {
            let mut l = String::new();
            lines.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap()
        })
        .collect();
    assert_eq!(got, sent);
}

#[test]
fn the_event_stream_shows_only_vms_the_token_may_read() {
    let s = server("events-scope");
    let t = s.token("t", &["read", "events"], &["b"], false);
    let mut lines = open_events(&s, &t);

    s.fake.emit(state("a", VmState::Created, VmState::Running));
    s.fake.emit(Event::Created { vm: "d".into() });
    s.fake.emit(state("b", VmState::Created, VmState::Running));

    let mut l = String::new();
    lines.read_line(&mut l).unwrap();
    let first: Event = serde_json::from_str(&l).unwrap();
    assert_eq!(first, state("b", VmState::Created, VmState::Running));
}

#[test]
fn the_event_stream_shows_the_pool_to_a_pool_token() {
    let s = server("events-pool");
    let t = s.token("t", &["read", "events"], &[], true);
    let mut lines = open_events(&s, &t);

    s.fake.emit(state("a", VmState::Created, VmState::Running));
    s.fake.emit(Event::Created { vm: "d".into() });

    let mut l = String::new();
    lines.read_line(&mut l).unwrap();
    assert_eq!(
        serde_json::from_str::<Event>(&l).unwrap(),
        Event::Created { vm: "d".into() }
    );
}

#[test]
fn the_event_stream_ends_when_its_token_is_revoked() {
    let s = server("events-revoke");
    let t = s.token("t", &["read", "events"], &["*"], false);
    let mut lines = open_events(&s, &t);

    s.admin("DELETE", "/v1/tokens/t", "");

    let mut rest = String::new();
    let n = lines.read_to_string(&mut rest).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn the_event_stream_drops_its_subscription_when_the_client_leaves() {
    let s = server("events-leave");
    let lines = open_events(&s, &s.admin.clone());

    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The server notices at its next poll or event.
    while s.fake.subscribers() > 0 && Instant::now() < deadline {
        s.fake.emit(state("a", VmState::Created, VmState::Running));
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(s.fake.subscribers(), 0);
}

#[test]
fn the_console_upgrade_echoes_bytes_both_ways() {
    let s = server("console");
    let auth = format!("Bearer {}", s.admin);
    let (r, mut stream, rest) = http::open(
        &s.socket,
        "GET",
        "/v1/vms/a/console",
        &[("Authorization", &auth), ("Upgrade", CONSOLE_PROTOCOL)],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some(CONSOLE_PROTOCOL));
    assert!(rest.is_empty());

    stream.write_all(b"ping\n").unwrap();
    let mut got = [0u8; 5];
    stream.read_exact(&mut got).unwrap();

    assert_eq!(&got, b"ping\n");
}

#[test]
fn the_console_needs_the_console_right() {
    let s = server("console-403");
    let t = s.token("t", &["read"], &["a"], false);

    let r = s.call(Some(&t), "GET", "/v1/vms/a/console", "");

    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("\"console\""));
}

#[test]
fn an_unknown_path_is_404() {
    let s = server("404");

    let r = s.admin("GET", "/v1/nothing", "");

    assert_eq!(r.status, 404);
}

#[test]
fn a_wrong_method_is_405_with_allow() {
    let s = server("405");

    let r = s.admin("POST", "/v1/vms/a/start", "");

    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("PUT"));
}

#[test]
fn a_trailing_slash_is_not_a_route() {
    let s = server("slash");

    assert_eq!(s.admin("GET", "/v1/vms/", "").status, 404);
}

#[test]
fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let s = server("malformed");

    let out = s.raw(b"GARBAGE\r\n\r\n");

    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("{\"error\":"), "{out}");
    assert_eq!(s.admin("GET", "/v1/version", "").status, 200);
}

#[test]
fn a_chunked_request_is_400() {
    let s = server("chunked");

    let out = s
        .raw(b"POST /v1/vms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");

    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
}

#[test]
fn an_oversized_head_is_413() {
    let s = server("big-head");
    let mut req = b"GET /v1/vms HTTP/1.1\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 20 << 10));
    req.extend_from_slice(b"\r\n\r\n");

    let out = s.raw(&req);

    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
}

#[test]
fn an_oversized_body_is_413() {
    let s = server("big-body");

    let out = s.raw(b"POST /v1/vms HTTP/1.1\r\nContent-Length: 70000\r\n\r\n");

    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
}

#[test]
fn a_slow_request_is_408() {
    let limits = Limits {
        read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = server_with("slow", &["a"], limits);
    let mut c = UnixStream::connect(&s.socket).unwrap();
    c.write_all(b"GET /v1/vms HTTP/1.1\r\n").unwrap();

    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();

    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
}

#[test]
fn connections_over_the_cap_get_503() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let s = server_with("cap", &["a"], limits);
    // Holds the only slot: sends nothing.
    let _idle = UnixStream::connect(&s.socket).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let r = s.admin("GET", "/v1/version", "");

    assert_eq!(r.status, 503);
}

#[test]
fn the_socket_is_mode_0600() {
    let s = server("mode");
    // serve chmods before accepting: one answered request proves it ran.
    s.admin("GET", "/v1/version", "");

    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;

    assert_eq!(mode, 0o600);
}

#[test]
fn every_supervisor_error_maps_to_its_status() {
    let cases = [
        (AdminError::NotFound("a".into()), 404),
        (AdminError::Exists("a".into()), 409),
        (
            AdminError::Conflict {
                vm: "a".into(),
                state: VmState::Running,
                action: "start",
            },
            409,
        ),
        (
            AdminError::Limit {
                limit: "limits.max_vms",
                detail: String::new(),
            },
            403,
        ),
        (AdminError::Invalid(String::new()), 400),
        (AdminError::Internal(String::new()), 500),
    ];

    for (e, status) in cases {
        assert_eq!(admin_status(&e), status, "{e:?}");
    }
}

// The contract with docs/api.yaml.

fn spec_routes() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let paths = docs[0]["paths"].as_hash().expect("docs/api.yaml has paths");
    let mut out = Vec::new();
    for (p, item) in paths {
        let p = p.as_str().unwrap();
        for (m, _) in item.as_hash().unwrap() {
            let m = m.as_str().unwrap();
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&m) {
                out.push((m.to_uppercase(), p.to_string()));
            }
        }
    }
    out.sort();
    out
}

fn table_routes() -> Vec<(String, String)> {
    let mut out: Vec<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_route_of_the_table_is_in_the_spec() {
    let spec = spec_routes();

    let missing: Vec<_> = table_routes()
        .into_iter()
        .filter(|r| !spec.contains(r))
        .collect();

    assert!(missing.is_empty(), "not in docs/api.yaml: {missing:?}");
}

#[test]
fn every_route_of_the_spec_is_in_the_table() {
    let table = table_routes();

    let extra: Vec<_> = spec_routes()
        .into_iter()
        .filter(|r| !table.contains(r))
        .collect();

    assert!(extra.is_empty(), "not served: {extra:?}");
}

#[test]
fn the_spec_declares_bearer_security_and_the_schemas() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];

    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"].as_str(),
        Some("bearer")
    );
    for schema in [
        "VmInfo",
        "CreateVm",
        "Event",
        "Error",
        "Token",
        "NewToken",
        "TokenSecret",
    ] {
        assert!(
            !doc["components"]["schemas"][schema].is_badvalue(),
            "no schema {schema}"
        );
    }
}

#[test]
fn every_route_of_the_table_is_answered() {
    let s = server("answered");
    s.token("victim", &[], &[], false);
    let auth = format!("Bearer {}", s.admin);
    let mut unanswered = Vec::new();

    for r in ROUTES {
        let path = r.path.replace("{vm}", "a").replace("{name}", "victim");
        let body = match (r.method, r.path) {
            ("POST", "/v1/vms") => CREATE.to_string(),
            ("POST", "/v1/tokens") => r#"{"name": "n", "rights": [], "vms": []}"#.to_string(),
            _ => String::new(),
        };
        let status = match r.op {
            // Streams: the head is the answer.
            Op::Console | Op::Events => {
                http::open(
                    &s.socket,
                    r.method,
                    &path,
                    &[("Authorization", &auth)],
                    &[],
                    Duration::from_secs(10),
                )
                .unwrap()
                .0
                .status
            }
            _ => s.admin(r.method, &path, &body).status,
        };
        if status == 404 || status == 405 {
            unanswered.push(format!("{} {} -> {status}", r.method, r.path));
        }
    }

    assert!(unanswered.is_empty(), "{unanswered:?}");
}
