//! The control socket server.
//!
//! Owns the Unix socket: binding it (refusing to steal a live one, replacing
//! a stale one), its mode, reading Varlink calls within limits (at most
//! `MAX_CONNECTIONS` at once, the next told so and closed; a message at most
//! 1 MiB and complete within `MESSAGE_TIMEOUT` of its first byte; a connection
//! idle for `IDLE_TIMEOUT` between calls is closed; all connections together
//! buffer at most `BUFFER_BUDGET`), identifying the peer from SO_PEERCRED, and
//! dispatching: read-only methods are served from the store, changes are sent
//! as commands to the app's supervisor.
//!
//! Must never write releases or the store itself, and must never let one bad
//! or slow client affect another (each connection is its own task; a bad
//! message gets an error reply and closes only that connection).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::protocol::{self, error, method, Call, RemoteError, Reply};
use crate::release::{ReleaseError, Version};
use crate::store::{Actor, Store};
use crate::supervisor::{AppHandle, CommandError, DeployOutcome};

/// What the control server needs: the store to read, the supervisors to command.
pub struct Control {
    store: Store,
    registry: std::sync::RwLock<Registry>,
    authz: Authz,
    /// One permit per connection being served.
    slots: Arc<tokio::sync::Semaphore>,
    /// What incomplete messages may hold in memory, all connections together.
    budget: protocol::Budget,
    /// The fleet, when the agent is a member of one.
    fleet: std::sync::RwLock<Option<Arc<crate::fleet::Fleet>>>,
}

/// Most connections served at once; the next is answered with
/// `TooManyConnections` and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a message may take from its first byte to its NUL.
pub const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection may stay silent between calls (not while a
/// streaming call owns it).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Bytes all incomplete messages together may hold.
pub const BUFFER_BUDGET: usize = 64 * 1024 * 1024;

/// The apps and plugins the agent runs now (replaced on reload).
struct Registry {
    apps: BTreeMap<String, AppHandle>,
    plugins: Vec<protocol::PluginView>,
}

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another agent is listening there.
    #[error("another process is already listening on {0}")]
    InUse(PathBuf),
    /// A configured group does not exist.
    #[error("{0}")]
    Group(String),
    /// The socket could not be created.
    #[error("cannot bind control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The standard service interface, as served to introspecting clients.
const SERVICE_DESCRIPTION: &str = "# The Varlink Service Interface is provided by every varlink service.
interface org.varlink.service

method GetInfo() -> (vendor: string, product: string, version: string, url: string, interfaces: []string)

method GetInterfaceDescription(interface: string) -> (description: string)

error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
error PermissionDenied ()
error ExpectedMore ()
";

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing.
    None,
    /// Read methods: status, releases, history, plugins, check.
    Read,
    /// Everything.
    Admin,
}

/// Decides a peer's access from its credentials: root and the agent's own
/// user are admins; so are members of `admin_group`; members of
/// `socket_group` may read; everyone else is refused.
#[derive(Debug, Clone)]
pub struct Authz {
    agent_uid: u32,
    admin_gid: Option<u32>,
    socket_gid: Option<u32>,
}

fn gid_of(group: &str) -> Result<u32, BindError> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(BindError::Group(format!("group `{group}` does not exist"))),
        Err(e) => Err(BindError::Group(format!(
            "cannot look up group `{group}`: {e}"
        ))),
    }
}

/// What a deploy and a stage are given about the new release.
struct NewRelease<'a> {
    app: &'a str,
    source: &'a str,
    version: &'a str,
    commit: &'a Option<String>,
    message: &'a Option<String>,
    digest: &'a Option<String>,
}

impl<'a> NewRelease<'a> {
    fn of(
        app: &'a str,
        source: &'a str,
        version: &'a str,
        commit: &'a Option<String>,
        message: &'a Option<String>,
        digest: &'a Option<String>,
    ) -> Self {
        NewRelease {
            app,
            source,
            version,
            commit,
            message,
            digest,
        }
    }
}

impl Authz {
    /// Looks the groups up (they must exist).
    pub fn new(admin_group: Option<&str>, socket_group: Option<&str>) -> Result<Authz, BindError> {
        Ok(Authz {
            agent_uid: nix::unistd::geteuid().as_raw(),
            admin_gid: admin_group.map(gid_of).transpose()?,
            socket_gid: socket_group.map(gid_of).transpose()?,
        })
    }

