//! `keel ctl`: the REST API's command-line client (docs/admin.md, "keel ctl").
//!
//! Human output by default, the server's JSON with `--json`. A refused or failed request
//! prints the server's error message in one line and exits 1; bad arguments exit 2.

use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::{self, Response};
use super::model::{CreateVm, Event, RestartPolicy, VmInfo};
use super::tokens::{ADMIN_TOKEN_FILE, EVERY_VM, Grant, Right};
use crate::{EXIT_FAILURE, Failure};

/// `keel ctl --help`.
pub const USAGE: &str = "\
keel ctl: the command-line client of `keel daemon`'s REST API

USAGE:
    keel ctl [OPTIONS] <COMMAND>

COMMANDS:
    list                          every VM the token may read (a table)
    get VM                        one VM
    create --name N --kernel K --memory-mib M [--initrd I] [--cmdline C] [--vcpus N]
           [--disk D]... [--network NET]... [--restart never|on-failure|always]
                                  create a dynamic VM within the daemon's [limits] (not started)
    start VM | pause VM | resume VM | stop VM | restart VM | delete VM
    shutdown VM [--deadline-ms N] ask the guest to power off; stop it after N ms (default 10000)
    console VM                    attach the terminal to the VM's serial console
                                  (Ctrl-A x detaches, Ctrl-A Ctrl-A sends Ctrl-A)
    events                        print events (state changes, crashes, restarts) as they happen
    token list                    the tokens (never their secrets)
    token create NAME --rights R,R.. [--vms VM,VM..|'*'] [--pool]
                                  a new token; its secret is printed once, on stdout
    token revoke NAME             refuse that token from now on
    version                       the daemon's version

OPTIONS:
    --socket PATH       the daemon's socket (default: <state dir>/keel.sock)
    --state-dir DIR     the daemon's state directory (default: the only one under
                        /run/keel (root) or $XDG_RUNTIME_DIR/keel)
    --token TOKEN       the token (else --token-file, else $KEEL_TOKEN, else
                        <state dir>/admin.token)
    --token-file FILE   read the token from FILE
    --json              print the server's JSON instead of text

RIGHTS: read create start stop pause restart delete console events tokens

EXIT STATUS: 0 done; 1 the daemon refused or failed the request (its message on stderr),
or cannot be reached; 2 bad arguments
";

/// What `keel ctl` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Print [`USAGE`].
    Help,
    /// `version`
    Version,
    /// `list`
    List,
    /// `get VM`
    Get(String),
    /// `create ...`
    Create(Box<CreateVm>),
    /// `start VM`
    Start(String),
    /// `pause VM`
    Pause(String),
    /// `resume VM`
    Resume(String),
    /// `shutdown VM [--deadline-ms N]`
    Shutdown(String, Option<u64>),
    /// `stop VM`
    Stop(String),
    /// `restart VM`
    Restart(String),
    /// `delete VM`
    Delete(String),
    /// `console VM`
    Console(String),
    /// `events`
    Events,
    /// `token list`
    TokenList,
    /// `token create NAME ...`
    TokenCreate(Grant),
    /// `token revoke NAME`
    TokenRevoke(String),
}

/// A parsed `keel ctl` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--socket`
    pub socket: Option<PathBuf>,
    /// `--state-dir`
    pub state_dir: Option<PathBuf>,
    /// `--token`
    pub token: Option<String>,
    /// `--token-file`
    pub token_file: Option<PathBuf>,
    /// `--json`
    pub json: bool,
    /// The command.
    pub action: Action,
}

/// Options taking a value.
const VALUE_OPTIONS: &[&str] = &[
    "--socket",
    "--state-dir",
    "--token",
    "--token-file",
    "--name",
    "--kernel",
    "--initrd",
    "--cmdline",
    "--memory-mib",
    "--vcpus",
    "--disk",
    "--network",
    "--restart",
    "--deadline-ms",
    "--rights",
    "--vms",
];
/// Options that apply to every command.
const GLOBAL_OPTIONS: &[&str] = &[
    "--socket",
    "--state-dir",
    "--token",
    "--token-file",
    "--json",
];

