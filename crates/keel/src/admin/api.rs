//! The REST API over a Unix socket (docs/api.yaml). Placeholder until the API lands: the
//! daemon links against [`serve`]'s signature.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use super::model::Supervisor;

/// Serve the API on `listener` until the process ends; tokens live under `state_dir`.
pub fn serve(
    _listener: UnixListener,
    _state_dir: &Path,
    _supervisor: Arc<dyn Supervisor>,
) -> std::io::Result<()> {
    Err(std::io::Error::other("the REST API is not built yet"))
}