    /// The group the socket file belongs to: `socket_group`, else `admin_group`.
    pub fn socket_gid(&self) -> Option<u32> {
        self.socket_gid.or(self.admin_gid)
    }

    /// Whether `actor` may name a deploy source by path (read with the
    /// agent's rights): root and the agent's own user only.
    pub fn may_pass_paths(&self, actor: &Actor) -> bool {
        actor.uid.is_some_and(|uid| self.is_privileged(uid))
    }

    /// Root and the agent's own user.
    fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || uid == self.agent_uid
    }

    /// Whether the user `uid` is root, the agent's user or a member of `group`.
    pub fn is_member(&self, uid: u32, group: &str) -> bool {
        if self.is_privileged(uid) {
            return true;
        }
        let Ok(gid) = gid_of(group) else { return false };
        let primary = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw());
        primary.is_some_and(|p| peer_groups(uid, p).contains(&gid))
    }

    /// The access of a peer with `uid` and primary `gid`.
    pub fn access(&self, uid: u32, gid: u32) -> Access {
        if self.is_privileged(uid) {
            return Access::Admin;
        }
        let groups = peer_groups(uid, gid);
        if self.admin_gid.is_some_and(|g| groups.contains(&g)) {
            Access::Admin
        } else if self.socket_gid.is_some_and(|g| groups.contains(&g)) {
            Access::Read
        } else {
            Access::None
        }
    }
}

/// The peer's primary group and the groups its user is a member of.
fn peer_groups(uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        if let Ok(name) = std::ffi::CString::new(user.name) {
            if let Ok(list) = nix::unistd::getgrouplist(&name, user.gid) {
                groups.extend(list.into_iter().map(|g| g.as_raw()));
            }
        }
    }
    groups
}

/// Binds the control socket at `path` with mode 0660, replacing a stale socket
/// file but never one that a live process still answers on.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io(std::io::Error::from(e)))?;
    }
    Ok(listener)
}

fn peer_of(stream: &UnixStream, authz: &Authz) -> (Actor, Access) {
    match stream.peer_cred() {
        Ok(cred) => {
            let uid = cred.uid();
            let access = authz.access(uid, cred.gid());
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| uid.to_string());
            (
                Actor {
                    uid: Some(uid),
                    name,
                },
                access,
            )
        }
        Err(_) => (
            Actor {
                uid: None,
                name: "unknown".into(),
            },
            Access::None,
        ),
    }
}

fn command_error(e: CommandError) -> RemoteError {
    let name = match &e {
        CommandError::Busy { .. } => error::BUSY,
        CommandError::ReleaseExists { .. } => error::RELEASE_EXISTS,
        CommandError::NoRollbackTarget { .. } | CommandError::AlreadyActive { .. } => {
            error::NO_ROLLBACK_TARGET
        }
        CommandError::Release(ReleaseError::NotFound { .. }) => error::NO_SUCH_RELEASE,
        CommandError::Release(ReleaseError::InvalidVersion { .. }) => {
            return RemoteError::invalid_parameter("version", e.to_string())
        }
        CommandError::Release(ReleaseError::AlreadyExists { .. }) => error::RELEASE_EXISTS,
        CommandError::Release(_) => error::DEPLOY_FAILED,
        CommandError::Store(_) | CommandError::Journal(_) | CommandError::Internal(_) => {
            error::INTERNAL
        }
        CommandError::ShuttingDown => error::SHUTTING_DOWN,
        CommandError::Vetoed { .. } => error::VETOED,
        CommandError::NothingActive { .. } => error::NO_ACTIVE_RELEASE,
        CommandError::Unsupervised { .. } => error::UNSUPERVISED,
        CommandError::NotPromotable { .. } => error::NOT_PROMOTABLE,
    };
    RemoteError::new(name, e.to_string())
}

fn fleet_error(e: crate::fleet::FleetError) -> RemoteError {
    use crate::fleet::FleetError;
    let name = match &e {
        FleetError::Unavailable(_) => error::FLEET_UNAVAILABLE,
        FleetError::NoRollout(_) => error::NO_SUCH_ROLLOUT,
        FleetError::InProgress { .. } => error::ROLLOUT_IN_PROGRESS,
        FleetError::Refused(_) => error::FLEET_REFUSED,
        FleetError::Denied(_) => error::PERMISSION_DENIED,
        FleetError::Invalid(_) => error::INVALID_PARAMETER,
    };
    RemoteError::new(name, e.to_string())
}

