//! Capability tokens (docs/admin.md, "Tokens and rights").
//!
//! A token is 32 random bytes from the OS, shown once in hex. The daemon keeps only its
//! SHA-256, with its name, rights and scope, in `<state>/tokens.json` (mode 0600, replaced
//! atomically). A presented token is hashed and compared in constant time with every stored
//! hash. Revoking a token removes it from the file and from memory before the request
//! returns: every later request with it is refused.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// List and get VMs; see their events.
    Read,
    /// Create dynamic VMs (needs the pool scope).
    Create,
    /// Start VMs.
    Start,
    /// Stop and shut down VMs.
    Stop,
    /// Pause and resume VMs.
    Pause,
    /// Restart VMs.
    Restart,
    /// Delete dynamic VMs.
    Delete,
    /// Attach to VMs' serial consoles.
    Console,
    /// Read the event stream.
    Events,
    /// List, create (within its own rights) and revoke tokens.
    Tokens,
}

impl Right {
    /// Every right, in the order the docs list them.
    pub const ALL: [Right; 10] = [
        Right::Read,
        Right::Create,
        Right::Start,
        Right::Stop,
        Right::Pause,
        Right::Restart,
        Right::Delete,
        Right::Console,
        Right::Events,
        Right::Tokens,
    ];

    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Create => "create",
            Right::Start => "start",
            Right::Stop => "stop",
            Right::Pause => "pause",
            Right::Restart => "restart",
            Right::Delete => "delete",
            Right::Console => "console",
            Right::Events => "events",
            Right::Tokens => "tokens",
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The scope that means every VM.
pub const EVERY_VM: &str = "*";

/// What a token grants (the API's token object, without its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The token's unique name.
    pub name: String,
    /// Its rights.
    pub rights: Vec<Right>,
    /// The VMs they apply to: names, or `["*"]` for every VM.
    pub vms: Vec<String>,
    /// Whether they also apply to every dynamic VM (the pool); `create` needs it.
    #[serde(default)]
    pub pool: bool,
}

/// A refusal (403): names the token, the right and the VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Grant {
    /// Whether it holds `right` at all.
    pub fn has(&self, right: Right) -> bool {
        self.rights.contains(&right)
    }

    /// Whether its scope covers VM `vm` (`is_static`: declared in the description; a name
    /// no VM has counts as dynamic).
    pub fn covers(&self, vm: &str, is_static: bool) -> bool {
        self.vms.iter().any(|v| v == EVERY_VM || v == vm) || (self.pool && !is_static)
    }

    /// `right` on VM `vm`, or a refusal naming both.
    pub fn check_vm(&self, right: Right, vm: &str, is_static: bool) -> Result<(), Refusal> {
        if self.has(right) && self.covers(vm, is_static) {
            Ok(())
        } else {
            Err(Refusal(format!(
                "token {:?} lacks right {:?} on VM {vm:?}",
                self.name,
                right.name()
            )))
        }
    }

    /// `right`, whatever the VM (events, tokens, listing).
    pub fn check(&self, right: Right) -> Result<(), Refusal> {
        if self.has(right) {
            Ok(())
        } else {
            Err(Refusal(format!(
                "token {:?} lacks right {:?}",
                self.name,
                right.name()
            )))
        }
    }

    /// `right` on the pool (creating dynamic VMs).
    pub fn check_pool(&self, right: Right) -> Result<(), Refusal> {
        if self.has(right) && self.pool {
            Ok(())
        } else {
            Err(Refusal(format!(
                "token {:?} lacks right {:?} on the pool",
                self.name,
                right.name()
            )))
        }
    }

    /// Whether this token may mint `new`: only rights it holds, on VMs it covers by name
    /// (or `*` if it has `*`), the pool only if it has it.
    pub fn check_delegation(&self, new: &Grant) -> Result<(), Refusal> {
        for &r in &new.rights {
            if !self.has(r) {
                return Err(Refusal(format!(
                    "token {:?} lacks right {:?}: it cannot grant it",
                    self.name,
                    r.name()
                )));
            }
        }
        let every = self.vms.iter().any(|v| v == EVERY_VM);
        for vm in &new.vms {
            if !every && !self.vms.contains(vm) {
                return Err(Refusal(format!(
                    "token {:?} does not cover VM {vm:?}: it cannot grant rights on it",
                    self.name
                )));
            }
        }
        if new.pool && !self.pool {
            return Err(Refusal(format!(
                "token {:?} does not cover the pool: it cannot grant rights on it",
                self.name
            )));
        }
        Ok(())
    }

    /// The all-rights grant of the bootstrap token.
    pub fn admin(name: &str) -> Grant {
        Grant {
            name: name.to_string(),
            rights: Right::ALL.to_vec(),
            vms: vec![EVERY_VM.to_string()],
            pool: true,
        }
    }

    /// Check the shape of a grant asked for through the API.
    pub fn validate(&self) -> Result<(), TokenError> {
        if !valid_name(&self.name) {
            return Err(TokenError::Invalid(format!(
                "token name {:?} is not 1 to 32 of [a-z0-9_-]",
                self.name
            )));
        }
        if self.vms.iter().any(|v| v == EVERY_VM) && self.vms.len() > 1 {
            return Err(TokenError::Invalid(format!(
                "vms {:?}: \"*\" stands alone",
                self.vms
            )));
        }
        if let Some(v) = self.vms.iter().find(|v| *v != EVERY_VM && !valid_vm(v)) {
            return Err(TokenError::Invalid(format!(
                "vms: {v:?} is not a VM name ([a-z0-9-]{{1,32}}) or \"*\""
            )));
        }
        Ok(())
    }
}

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_vm(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A malformed request (400).
    #[error("bad request: {0}")]
    Invalid(String),
    /// The name is taken (409).
    #[error("a token named {0:?} exists already")]
    Exists(String),
    /// No token of that name (404).
    #[error("no token named {0:?}")]
    NotFound(String),
    /// The state directory failed (500).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
}

