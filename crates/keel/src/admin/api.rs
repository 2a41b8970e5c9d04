//! The REST API over a Unix socket (docs/api.yaml, docs/admin.md "API and tokens").
//!
//! Every request carries `Authorization: Bearer <token>`; the route table [`ROUTES`] says
//! which right each route needs; the VM routes check it against the token's scope (named
//! VMs, `*`, the pool of dynamic VMs). The API only calls the [`Supervisor`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::http::{self, Limits, Request};
use super::model::{AdminError, CreateVm, Event, Supervisor};
use super::tokens::{Grant, Right, TokenError, TokenStore};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /v1/version`
    Version,
    /// `GET /v1/vms`
    ListVms,
    /// `POST /v1/vms`
    CreateVm,
    /// `GET /v1/vms/{vm}`
    GetVm,
    /// `DELETE /v1/vms/{vm}`
    DeleteVm,
    /// `PUT /v1/vms/{vm}/start`
    Start,
    /// `PUT /v1/vms/{vm}/pause`
    Pause,
    /// `PUT /v1/vms/{vm}/resume`
    Resume,
    /// `PUT /v1/vms/{vm}/shutdown`
    Shutdown,
    /// `PUT /v1/vms/{vm}/stop`
    Stop,
    /// `PUT /v1/vms/{vm}/restart`
    Restart,
    /// `GET /v1/vms/{vm}/console`
    Console,
    /// `GET /v1/events`
    Events,
    /// `GET /v1/tokens`
    ListTokens,
    /// `POST /v1/tokens`
    CreateToken,
    /// `DELETE /v1/tokens/{name}`
    RevokeToken,
}

/// One route: method, path pattern (`{vm}`, `{name}` match one segment), the right it
/// needs (`None`: any valid token) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path pattern, as in docs/api.yaml.
    pub path: &'static str,
    /// The right it needs.
    pub right: Option<Right>,
    /// What it does.
    pub op: Op,
}

const fn route(method: &'static str, path: &'static str, right: Option<Right>, op: Op) -> Route {
    Route {
        method,
        path,
        right,
        op,
    }
}

/// Every route the API answers.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/version", None, Op::Version),
    route("GET", "/v1/vms", Some(Right::Read), Op::ListVms),
    route("POST", "/v1/vms", Some(Right::Create), Op::CreateVm),
    route("GET", "/v1/vms/{vm}", Some(Right::Read), Op::GetVm),
    route("DELETE", "/v1/vms/{vm}", Some(Right::Delete), Op::DeleteVm),
    route("PUT", "/v1/vms/{vm}/start", Some(Right::Start), Op::Start),
    route("PUT", "/v1/vms/{vm}/pause", Some(Right::Pause), Op::Pause),
    route("PUT", "/v1/vms/{vm}/resume", Some(Right::Pause), Op::Resume),
    route(
        "PUT",
        "/v1/vms/{vm}/shutdown",
        Some(Right::Stop),
        Op::Shutdown,
    ),
    route("PUT", "/v1/vms/{vm}/stop", Some(Right::Stop), Op::Stop),
    route(
        "PUT",
        "/v1/vms/{vm}/restart",
        Some(Right::Restart),
        Op::Restart,
    ),
    route(
        "GET",
        "/v1/vms/{vm}/console",
        Some(Right::Console),
        Op::Console,
    ),
    route("GET", "/v1/events", Some(Right::Events), Op::Events),
    route("GET", "/v1/tokens", Some(Right::Tokens), Op::ListTokens),
    route("POST", "/v1/tokens", Some(Right::Tokens), Op::CreateToken),
    route(
        "DELETE",
        "/v1/tokens/{name}",
        Some(Right::Tokens),
        Op::RevokeToken,
    ),
];

/// The default deadline of a graceful shutdown.
pub const DEFAULT_SHUTDOWN_MS: u64 = 10_000;
/// The longest deadline a shutdown may ask for (one hour).
pub const MAX_SHUTDOWN_MS: u64 = 3_600_000;

/// The `Upgrade` protocol name of the console.
pub const CONSOLE_PROTOCOL: &str = "keel-console";

/// How often an idle event stream checks that its client and its token are still there.
const EVENT_POLL: Duration = Duration::from_millis(500);

/// Serve the API on `listener` until the process ends; tokens live under `state_dir`
/// (`tokens.json`, and `admin.token` created on first start). The socket is made mode 0600.
pub fn serve(
    listener: UnixListener,
    state_dir: &Path,
    supervisor: Arc<dyn Supervisor>,
) -> std::io::Result<()> {
    serve_with(listener, state_dir, supervisor, Limits::default())
}

/// [`serve`] with explicit HTTP limits.
pub fn serve_with(
    listener: UnixListener,
    state_dir: &Path,
    supervisor: Arc<dyn Supervisor>,
    limits: Limits,
) -> std::io::Result<()> {
    let tokens = TokenStore::open(state_dir).map_err(|e| io::Error::other(e.to_string()))?;
    if let Some(path) = listener.local_addr()?.as_pathname() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    let api = Arc::new(Api { tokens, supervisor });
    http::serve(
        listener,
        limits,
        Arc::new(move |req, stream| api.connection(req, stream)),
    )
}

struct Api {
    tokens: TokenStore,
    supervisor: Arc<dyn Supervisor>,
}

/// What to answer.
enum Reply {
    /// A JSON body.
    Json(u16, Vec<u8>),
    /// 204.
    NoContent,
    /// `{"error": ...}`, with one extra header if any.
    Error(u16, String, Option<(&'static str, String)>),
    /// 101, then the console's bytes both ways.
    Console(UnixStream),
    /// 200, then one event per line, while the secret stays a current token.
    Events(Receiver<Event>, Grant, String),
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply::Error(status, message.into(), None)
}

fn json(status: u16, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            Reply::Json(status, body)
        }
        Err(e) => error(500, format!("cannot encode the response: {e}")),
    }
}

/// The status of a supervisor error (docs/admin.md).
pub fn admin_status(e: &AdminError) -> u16 {
    match e {
        AdminError::NotFound(_) => 404,
        AdminError::Exists(_) | AdminError::Conflict { .. } => 409,
        AdminError::Limit { .. } => 403,
        AdminError::Invalid(_) => 400,
        AdminError::Internal(_) => 500,
    }
}

fn admin_error(e: AdminError) -> Reply {
    error(admin_status(&e), e.to_string())
}

fn token_error(e: TokenError) -> Reply {
    error(e.status(), e.to_string())
}

fn forbidden(r: super::tokens::Refusal) -> Reply {
    error(403, r.0)
}

/// Match `path` against `pattern`: `Some(param)` (the `{...}` segment, if the pattern has
/// one) when it matches.
fn match_path(pattern: &str, path: &str) -> Option<Option<String>> {
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    let mut param = None;
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(param),
            (Some(a), Some(b)) if a.starts_with('{') && a.ends_with('}') => {
                if b.is_empty() {
                    return None;
                }
                param = Some(b.to_string());
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for `method` and `path` with its parameter, or the 404/405 to answer.
fn find_route(method: &str, path: &str) -> Result<(&'static Route, Option<String>), Reply> {
    let mut allowed = Vec::new();
    for r in ROUTES {
        if let Some(param) = match_path(r.path, path) {
            if r.method == method {
                return Ok((r, param));
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        Err(error(404, format!("no route {path:?}")))
    } else {
        let list = allowed.join(", ");
        Err(Reply::Error(
            405,
            format!("{path:?} does not take {method} (it takes {list})"),
            Some(("Allow", list)),
        ))
    }
}

/// The body of `PUT /v1/vms/{vm}/shutdown`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    #[serde(default)]
    deadline_ms: Option<u64>,
}

fn parse_body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Reply> {
    if req.body.is_empty() {
        return Err(error(400, "bad request: a JSON body is required"));
    }
    serde_json::from_slice(&req.body).map_err(|e| error(400, format!("bad request: body: {e}")))
}

/// The secret of `Authorization: Bearer <secret>`.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.header("authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Api {
    fn connection(&self, req: Request, mut stream: UnixStream) {
        let rest = req.rest.clone();
        let reply = self.handle(&req);
        let _ = match reply {
            Reply::Json(status, body) => http::write_response(
                &mut stream,
                status,
                &[("Content-Type", "application/json")],
                &body,
            ),
            Reply::NoContent => http::write_response(&mut stream, 204, &[], &[]),
            Reply::Error(status, message, extra) => {
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some((n, v)) = &extra {
                    headers.push((n, v.as_str()));
                }
                http::write_response(&mut stream, status, &headers, &http::error_body(&message))
            }
            Reply::Console(vm) => console(stream, vm, &rest),
            Reply::Events(rx, grant, secret) => self.events(stream, rx, &grant, &secret),
        };
    }

    fn handle(&self, req: &Request) -> Reply {
        let Some(secret) = bearer(req) else {
            return Reply::Error(
                401,
                "missing token: send Authorization: Bearer <token>".into(),
                Some(("WWW-Authenticate", "Bearer".into())),
            );
        };
        let Some(grant) = self.tokens.authenticate(secret) else {
            return Reply::Error(
                401,
                "unknown or revoked token".into(),
                Some(("WWW-Authenticate", "Bearer".into())),
            );
        };
        let (route, param) = match find_route(&req.method, &req.path) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        match self.dispatch(req, route, param.as_deref().unwrap_or(""), &grant, secret) {
            Ok(r) | Err(r) => r,
        }
    }

    /// Refuse unless `grant` holds `right` on VM `vm`.
    fn check_vm(&self, grant: &Grant, right: Right, vm: &str) -> Result<(), Reply> {
        // Names the token lists need no look-up; the pool covers dynamic VMs only.
        let is_static = if grant.covers(vm, true) {
            true
        } else {
            match self.supervisor.get(vm) {
                Ok(info) => info.r#static,
                Err(AdminError::NotFound(_)) => false,
                Err(e) => return Err(admin_error(e)),
            }
        };
        grant.check_vm(right, vm, is_static).map_err(forbidden)
    }

    fn dispatch(
        &self,
        req: &Request,
        route: &Route,
        param: &str,
        grant: &Grant,
        secret: &str,
    ) -> Result<Reply, Reply> {
        let sup = &*self.supervisor;
        let vm = param;
        let right = route.right;
        // The VM routes check the right on their VM; the others here.
        let vm_route = route.path.contains("{vm}");
        if let Some(r) = right {
            if vm_route {
                self.check_vm(grant, r, vm)?;
            } else if route.op == Op::CreateVm {
                grant.check_pool(r).map_err(forbidden)?;
            } else {
                grant.check(r).map_err(forbidden)?;
            }
        }
        let ok = |v: Result<super::model::VmInfo, AdminError>| -> Result<Reply, Reply> {
            v.map(|i| json(200, &i)).map_err(admin_error)
        };
        match route.op {
            Op::Version => Ok(json(
                200,
                &serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
            )),
            Op::ListVms => {
                let vms: Vec<_> = sup
                    .list()
                    .into_iter()
                    .filter(|v| grant.covers(&v.name, v.r#static))
                    .collect();
                Ok(json(200, &vms))
            }
            Op::CreateVm => {
                let create: CreateVm = parse_body(req)?;
                sup.create(create)
                    .map(|i| json(201, &i))
                    .map_err(admin_error)
            }
            Op::GetVm => ok(sup.get(vm)),
            Op::DeleteVm => sup
                .delete(vm)
                .map(|()| Reply::NoContent)
                .map_err(admin_error),
            Op::Start => ok(sup.start(vm)),
            Op::Pause => ok(sup.pause(vm)),
            Op::Resume => ok(sup.resume(vm)),
            Op::Shutdown => {
                let body: ShutdownBody = if req.body.is_empty() {
                    ShutdownBody { deadline_ms: None }
                } else {
                    parse_body(req)?
                };
                let ms = body.deadline_ms.unwrap_or(DEFAULT_SHUTDOWN_MS);
                if ms > MAX_SHUTDOWN_MS {
                    return Err(error(
                        400,
                        format!("bad request: deadline_ms {ms} exceeds {MAX_SHUTDOWN_MS}"),
                    ));
                }
                ok(sup.shutdown(vm, Duration::from_millis(ms)))
            }
            Op::Stop => ok(sup.stop(vm)),
            Op::Restart => ok(sup.restart(vm)),
            Op::Console => sup.console(vm).map(Reply::Console).map_err(admin_error),
            Op::Events => Ok(Reply::Events(
                sup.subscribe(),
                grant.clone(),
                secret.to_string(),
            )),
            Op::ListTokens => Ok(json(200, &self.tokens.list())),
            Op::CreateToken => {
                let new: Grant = parse_body(req)?;
                new.validate().map_err(token_error)?;
                grant.check_delegation(&new).map_err(forbidden)?;
                let name = new.name.clone();
                let secret = self.tokens.create(new).map_err(token_error)?;
                Ok(json(
                    201,
                    &serde_json::json!({ "name": name, "token": secret }),
                ))
            }
            Op::RevokeToken => self
                .tokens
                .revoke(param)
                .map(|()| Reply::NoContent)
                .map_err(token_error),
        }
    }

    /// Whether `grant` may see an event about `vm`; `cache` remembers which VMs are static.
    fn may_see(&self, grant: &Grant, event: &Event, cache: &mut HashMap<String, bool>) -> bool {
        if !grant.has(Right::Read) {
            return false;
        }
        let (vm, known_dynamic) = match event {
            Event::State { vm, .. } | Event::Crashed { vm, .. } | Event::Restarted { vm, .. } => {
                (vm, false)
            }
            Event::Created { vm } | Event::Deleted { vm } => (vm, true),
        };
        if grant.covers(vm, true) {
            return true;
        }
        if !grant.pool {
            return false;
        }
        let is_static = if known_dynamic {
            false
        } else {
            *cache.entry(vm.clone()).or_insert_with(|| {
                self.supervisor
                    .get(vm)
                    .map(|i| i.r#static)
                    // A VM gone already was a dynamic one (static VMs are never deleted).
                    .unwrap_or(false)
            })
        };
        grant.covers(vm, is_static)
    }

    /// Stream events to the client until it goes away, its token is revoked or the
    /// supervisor drops the subscription.
    fn events(
        &self,
        mut stream: UnixStream,
        rx: Receiver<Event>,
        grant: &Grant,
        secret: &str,
    ) -> io::Result<()> {
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        )?;
        let mut cache = HashMap::new();
        loop {
            match rx.recv_timeout(EVENT_POLL) {
                Ok(event) => {
                    if self.tokens.authenticate(secret).is_none() {
                        return Ok(());
                    }
                    if self.may_see(grant, &event, &mut cache) {
                        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
                        line.push(b'\n');
                        stream.write_all(&line)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.tokens.authenticate(secret).is_none() || peer_closed(&stream) {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

/// Whether the client closed its end (what it may have sent is left unread).
fn peer_closed(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: a peek of at most one byte into a valid buffer, on a descriptor we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            b.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
    }
}

/// Answer 101, then copy bytes both ways between the client and the VM's console until
/// either side closes.
fn console(mut client: UnixStream, mut vm: UnixStream, early: &[u8]) -> io::Result<()> {
    client.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {CONSOLE_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n"
        )
        .as_bytes(),
    )?;
    client.set_read_timeout(None)?;
    if !early.is_empty() {
        vm.write_all(early)?;
    }
    let (mut client_in, mut vm_out) = (client.try_clone()?, vm.try_clone()?);
    let input = std::thread::Builder::new()
        .name("keel-api-console".into())
        .spawn(move || {
            let _ = copy(&mut client_in, &mut vm_out);
            // The client is gone: end both directions.
            let _ = vm_out.shutdown(Shutdown::Both);
            let _ = client_in.shutdown(Shutdown::Both);
        })?;
    let _ = copy(&mut vm, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = vm.shutdown(Shutdown::Both);
    let _ = input.join();
    Ok(())
}

/// Copy until end of stream or an error, flushing every chunk.
fn copy(from: &mut UnixStream, to: &mut UnixStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
pub(crate) mod tests;