/// Tells a connection over `MAX_CONNECTIONS` so (within a second) and closes it.
async fn refuse(mut stream: UnixStream) {
    let err = RemoteError::new(
        error::TOO_MANY_CONNECTIONS,
        format!("the agent serves at most {MAX_CONNECTIONS} connections at once; try again"),
    );
    let reply = err.to_reply();
    let write = protocol::write_message(&mut stream, &reply);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(error::INTERNAL, e.to_string())
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, RemoteError> {
    serde_json::to_value(v).map_err(internal)
}

impl Control {
    /// A server over these supervisors and this store.
    pub fn new(
        store: Store,
        apps: BTreeMap<String, AppHandle>,
        plugins: Vec<protocol::PluginView>,
        authz: Authz,
    ) -> Self {
        Control {
            store,
            registry: std::sync::RwLock::new(Registry { apps, plugins }),
            authz,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            budget: protocol::Budget::new(BUFFER_BUDGET),
            fleet: std::sync::RwLock::new(None),
        }
    }

    /// Serves the fleet calls through `fleet`.
    pub fn set_fleet(&self, fleet: Arc<crate::fleet::Fleet>) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = Some(fleet);
    }

    fn fleet(&self) -> Result<Arc<crate::fleet::Fleet>, RemoteError> {
        self.fleet
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                RemoteError::new(
                    error::FLEET_NOT_CONFIGURED,
                    "this agent is not a fleet member (no [fleet] in its config)",
                )
            })
    }

    /// Swaps in the supervisors and plugins of a reloaded config.
    pub fn replace(&self, apps: BTreeMap<String, AppHandle>, plugins: Vec<protocol::PluginView>) {
        let mut r = self.registry.write().unwrap_or_else(|p| p.into_inner());
        *r = Registry { apps, plugins };
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.connection(stream).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(refuse(stream));
                    }
                },
                Err(e) => {
                    tracing::error!("control socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one connection to its end, as `serve` does for each it
    /// accepts (for an embedding program, the tests and the fuzzer).
    pub async fn serve_stream(&self, stream: UnixStream) {
        self.connection(stream).await;
    }

    async fn connection(&self, stream: UnixStream) {
        let (actor, access) = peer_of(&stream, &self.authz);
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(crate::fdpass::FdReader::new(read));
        loop {
            // Silent between calls for too long: closed, to free the slot.
            match tokio::time::timeout(IDLE_TIMEOUT, reader.fill_buf()).await {
                Ok(Ok(buf)) if !buf.is_empty() => {}
                _ => return,
            }
            let read =
                protocol::read_message(&mut reader, protocol::MAX_MESSAGE, Some(&self.budget));
            let read = match tokio::time::timeout(MESSAGE_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "message not complete within {} of its first byte",
                        humantime::format_duration(MESSAGE_TIMEOUT)
                    ),
                )),
            };
            let bytes = match read {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    let err =
                        RemoteError::invalid_parameter("message", format!("bad message: {e}"));
                    let _ = protocol::write_message(&mut write, &err.to_reply()).await;
                    return;
                }
            };
            let call: Call = match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    let err = RemoteError::invalid_parameter(
                        "message",
                        format!("bad message: not a Varlink call: {e}"),
                    );
                    let _ = protocol::write_message(&mut write, &err.to_reply()).await;
                    return;
                }
            };
            let oneway = call.oneway;
            let mut authorized = self.authorize(&call, &actor, access);
            // A deploy's source descriptor, if it declares one.
            let mut opened = None;
            if authorized.is_ok() && (call.method == method::DEPLOY || call.method == method::STAGE)
            {
                match self.deploy_source(&call, &actor, reader.get_mut()) {
                    Ok(file) => opened = file,
                    Err(e) => authorized = Err(e),
                }
            }
            if authorized.is_ok() && call.method == method::WATCH {
                // A watch owns its connection until either side ends it.
                self.watch(&call, &mut reader, &mut write).await;
                return;
            }
            if authorized.is_ok() && call.method == method::DEPLOY && call.more && !oneway {
                if self
                    .deploy_streaming(&call, &actor, opened, &mut write)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let reply = match authorized {
                Err(e) => e.to_reply(),
                Ok(()) => match self.dispatch(&call, &actor, opened).await {
                    Ok(parameters) => Reply {
                        error: None,
                        parameters,
                        continues: false,
                    },
                    Err(e) => e.to_reply(),
                },
            };
            if !oneway && protocol::write_message(&mut write, &reply).await.is_err() {
                return;
            }
        }
    }

    /// The descriptor a `Deploy` declares (`source_fd`), taken from what
    /// came on the connection; a caller other than root must pass one.
    fn deploy_source(
        &self,
        call: &Call,
        actor: &Actor,
        reader: &mut crate::fdpass::FdReader,
    ) -> Result<Option<std::fs::File>, RemoteError> {
        let declared = call.parameters.get("source_fd") == Some(&serde_json::Value::Bool(true));
        let fd = reader
            .take_fd()
            .map_err(|e| RemoteError::invalid_parameter("source_fd", e.to_string()))?;
        let opened = match (declared, fd) {
            (true, Some(fd)) => Some(std::fs::File::from(fd)),
            (true, None) => {
                return Err(RemoteError::invalid_parameter(
                    "source_fd",
                    "source_fd is set but no descriptor came with the call",
                ))
            }
            // A descriptor the call does not declare is closed.
            (false, _) => None,
        };
        if opened.is_none() && !self.authz.may_pass_paths(actor) {
            return Err(RemoteError::new(
                error::PERMISSION_DENIED,
                format!(
                    "user {} passes the source as a descriptor (source_fd, as rollbackctl does): \
                     a path would be read with the agent's rights",
                    actor.name
                ),
            ));
        }
        Ok(opened)
    }

    /// Refuses a call the peer's access does not allow.
    fn authorize(&self, call: &Call, actor: &Actor, access: Access) -> Result<(), RemoteError> {
        let needed = match call.method.as_str() {
            method::DEPLOY
            | method::STAGE
            | method::ROLLBACK
            | method::ACTIVATE
            | method::PROMOTE
            | method::PAUSE
            | method::RESUME
            | method::FLEET_ROLLOUT
            | method::FLEET_PAUSE
            | method::FLEET_RESUME
            | method::FLEET_PROMOTE
            | method::FLEET_ABORT
            | method::FLEET_HALT
            | method::FLEET_UNHALT => Access::Admin,
            _ => Access::Read,
        };
        if access >= needed {
            return Ok(());
        }
        let uid = actor
            .uid
            .map(|u| u.to_string())
            .unwrap_or_else(|| "?".into());
        let what = if needed == Access::Admin {
            "change state (root or a member of admin_group)"
        } else {
            "read (root, or a member of socket_group or admin_group)"
        };
        Err(RemoteError::new(
            error::PERMISSION_DENIED,
            format!("user {} (uid {uid}) may not {what}", actor.name),
        ))
    }

    fn handle(&self, app: &str) -> Result<AppHandle, RemoteError> {
        self.registry().apps.get(app).cloned().ok_or_else(|| {
            RemoteError::new(
                error::NO_SUCH_APP,
                format!("no app named `{app}` in the agent's config"),
            )
        })
    }

    async fn dispatch(
        &self,
        call: &Call,
        actor: &Actor,
        opened: Option<std::fs::File>,
    ) -> Result<serde_json::Value, RemoteError> {
        tracing::debug!(method = %call.method, user = %actor.name, "control call");
        match call.method.as_str() {
            method::STATUS => self.status(protocol::parameters(&call.parameters)?),
            method::RELEASES => self.releases(protocol::parameters(&call.parameters)?),
            method::HISTORY => self.history(protocol::parameters(&call.parameters)?),
            method::PLUGINS => self.plugins(protocol::parameters(&call.parameters)?),
            method::GET_INFO => Ok(serde_json::json!({
                "vendor": "rollback-agent",
                "product": "rollbackd",
                "version": env!("CARGO_PKG_VERSION"),
                "url": env!("CARGO_PKG_REPOSITORY"),
                "interfaces": [protocol::SERVICE_INTERFACE, protocol::INTERFACE],
            })),
            method::GET_INTERFACE_DESCRIPTION => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    interface: String,
                }
                let p: P = protocol::parameters(&call.parameters)?;
                if p.interface == protocol::INTERFACE {
                    Ok(serde_json::json!({ "description": protocol::INTERFACE_DESCRIPTION }))
                } else if p.interface == protocol::SERVICE_INTERFACE {
                    Ok(serde_json::json!({ "description": SERVICE_DESCRIPTION }))
                } else {
                    Err(RemoteError::new(
                        error::INTERFACE_NOT_FOUND,
                        format!("unknown interface `{}`", p.interface),
                    ))
                }
            }
            method::ACTIVATE => {
                let p: protocol::ActivateParams = protocol::parameters(&call.parameters)?;
                let handle = self.handle(&p.app)?;
                let version = Version::parse(&p.version)
                    .map_err(|e| RemoteError::invalid_parameter("version", e.to_string()))?;
                let done = handle
                    .activate(version, actor.clone())
                    .await
                    .map_err(command_error)?;
                to_value(&protocol::RollbackReply {
                    app: p.app,
                    from: done.from,
                    to: done.to,
                })
            }
            method::PROMOTE => {
                let p: protocol::PromoteParams = protocol::parameters(&call.parameters)?;
                let version = self
                    .handle(&p.app)?
                    .promote(p.reason.clone(), actor.clone())
                    .await
                    .map_err(command_error)?;
                to_value(&protocol::PromoteReply {
                    app: p.app,
                    version,
                })
            }
            method::PAUSE | method::RESUME => {
                let p: protocol::AppOnly = protocol::parameters(&call.parameters)?;
                let paused = call.method == method::PAUSE;
                self.handle(&p.app)?
                    .set_paused(paused, actor.clone())
                    .await
                    .map_err(command_error)?;
                to_value(&protocol::PauseReply { app: p.app, paused })
            }
            method::CHECK => {
                let p: protocol::AppOnly = protocol::parameters(&call.parameters)?;
                let runs = self
                    .handle(&p.app)?
                    .check_now()
                    .await
                    .map_err(command_error)?;
                let version = self
                    .store
                    .app(&p.app)
                    .map_err(internal)?
                    .and_then(|a| a.active);
                let checks = runs.into_iter().map(protocol::CheckRunView::from).collect();
                to_value(&protocol::CheckReply {
                    app: p.app,
                    version,
                    checks,
                })
            }
            method::DEPLOY => {
                self.deploy(protocol::parameters(&call.parameters)?, actor, opened)
                    .await
            }
            method::ROLLBACK => {
                self.rollback(protocol::parameters(&call.parameters)?, actor)
                    .await
            }
            method::STAGE => {
                self.stage(protocol::parameters(&call.parameters)?, actor, opened)
                    .await
            }
            m if m.starts_with("io.rollback.Agent.Fleet") => self.fleet_call(call, actor).await,
            other
                if other.starts_with(&format!("{}.", protocol::INTERFACE))
                    || other.starts_with(&format!("{}.", protocol::SERVICE_INTERFACE)) =>
            {
                Err(RemoteError::new(
                    error::METHOD_NOT_FOUND,
                    format!("unknown method `{other}`"),
                ))
            }
            other => Err(RemoteError::new(
                error::INTERFACE_NOT_FOUND,
                format!("unknown interface in `{other}`"),
            )),
        }
    }

    async fn fleet_call(
        &self,
        call: &Call,
        actor: &Actor,
    ) -> Result<serde_json::Value, RemoteError> {
        use crate::fleet::Action;
        let action = match call.method.as_str() {
            method::FLEET_PAUSE => Some(Action::Pause),
            method::FLEET_RESUME => Some(Action::Resume),
            method::FLEET_PROMOTE => Some(Action::Promote),
            method::FLEET_ABORT => Some(Action::Abort),
            _ => None,
        };
        let known = action.is_some()
            || [
                method::FLEET_STATUS,
                method::FLEET_HOSTS,
                method::FLEET_ROLLOUT,
                method::FLEET_HALT,
                method::FLEET_UNHALT,
            ]
            .contains(&call.method.as_str());
        if !known {
            return Err(RemoteError::new(
                error::METHOD_NOT_FOUND,
                format!("unknown method `{}`", call.method),
            ));
        }
        let fleet = self.fleet()?;
        if let Some(action) = action {
            let p: protocol::FleetActParams = protocol::parameters(&call.parameters)?;
            let (group, _) = fleet.approvers();
            let approver = match group {
                None => true,
                Some(g) => actor.uid.is_some_and(|uid| self.authz.is_member(uid, g)),
            };
            let r = fleet
                .act(&p.app, action, p.reason, actor, approver)
                .await
                .map_err(fleet_error)?;
            return to_value(&serde_json::json!({ "rollout": r }));
        }
        match call.method.as_str() {
            method::FLEET_STATUS => {
                let p: protocol::FleetStatusParams = protocol::parameters(&call.parameters)?;
                let view = fleet.status(p.app.as_deref()).await.map_err(fleet_error)?;
                to_value(&view)
            }
            method::FLEET_HOSTS => {
                let _: protocol::NoParams = protocol::parameters(&call.parameters)?;
                let view = fleet.status(None).await.map_err(fleet_error)?;
                to_value(&serde_json::json!({ "fleet": view.fleet, "hosts": view.hosts }))
            }
            method::FLEET_ROLLOUT => {
                let p: protocol::FleetRolloutParams = protocol::parameters(&call.parameters)?;
                let new = crate::fleet::NewRollout::from_params(&p)
                    .map_err(|(param, e)| RemoteError::invalid_parameter(param, e))?;
                let r = fleet.rollout(new, actor).await.map_err(fleet_error)?;
                to_value(&serde_json::json!({ "rollout": r }))
            }
            method::FLEET_HALT => {
                let p: protocol::FleetHaltParams = protocol::parameters(&call.parameters)?;
                let halt = fleet.halt(p.reason, actor).await.map_err(fleet_error)?;
                to_value(&serde_json::json!({ "halt": halt }))
            }
            _ => {
                let _: protocol::NoParams = protocol::parameters(&call.parameters)?;
                let was = fleet.unhalt(actor).await.map_err(fleet_error)?;
                to_value(&serde_json::json!({ "was_halted": was }))
            }
        }
    }

    fn status(&self, p: protocol::StatusParams) -> Result<serde_json::Value, RemoteError> {
        let names: Vec<String> = match &p.app {
            Some(app) => {
                self.handle(app)?;
                vec![app.clone()]
            }
            None => self.registry().apps.keys().cloned().collect(),
        };
        let mut apps = Vec::new();
        for name in names {
            let rec = self
                .store
                .app(&name)
                .map_err(internal)?
                .unwrap_or_else(|| crate::domain::App::new(&name));
            apps.push(protocol::AppStatus {
                store_unwritable: self.store.unwritable(),
                ..rec.into()
            });
        }
        to_value(&protocol::StatusReply { apps })
    }

    fn plugins(&self, p: protocol::StatusParams) -> Result<serde_json::Value, RemoteError> {
        if let Some(app) = &p.app {
            self.handle(app)?;
        }
        let plugins = self
            .registry()
            .plugins
            .iter()
            .filter(|v| p.app.as_ref().is_none_or(|a| *a == v.app))
            .cloned()
            .collect();
        to_value(&protocol::PluginsReply { plugins })
    }

    fn releases(&self, p: protocol::AppParams) -> Result<serde_json::Value, RemoteError> {
        self.handle(&p.app)?;
        let active = self
            .store
            .app(&p.app)
            .map_err(internal)?
            .and_then(|a| a.active);
        let mut releases: Vec<protocol::ReleaseView> = self
            .store
            .releases(&p.app)
            .map_err(internal)?
            .into_iter()
            .map(|r| protocol::ReleaseView {
                current: active.as_deref() == Some(r.version.as_str()),
                state: r.state,
                version: r.version,
                source: r.source,
                created_at_ms: r.created_at_ms,
                created_at: protocol::rfc3339(r.created_at_ms),
                activated_at_ms: r.activated_at_ms,
                activated_at: r.activated_at_ms.map(protocol::rfc3339),
                decided_at_ms: r.decided_at_ms,
                reason: r.reason,
                commit: r.commit,
                tag: r.tag,
                message: r.message,
                digest: r.digest,
            })
            .collect();
        releases.sort_by(|a, b| (a.created_at_ms, &a.version).cmp(&(b.created_at_ms, &b.version)));
        to_value(&protocol::ReleasesReply {
            app: p.app,
            releases,
        })
    }

    fn history(&self, p: protocol::AppParams) -> Result<serde_json::Value, RemoteError> {
        self.handle(&p.app)?;
        let limit = p.limit.unwrap_or(50).clamp(1, 10_000) as usize;
        let events = self
            .store
            .history(&p.app, limit)
            .map_err(internal)?
            .into_iter()
            .map(|event| protocol::EventView {
                time: protocol::rfc3339(event.at_ms),
                event,
            })
            .collect();
        to_value(&protocol::HistoryReply { app: p.app, events })
    }

    async fn deploy(
        &self,
        p: protocol::DeployParams,
        actor: &Actor,
        opened: Option<std::fs::File>,
    ) -> Result<serde_json::Value, RemoteError> {
        let new = NewRelease::of(
            &p.app, &p.source, &p.version, &p.commit, &p.message, &p.digest,
        );
        let (handle, version, source, meta) = self.new_release(new, opened)?;
        let outcome = handle
            .deploy(source, version.clone(), actor.clone(), p.wait, meta)
            .await
            .map_err(command_error)?;
        let (name, active, reason) = match outcome {
            DeployOutcome::Baking => ("baking", Some(version.to_string()), None),
            DeployOutcome::Good => ("good", Some(version.to_string()), None),
            DeployOutcome::RolledBack { to, reason } => ("rolled-back", Some(to), Some(reason)),
            DeployOutcome::Degraded { reason } => ("degraded", None, Some(reason)),
            DeployOutcome::Held { reason } => ("held", Some(version.to_string()), Some(reason)),
        };
        to_value(&protocol::DeployReply {
            app: p.app,
            version: version.to_string(),
            outcome: name.to_string(),
            active,
            reason,
            event: None,
        })
    }

    /// `Stage`: the release staged and recorded beside the active one.
    async fn stage(
        &self,
        p: protocol::StageParams,
        actor: &Actor,
        opened: Option<std::fs::File>,
    ) -> Result<serde_json::Value, RemoteError> {
        let new = NewRelease::of(
            &p.app, &p.source, &p.version, &p.commit, &p.message, &p.digest,
        );
        let (handle, version, source, meta) = self.new_release(new, opened)?;
        let staged = handle
            .stage(source, version, actor.clone(), meta)
            .await
            .map_err(command_error)?;
        let digest = self
            .store
            .release(&p.app, &staged)
            .map_err(internal)?
            .and_then(|r| r.digest);
        to_value(&protocol::StageReply {
            app: p.app,
            version: staged,
            digest,
        })
    }

    /// The checked parameters of a deploy or a stage.
    fn new_release(
        &self,
        p: NewRelease<'_>,
        opened: Option<std::fs::File>,
    ) -> Result<
        (
            AppHandle,
            Version,
            crate::supervisor::Source,
            crate::supervisor::DeployMeta,
        ),
        RemoteError,
    > {
        let handle = self.handle(p.app)?;
        let version = Version::parse(p.version)
            .map_err(|e| RemoteError::invalid_parameter("version", e.to_string()))?;
        let source = PathBuf::from(p.source);
        if !source.is_absolute() {
            return Err(RemoteError::invalid_parameter(
                "source",
                format!("source `{}` must be an absolute path", p.source),
            ));
        }
        if let Some(c) = p.commit {
            if c.is_empty() || c.len() > 128 || c.chars().any(char::is_control) {
                return Err(RemoteError::invalid_parameter(
                    "commit",
                    "commit must be 1 to 128 printable characters",
                ));
            }
        }
        if p.message
            .as_ref()
            .is_some_and(|m| m.len() > crate::release::MAX_SUMMARY)
        {
            return Err(RemoteError::invalid_parameter(
                "message",
                format!(
                    "message is longer than {} bytes",
                    crate::release::MAX_SUMMARY
                ),
            ));
        }
        let digest = match p.digest {
            None => None,
            Some(d) => {
                let d = d.to_ascii_lowercase();
                let hex = d.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(RemoteError::invalid_parameter(
                        "digest",
                        "digest must be sha256: followed by 64 hex digits",
                    ));
                }
                Some(d)
            }
        };
        let meta = crate::supervisor::DeployMeta {
            commit: p.commit.clone(),
            message: p.message.clone(),
            digest,
        };
        let source = crate::supervisor::Source {
            path: source,
            opened,
        };
        Ok((handle, version, source, meta))
    }

    /// `Watch`: one reply per live event (of one app, or all) until the
    /// client hangs up or the agent stops.
    async fn watch(
        &self,
        call: &Call,
        reader: &mut BufReader<crate::fdpass::FdReader>,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) {
        let start = protocol::parameters::<protocol::WatchParams>(&call.parameters).and_then(|p| {
            if let Some(app) = &p.app {
                self.handle(app)?;
            }
            if call.more {
                Ok(p)
            } else {
                Err(RemoteError::new(
                    error::EXPECTED_MORE,
                    "Watch streams its replies: call it with `more`",
                ))
            }
        });
        let p = match start {
            Ok(p) => p,
            Err(e) => {
                let _ = protocol::write_message(write, &e.to_reply()).await;
                return;
            }
        };
        let mut watcher = self.store.feed().subscribe();
        loop {
            tokio::select! {
                item = watcher.next() => {
                    let Some(event) = item else {
                        let e = RemoteError::new(error::SHUTTING_DOWN, "the agent is stopping");
                        let _ = protocol::write_message(write, &e.to_reply()).await;
                        return;
                    };
                    if p.app.as_ref().is_some_and(|a| *a != event.app && event.kind != crate::live::LiveKind::Lagged) {
                        continue;
                    }
                    let reply = Reply {
                        error: None,
                        parameters: serde_json::json!({ "event": &*event }),
                        continues: true,
                    };
                    if protocol::write_message(write, &reply).await.is_err() {
                        return;
                    }
                }
                // End of stream, or anything sent: the client is done.
                _ = reader.fill_buf() => return,
            }
        }
    }

    /// `Deploy` with `more`: a `running` reply per event of the app while
    /// the deploy goes on, then the final reply. Errors only when the client
    /// cannot be written to.
    async fn deploy_streaming(
        &self,
        call: &Call,
        actor: &Actor,
        opened: Option<std::fs::File>,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let p: protocol::DeployParams = match protocol::parameters(&call.parameters) {
            Ok(p) => p,
            Err(e) => return protocol::write_message(write, &e.to_reply()).await,
        };
        let (app, version) = (p.app.clone(), p.version.clone());
        let progress = |event: &crate::live::LiveEvent| Reply {
            error: None,
            parameters: serde_json::to_value(protocol::DeployReply {
                app: app.clone(),
                version: version.clone(),
                outcome: "running".into(),
                active: None,
                reason: None,
                event: Some(event.clone()),
            })
            .unwrap_or_default(),
            continues: true,
        };
        let mut watcher = self.store.feed().subscribe();
        let deploy = self.deploy(p, actor, opened);
        tokio::pin!(deploy);
        let result = loop {
            tokio::select! {
                r = &mut deploy => break r,
                Some(event) = watcher.next() => {
                    if event.app == app {
                        protocol::write_message(write, &progress(&event)).await?;
                    }
                }
            }
        };
        // Events recorded just before the deploy returned.
        while let Some(event) = watcher.try_next() {
            if event.app == app {
                protocol::write_message(write, &progress(&event)).await?;
            }
        }
        let reply = match result {
            Ok(parameters) => Reply {
                error: None,
                parameters,
                continues: false,
            },
            Err(e) => e.to_reply(),
        };
        protocol::write_message(write, &reply).await
    }

    async fn rollback(
        &self,
        p: protocol::RollbackParams,
        actor: &Actor,
    ) -> Result<serde_json::Value, RemoteError> {
        let handle = self.handle(&p.app)?;
        let to = match &p.to {
            Some(v) => Some(
                Version::parse(v)
                    .map_err(|e| RemoteError::invalid_parameter("to", e.to_string()))?,
            ),
            None => None,
        };
        let done = handle
            .rollback(to, p.reason, actor.clone())
            .await
            .map_err(command_error)?;
        to_value(&protocol::RollbackReply {
            app: p.app,
            from: done.from,
            to: done.to,
        })
    }
}