impl TokenError {
    /// The HTTP status it maps to.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Invalid(_) => 400,
            TokenError::Exists(_) => 409,
            TokenError::NotFound(_) => 404,
            TokenError::Io { .. } => 500,
        }
    }
}

/// One stored token: its grant and the SHA-256 of its secret (hex).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredRepr", into = "StoredRepr")]
struct Stored {
    grant: Grant,
    sha256: String,
}

/// [`Stored`] as one flat JSON object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRepr {
    name: String,
    rights: Vec<Right>,
    vms: Vec<String>,
    pool: bool,
    sha256: String,
}

impl From<StoredRepr> for Stored {
    fn from(r: StoredRepr) -> Stored {
        Stored {
            grant: Grant {
                name: r.name,
                rights: r.rights,
                vms: r.vms,
                pool: r.pool,
            },
            sha256: r.sha256,
        }
    }
}

impl From<Stored> for StoredRepr {
    fn from(s: Stored) -> StoredRepr {
        StoredRepr {
            name: s.grant.name,
            rights: s.grant.rights,
            vms: s.grant.vms,
            pool: s.grant.pool,
            sha256: s.sha256,
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Stored>,
}

/// The tokens file's name in the state directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// The bootstrap token's file in the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The bootstrap token's name.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// The daemon's tokens.
#[derive(Debug)]
pub struct TokenStore {
    dir: PathBuf,
    tokens: Mutex<Vec<Stored>>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TokenError + '_ {
    move |error| TokenError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// 32 random bytes from the OS, hex.
pub fn new_secret() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compare without an early exit.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Write `data` to `path` atomically (a temporary file in the same directory, fsynced, then
/// renamed over it) with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TokenError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // The rename is durable once the directory is.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl TokenStore {
    /// Open the tokens of state directory `dir`. On first start (no `tokens.json`), create
    /// the all-rights token "admin" and write its secret to `admin.token` (mode 0600).
    pub fn open(dir: &Path) -> Result<TokenStore, TokenError> {
        let path = dir.join(TOKENS_FILE);
        let store = TokenStore {
            dir: dir.to_path_buf(),
            tokens: Mutex::new(Vec::new()),
        };
        match fs::read(&path) {
            Ok(data) => {
                let file: File = serde_json::from_slice(&data).map_err(|e| TokenError::Io {
                    path: path.clone(),
                    error: io::Error::other(e),
                })?;
                if let Some(t) = file.tokens.iter().find(|t| unhex(&t.sha256).is_none()) {
                    return Err(TokenError::Io {
                        path,
                        error: io::Error::other(format!(
                            "token {:?}: sha256 is not 64 hex digits",
                            t.grant.name
                        )),
                    });
                }
                *store.lock() = file.tokens;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = new_secret().map_err(io_err(&path))?;
                // The secret first: a crash before tokens.json exists starts over.
                let admin = dir.join(ADMIN_TOKEN_FILE);
                write_private(&admin, format!("{secret}\n").as_bytes())?;
                store.lock().push(Stored {
                    grant: Grant::admin(ADMIN_TOKEN_NAME),
                    sha256: hex(&hash(&secret)),
                });
                store.save(&store.lock())?;
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Stored>> {
        // A panic while holding the lock leaves a consistent Vec (every change is one push
        // or one remove): go on with it.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, tokens: &[Stored]) -> Result<(), TokenError> {
        let data = serde_json::to_vec_pretty(&File {
            tokens: tokens.to_vec(),
        })
        .map_err(|e| TokenError::Io {
            path: self.dir.join(TOKENS_FILE),
            error: io::Error::other(e),
        })?;
        write_private(&self.dir.join(TOKENS_FILE), &data)
    }

    /// The grant of the token whose secret is `secret`, if it is a current token.
    pub fn authenticate(&self, secret: &str) -> Option<Grant> {
        let h = hash(secret);
        let tokens = self.lock();
        let mut found = None;
        // Every stored hash is compared, each without an early exit.
        for t in tokens.iter() {
            let stored = unhex(&t.sha256).unwrap_or([0; 32]);
            if ct_eq(&h, &stored) {
                found = Some(t.grant.clone());
            }
        }
        found
    }

    /// Every token's grant, in creation order.
    pub fn list(&self) -> Vec<Grant> {
        self.lock().iter().map(|t| t.grant.clone()).collect()
    }

    /// Add a token with `grant`; its secret (the only time it exists outside the caller).
    pub fn create(&self, mut grant: Grant) -> Result<String, TokenError> {
        grant.validate()?;
        let mut rights = Vec::new();
        for r in Right::ALL {
            if grant.rights.contains(&r) {
                rights.push(r);
            }
        }
        grant.rights = rights;
        let secret = new_secret().map_err(io_err(&self.dir))?;
        let mut tokens = self.lock();
        if tokens.iter().any(|t| t.grant.name == grant.name) {
            return Err(TokenError::Exists(grant.name));
        }
        let mut next = tokens.clone();
        next.push(Stored {
            grant,
            sha256: hex(&hash(&secret)),
        });
        self.save(&next)?;
        *tokens = next;
        Ok(secret)
    }

    /// Remove token `name`: persisted, then refused from the next request on.
    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let mut tokens = self.lock();
        let Some(i) = tokens.iter().position(|t| t.grant.name == name) else {
            return Err(TokenError::NotFound(name.to_string()));
        };
        let mut next = tokens.clone();
        next.remove(i);
        self.save(&next)?;
        *tokens = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-tokens-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn grant(name: &str, rights: &[Right], vms: &[&str], pool: bool) -> Grant {
        Grant {
            name: name.into(),
            rights: rights.to_vec(),
            vms: vms.iter().map(|s| s.to_string()).collect(),
            pool,
        }
    }

    #[test]
    fn first_open_writes_an_admin_token_that_authenticates_with_every_right() {
        let d = dir("boot");

        let store = TokenStore::open(&d).unwrap();

        let secret = fs::read_to_string(d.join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(secret.trim().len(), 64);
        assert_eq!(
            store.authenticate(secret.trim()),
            Some(Grant::admin(ADMIN_TOKEN_NAME))
        );
        assert_eq!(mode(&d.join(ADMIN_TOKEN_FILE)), 0o600);
        assert_eq!(mode(&d.join(TOKENS_FILE)), 0o600);
    }

    #[test]
    fn the_tokens_file_holds_no_secret() {
        let d = dir("nosecret");
        let store = TokenStore::open(&d).unwrap();

        let secret = store
            .create(grant("a", &[Right::Read], &["x"], false))
            .unwrap();

        let file = fs::read_to_string(d.join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(&secret));
        assert!(file.contains(&hex(&hash(&secret))));
    }

    #[test]
    fn a_created_token_survives_a_reopen_and_a_revoked_one_does_not() {
        let d = dir("persist");
        let store = TokenStore::open(&d).unwrap();
        let kept = store
            .create(grant("kept", &[Right::Read], &["x"], false))
            .unwrap();
        let gone = store
            .create(grant("gone", &[Right::Read], &["x"], false))
            .unwrap();
        store.revoke("gone").unwrap();

        let reopened = TokenStore::open(&d).unwrap();

        assert_eq!(
            reopened.authenticate(&kept).map(|g| g.name),
            Some("kept".into())
        );
        assert_eq!(reopened.authenticate(&gone), None);
        assert_eq!(store.authenticate(&gone), None);
    }

    #[test]
    fn a_second_open_does_not_replace_the_admin_token() {
        let d = dir("reopen");
        TokenStore::open(&d).unwrap();
        let first = fs::read_to_string(d.join(ADMIN_TOKEN_FILE)).unwrap();

        let store = TokenStore::open(&d).unwrap();

        assert_eq!(fs::read_to_string(d.join(ADMIN_TOKEN_FILE)).unwrap(), first);
        assert!(store.authenticate(first.trim()).is_some());
    }

    #[test]
    fn a_wrong_secret_does_not_authenticate() {
        let d = dir("wrong");
        let store = TokenStore::open(&d).unwrap();

        assert_eq!(store.authenticate(&"0".repeat(64)), None);
    }

    #[test]
    fn a_duplicate_name_is_refused() {
        let d = dir("dup");
        let store = TokenStore::open(&d).unwrap();

        let e = store.create(grant("admin", &[], &[], false)).unwrap_err();

        assert_eq!(e.status(), 409);
    }

    #[test]
    fn a_star_beside_names_is_invalid() {
        let g = grant("a", &[Right::Read], &["*", "x"], false);

        assert!(matches!(g.validate(), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn a_refusal_names_the_token_the_right_and_the_vm() {
        let g = grant("ops", &[Right::Read], &["web"], false);

        let e = g.check_vm(Right::Start, "web", true).unwrap_err();

        assert_eq!(e.0, "token \"ops\" lacks right \"start\" on VM \"web\"");
    }

    #[test]
    fn the_pool_covers_dynamic_vms_only() {
        let g = grant("p", &[Right::Start], &[], true);

        assert!(g.check_vm(Right::Start, "dyn", false).is_ok());
        assert!(g.check_vm(Right::Start, "static", true).is_err());
    }

    #[test]
    fn a_token_cannot_grant_a_right_it_lacks() {
        let g = grant("ops", &[Right::Tokens, Right::Read], &["*"], false);

        let e = g
            .check_delegation(&grant("x", &[Right::Start], &["a"], false))
            .unwrap_err();

        assert!(e.0.contains("\"start\""), "{}", e.0);
    }

    #[test]
    fn a_token_cannot_grant_a_vm_outside_its_scope() {
        let g = grant("ops", &[Right::Tokens, Right::Read], &["a"], false);

        assert!(
            g.check_delegation(&grant("x", &[Right::Read], &["b"], false))
                .is_err()
        );
        assert!(
            g.check_delegation(&grant("x", &[Right::Read], &["*"], false))
                .is_err()
        );
        assert!(
            g.check_delegation(&grant("x", &[Right::Read], &["a"], false))
                .is_ok()
        );
    }

    #[test]
    fn a_corrupt_tokens_file_is_an_error_naming_it() {
        let d = dir("corrupt");
        fs::write(d.join(TOKENS_FILE), "{\"tokens\": 3}").unwrap();

        let e = TokenStore::open(&d).unwrap_err();

        assert!(e.to_string().contains("tokens.json"), "{e}");
        assert!(!d.join(ADMIN_TOKEN_FILE).exists());
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(new_secret().unwrap(), new_secret().unwrap());
    }
}