fn input(m: impl Into<String>) -> Failure {
    Failure::input(m)
}

fn failed(m: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_FAILURE,
        message: m.into(),
    }
}

/// Parse the arguments after `keel ctl`.
pub fn parse(args: Vec<String>) -> Result<Invocation, Failure> {
    let mut words = Vec::new();
    let mut opts: Vec<(String, String)> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Invocation {
                socket: None,
                state_dir: None,
                token: None,
                token_file: None,
                json: false,
                action: Action::Help,
            });
        }
        if arg == "--json" || arg == "--pool" {
            opts.push((arg, String::new()));
            continue;
        }
        if arg.starts_with("--") {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if !VALUE_OPTIONS.contains(&name.as_str()) {
                return Err(input(format!(
                    "unknown option {arg:?} for `keel ctl` (try `keel ctl --help`)"
                )));
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| input(format!("{name} needs a value")))?,
            };
            opts.push((name, value));
            continue;
        }
        if arg.starts_with('-') && arg != "-" {
            return Err(input(format!(
                "unknown option {arg:?} for `keel ctl` (try `keel ctl --help`)"
            )));
        }
        words.push(arg);
    }
    let get = |name: &str| -> Option<String> {
        opts.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let all = |name: &str| -> Vec<String> {
        opts.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["token", sub, ..] => format!("token {sub}"),
        [first, ..] => first.to_string(),
        [] => {
            return Err(input("`keel ctl` needs a command (try `keel ctl --help`)"));
        }
    };
    let allowed: &[&str] = match command.as_str() {
        "create" => &[
            "--name",
            "--kernel",
            "--initrd",
            "--cmdline",
            "--memory-mib",
            "--vcpus",
            "--disk",
            "--network",
            "--restart",
        ],
        "shutdown" => &["--deadline-ms"],
        "token create" => &["--rights", "--vms", "--pool"],
        _ => &[],
    };
    if let Some((n, _)) = opts
        .iter()
        .find(|(n, _)| !GLOBAL_OPTIONS.contains(&n.as_str()) && !allowed.contains(&n.as_str()))
    {
        return Err(input(format!(
            "option {n} does not apply to `keel ctl {command}`"
        )));
    }
    let one = |what: &str| -> Result<String, Failure> {
        match words.as_slice() {
            [_, x] if !command.starts_with("token ") => Ok(x.to_string()),
            [_, _, x] if command.starts_with("token ") => Ok(x.to_string()),
            _ => Err(input(format!(
                "`keel ctl {command}` takes one {what} (keel ctl {command} {})",
                what.to_uppercase()
            ))),
        }
    };
    let none = || -> Result<(), Failure> {
        let expected = if command.starts_with("token ") { 2 } else { 1 };
        if words.len() == expected {
            Ok(())
        } else {
            Err(input(format!(
                "`keel ctl {command}` takes no argument, got {:?}",
                &words[expected.min(words.len())..]
            )))
        }
    };
    let number = |name: &str, v: &str| -> Result<u64, Failure> {
        v.parse::<u64>()
            .map_err(|_| input(format!("{name} {v:?} is not a whole number")))
    };
    let action = match command.as_str() {
        "help" => Action::Help,
        "version" => none().map(|()| Action::Version)?,
        "list" => none().map(|()| Action::List)?,
        "events" => none().map(|()| Action::Events)?,
        "get" => Action::Get(one("vm")?),
        "start" => Action::Start(one("vm")?),
        "pause" => Action::Pause(one("vm")?),
        "resume" => Action::Resume(one("vm")?),
        "stop" => Action::Stop(one("vm")?),
        "restart" => Action::Restart(one("vm")?),
        "delete" => Action::Delete(one("vm")?),
        "console" => Action::Console(one("vm")?),
        "shutdown" => {
            let deadline = match get("--deadline-ms") {
                Some(v) => Some(number("--deadline-ms", &v)?),
                None => None,
            };
            Action::Shutdown(one("vm")?, deadline)
        }
        "create" => {
            none()?;
            let need =
                |n: &str| get(n).ok_or_else(|| input(format!("`keel ctl create` needs {n}")));
            let memory_mib = number("--memory-mib", &need("--memory-mib")?)?;
            let vcpus = match get("--vcpus") {
                Some(v) => u32::try_from(number("--vcpus", &v)?)
                    .map_err(|_| input(format!("--vcpus {v:?} is too large")))?,
                None => 1,
            };
            let restart = match get("--restart").as_deref() {
                None | Some("never") => RestartPolicy::Never,
                Some("on-failure") => RestartPolicy::OnFailure,
                Some("always") => RestartPolicy::Always,
                Some(other) => {
                    return Err(input(format!(
                        "--restart {other:?} is not one of never, on-failure, always"
                    )));
                }
            };
            Action::Create(Box::new(CreateVm {
                name: need("--name")?,
                kernel: need("--kernel")?,
                initrd: get("--initrd"),
                cmdline: get("--cmdline").unwrap_or_default(),
                memory_mib,
                vcpus,
                disks: all("--disk"),
                networks: all("--network"),
                restart,
            }))
        }
        "token list" => none().map(|()| Action::TokenList)?,
        "token revoke" => Action::TokenRevoke(one("name")?),
        "token create" => {
            let name = one("name")?;
            let rights =
                get("--rights").ok_or_else(|| input("`keel ctl token create` needs --rights"))?;
            let rights = split_list(&rights)
                .into_iter()
                .map(|r| {
                    Right::ALL
                        .into_iter()
                        .find(|x| x.name() == r)
                        .ok_or_else(|| {
                            input(format!(
                                "--rights: {r:?} is not one of {}",
                                Right::ALL.map(Right::name).join(", ")
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let vms = get("--vms").map(|v| split_list(&v)).unwrap_or_default();
            Action::TokenCreate(Grant {
                name,
                rights,
                vms,
                pool: opts.iter().any(|(n, _)| n == "--pool"),
            })
        }
        other => {
            return Err(input(format!(
                "unknown command {other:?} for `keel ctl` (try `keel ctl --help`)"
            )));
        }
    };
    Ok(Invocation {
        socket: get("--socket").map(PathBuf::from),
        state_dir: get("--state-dir").map(PathBuf::from),
        token: get("--token"),
        token_file: get("--token-file").map(PathBuf::from),
        json: opts.iter().any(|(n, _)| n == "--json"),
        action,
    })
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Where the daemon and its token are.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The API socket.
    pub socket: PathBuf,
    /// The bearer token.
    pub token: String,
}

/// Timeout of an ordinary request (a restart waits for the VMM to stop and start).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where state directories are by default: `/run/keel` as root, else
/// `$XDG_RUNTIME_DIR/keel`.
fn state_base() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Some(PathBuf::from("/run/keel"))
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("keel"))
    }
}

/// The only daemon state directory under `base` (one holding a `keel.sock`).
fn find_state_dir(base: &Path) -> Result<PathBuf, Failure> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("keel.sock").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        0 => Err(failed(format!(
            "no keel daemon found under {} (start one with `keel daemon`, or give --socket or --state-dir)",
            base.display()
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(input(format!(
            "several keel daemons run under {} ({}): choose one with --state-dir",
            base.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl Invocation {
    /// The socket and the token, by the options' precedence.
    pub fn connection(&self) -> Result<Connection, Failure> {
        let (socket, state) = match (&self.socket, &self.state_dir) {
            (Some(s), d) => (
                s.clone(),
                d.clone()
                    .or_else(|| s.parent().map(Path::to_path_buf))
                    .unwrap_or_default(),
            ),
            (None, Some(d)) => (d.join("keel.sock"), d.clone()),
            (None, None) => {
                let base = state_base().ok_or_else(|| {
                    input("XDG_RUNTIME_DIR is not set: give --socket or --state-dir")
                })?;
                let d = find_state_dir(&base)?;
                (d.join("keel.sock"), d)
            }
        };
        let read_file = |f: &Path| -> Result<String, Failure> {
            std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(|e| input(format!("token file {}: {e}", f.display())))
        };
        let token = if let Some(t) = &self.token {
            t.clone()
        } else if let Some(f) = &self.token_file {
            read_file(f)?
        } else if let Some(t) = std::env::var_os("KEEL_TOKEN") {
            t.to_string_lossy().trim().to_string()
        } else {
            read_file(&state.join(ADMIN_TOKEN_FILE)).map_err(|e| {
                input(format!(
                    "{} (give --token, --token-file or KEEL_TOKEN)",
                    e.message
                ))
            })?
        };
        if token.is_empty() || token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(input("the token is empty or not printable ASCII"));
        }
        Ok(Connection { socket, token })
    }
}

impl Connection {
    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn unreachable(&self, e: io::Error) -> Failure {
        failed(format!(
            "cannot talk to the daemon at {}: {e}",
            self.socket.display()
        ))
    }

    /// One request; a non-2xx answer is a failure carrying the server's message.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Response, Failure> {
        let auth = self.auth();
        let resp = http::request(
            &self.socket,
            method,
            path,
            &[("Authorization", &auth)],
            body,
            REQUEST_TIMEOUT,
        )
        .map_err(|e| self.unreachable(e))?;
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(failed(resp.error_message()))
        }
    }

    /// Open a stream route (`events`, `console`): the connection after a head with
    /// `expect` status, with the bytes read past the head.
    pub fn open(&self, path: &str, expect: u16) -> Result<(UnixStream, Vec<u8>), Failure> {
        let auth = self.auth();
        let mut headers = vec![("Authorization", auth.as_str())];
        if expect == 101 {
            headers.push(("Upgrade", super::api::CONSOLE_PROTOCOL));
        }
        let (resp, stream, rest) =
            http::open(&self.socket, "GET", path, &headers, &[], REQUEST_TIMEOUT)
                .map_err(|e| self.unreachable(e))?;
        if resp.status != expect {
            let mut resp = resp;
            let mut body = rest;
            let _ = (&stream).take(64 << 10).read_to_end(&mut body);
            resp.body = body;
            return Err(failed(resp.error_message()));
        }
        stream
            .set_read_timeout(None)
            .map_err(|e| self.unreachable(e))?;
        Ok((stream, rest))
    }
}

fn decode<T: serde::de::DeserializeOwned>(resp: &Response) -> Result<T, Failure> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        failed(format!(
            "the daemon's answer is not what keel ctl expects: {e}"
        ))
    })
}

/// Percent-encode a path segment (names are plain, but the user may type anything).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Run an invocation: the exit status.
pub fn run(inv: &Invocation) -> Result<u8, Failure> {
    if inv.action == Action::Help {
        print!("{USAGE}");
        return Ok(0);
    }
    let conn = inv.connection()?;
    if let Action::Console(vm) = &inv.action {
        return console(&conn, vm);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    execute(&conn, &inv.action, inv.json, &mut out)
}

/// Run every command but `console` (and `help`), writing what it prints to `out`.
pub fn execute(
    conn: &Connection,
    action: &Action,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let vm_path = |vm: &str, verb: &str| {
        if verb.is_empty() {
            format!("/v1/vms/{}", segment(vm))
        } else {
            format!("/v1/vms/{}/{verb}", segment(vm))
        }
    };
    let put = |vm: &str, verb: &str, body: &[u8]| conn.call("PUT", &vm_path(vm, verb), body);
    let resp = match action {
        Action::Help | Action::Console(_) => {
            return Err(failed("internal: not a request command"));
        }
        Action::Events => return events(conn, json, out),
        Action::Version => conn.call("GET", "/v1/version", &[])?,
        Action::List => conn.call("GET", "/v1/vms", &[])?,
        Action::Get(vm) => conn.call("GET", &vm_path(vm, ""), &[])?,
        Action::Create(req) => {
            let body = serde_json::to_vec(req).map_err(|e| failed(e.to_string()))?;
            conn.call("POST", "/v1/vms", &body)?
        }
        Action::Start(vm) => put(vm, "start", &[])?,
        Action::Pause(vm) => put(vm, "pause", &[])?,
        Action::Resume(vm) => put(vm, "resume", &[])?,
        Action::Stop(vm) => put(vm, "stop", &[])?,
        Action::Restart(vm) => put(vm, "restart", &[])?,
        Action::Shutdown(vm, deadline) => {
            let body = match deadline {
                Some(ms) => serde_json::json!({ "deadline_ms": ms })
                    .to_string()
                    .into_bytes(),
                None => Vec::new(),
            };
            put(vm, "shutdown", &body)?
        }
        Action::Delete(vm) => conn.call("DELETE", &vm_path(vm, ""), &[])?,
        Action::TokenList => conn.call("GET", "/v1/tokens", &[])?,
        Action::TokenCreate(grant) => {
            let body = serde_json::to_vec(grant).map_err(|e| failed(e.to_string()))?;
            conn.call("POST", "/v1/tokens", &body)?
        }
        Action::TokenRevoke(name) => {
            conn.call("DELETE", &format!("/v1/tokens/{}", segment(name)), &[])?
        }
    };
    let text = if json {
        let mut t = String::from_utf8_lossy(&resp.body).trim_end().to_string();
        if t.is_empty() {
            return Ok(0);
        }
        t.push('\n');
        t
    } else {
        match action {
            Action::Version => {
                let v: serde_json::Value = decode(&resp)?;
                format!("{}\n", v["version"].as_str().unwrap_or("?"))
            }
            Action::List => vm_table(&decode::<Vec<VmInfo>>(&resp)?),
            Action::Get(_) => vm_details(&decode(&resp)?),
            Action::Delete(vm) => format!("vm {vm:?}: deleted\n"),
            Action::TokenList => token_table(&decode::<Vec<Grant>>(&resp)?),
            Action::TokenCreate(g) => {
                let v: serde_json::Value = decode(&resp)?;
                eprintln!(
                    "keel ctl: token {:?} created; its secret below is shown only this once",
                    g.name
                );
                format!("{}\n", v["token"].as_str().unwrap_or("?"))
            }
            Action::TokenRevoke(name) => format!("token {name:?}: revoked\n"),
            _ => vm_line(&decode(&resp)?),
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| failed(format!("stdout: {e}")))?;
    Ok(0)
}

fn pid_text(v: &VmInfo) -> String {
    v.pid.map_or("-".into(), |p| p.to_string())
}

fn restart_text(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    }
}

/// One line for a VM after a lifecycle command.
pub fn vm_line(v: &VmInfo) -> String {
    match v.pid {
        Some(pid) => format!("vm {:?}: {} (pid {pid})\n", v.name, v.state),
        None => format!("vm {:?}: {}\n", v.name, v.state),
    }
}

/// `get`'s lines.
pub fn vm_details(v: &VmInfo) -> String {
    format!(
        "name:      {}\nkind:      {}\nstate:     {}\npid:       {}\nmemory:    {} MiB\nvcpus:     {}\nrestart:   {}\nrestarts:  {}\nlast exit: {}\nnets:      {}\n",
        v.name,
        if v.r#static { "static" } else { "dynamic" },
        v.state,
        pid_text(v),
        v.memory_mib,
        v.vcpus,
        restart_text(v.restart),
        v.restarts,
        v.last_exit.as_deref().unwrap_or("-"),
        if v.nics.is_empty() {
            "-".to_string()
        } else {
            v.nics
                .iter()
                .map(|n| format!("{} {}", n.network, n.mac))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `list`'s table.
pub fn vm_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.to_string(),
                if v.r#static { "static" } else { "dynamic" }.into(),
                pid_text(v),
                format!("{} MiB", v.memory_mib),
                v.vcpus.to_string(),
                restart_text(v.restart).into(),
                v.restarts.to_string(),
                v.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "KIND",
            "PID",
            "MEMORY",
            "VCPUS",
            "RESTART",
            "RESTARTS",
            "LAST EXIT",
        ],
        &rows,
    )
}

/// `token list`'s table.
pub fn token_table(tokens: &[Grant]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                if g.rights.is_empty() {
                    "-".into()
                } else {
                    g.rights
                        .iter()
                        .map(|r| r.name())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                if g.vms.is_empty() {
                    "-".into()
                } else if g.vms.len() == 1 && g.vms[0] == EVERY_VM {
                    "*".into()
                } else {
                    g.vms.join(",")
                },
                if g.pool { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(&["NAME", "RIGHTS", "VMS", "POOL"], &rows)
}

/// One human line per event.
pub fn event_line(e: &Event) -> String {
    match e {
        Event::State { vm, from, to } => format!("vm {vm:?}: {from} -> {to}"),
        Event::Crashed { vm, exit } => format!("vm {vm:?}: crashed ({exit})"),
        Event::Restarted { vm, restarts } => {
            format!("vm {vm:?}: restarted by its policy (restart {restarts})")
        }
        Event::Created { vm } => format!("vm {vm:?}: created"),
        Event::Deleted { vm } => format!("vm {vm:?}: deleted"),
    }
}

/// Print events until the daemon ends the stream.
fn events(conn: &Connection, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let (stream, rest) = conn.open("/v1/events", 200)?;
    let reader = io::BufReader::new(io::Cursor::new(rest).chain(stream));
    for line in reader.lines() {
        let line = line.map_err(|e| conn.unreachable(e))?;
        if line.is_empty() {
            continue;
        }
        let text = if json {
            line
        } else {
            match serde_json::from_str::<Event>(&line) {
                Ok(e) => event_line(&e),
                Err(_) => line,
            }
        };
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| failed(format!("stdout: {e}")))?;
    }
    Ok(0)
}

/// Copy `input` to the console (through the Ctrl-A escape) and the console to `output`
/// until the user detaches (Ctrl-A x) or the daemon closes the stream. Returns whether the
/// user detached.
pub fn attach(
    stream: UnixStream,
    early: &[u8],
    mut input: impl Read + Send + 'static,
    output: &mut dyn Write,
) -> io::Result<bool> {
    output.write_all(early)?;
    output.flush()?;
    let mut to_vm = stream.try_clone()?;
    let detach = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let detached = detach.clone();
    std::thread::Builder::new()
        .name("keel-ctl-console".into())
        .spawn(move || {
            let mut escape = keel_kvm::io::Escape::default();
            let mut buf = [0u8; 1024];
            loop {
                // Stdin's end leaves the output flowing (Ctrl-A x or the daemon ends it).
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let bytes = escape.filter(&buf[..n]);
                if !bytes.is_empty() && to_vm.write_all(&bytes).is_err() {
                    return;
                }
                if escape.quit {
                    detached.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = to_vm.shutdown(Shutdown::Both);
                    return;
                }
            }
        })?;
    let mut from_vm = stream;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from_vm.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        output.write_all(&buf[..n])?;
        output.flush()?;
    }
    Ok(detach.load(std::sync::atomic::Ordering::SeqCst))
}

/// `keel ctl console VM`: the terminal (raw) to the VM's serial console.
fn console(conn: &Connection, vm: &str) -> Result<u8, Failure> {
    let (stream, early) = conn.open(&format!("/v1/vms/{}/console", segment(vm)), 101)?;
    let raw = keel_kvm::host::RawTerminal::enable();
    if raw.is_some() {
        eprint!("keel ctl: attached to vm {vm:?} (Ctrl-A x detaches)\r\n");
    }
    let stdout = io::stdout();
    let result = attach(stream, &early, io::stdin(), &mut stdout.lock());
    drop(raw);
    match result {
        Ok(true) => {
            eprintln!("\nkeel ctl: detached from vm {vm:?}");
            Ok(0)
        }
        Ok(false) => {
            eprintln!("\nkeel ctl: the daemon closed vm {vm:?}'s console");
            Ok(0)
        }
        Err(e) => Err(failed(format!("console of vm {vm:?}: {e}"))),
    }
}

#[cfg(test)]
mod tests;