impl From<crate::domain::App> for protocol::AppStatus {
    fn from(rec: crate::domain::App) -> Self {
        protocol::AppStatus {
            app: rec.name,
            state: rec.state,
            active: rec.active,
            last_good: rec.last_good,
            reason: rec.reason,
            bake_until_ms: rec.bake_until_ms,
            checks: rec
                .checks
                .into_iter()
                .map(|(name, c)| (name, c.into()))
                .collect(),
            paused: rec.paused,
            store_unwritable: None,
        }
    }
}

impl From<crate::domain::CheckStatus> for protocol::CheckView {
    fn from(c: crate::domain::CheckStatus) -> Self {
        protocol::CheckView {
            outcome: c.outcome,
            summary: c.summary,
            at_ms: c.at_ms,
            duration_ms: c.duration_ms,
            consecutive_failures: c.consecutive_failures,
            runs: c.runs,
            http_retries: c.http_retries,
            metrics: c.metrics,
        }
    }
}

impl From<crate::supervisor::CheckRun> for protocol::CheckRunView {
    fn from(r: crate::supervisor::CheckRun) -> Self {
        protocol::CheckRunView {
            name: r.name,
            severity: r.severity,
            outcome: r.outcome,
            summary: r.summary,
            metrics: r.metrics,
            duration_ms: r.duration_ms,
        }
    }
}
