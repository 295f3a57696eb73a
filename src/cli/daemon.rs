//! Running a mount: in the foreground, or as a background daemon started without fork.
//!
//! Background mode re-executes this binary (`std::env::current_exe`) in the foreground with the
//! write end of a pipe, whose number is passed in [`READY_ENV`]. The child detaches (`setsid`,
//! stdio on /dev/null or the `--log` file), mounts, and writes `ok\n` or `error: MESSAGE\n` to the
//! pipe; the parent waits for that line and exits 0 or 2 (also 2 when the child dies first).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use unionfs::fuse::session;
use unionfs::{SetupError, Union};

use super::pidfile::PidFile;
use super::setup_message;
use super::spec::MountSpec;

/// Names the file descriptor of the ready pipe in a daemon child.
pub const READY_ENV: &str = "UNIONFS_READY_FD";

/// After a signal has detached the mount, files still open keep it (and us) alive; like libfuse we
/// then exit anyway, which aborts the connection (those files get ENOTCONN).
const SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// The child's end of the ready pipe.
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// The ready pipe handed down by a background parent, if this process is such a child.
    ///
    /// The inherited descriptor is reopened through /proc/self/fd, which needs no `unsafe`
    /// (taking ownership of a raw fd would). The original stays open until we exit; it is only a
    /// pipe end. `O_NONBLOCK` keeps the open from blocking if the parent is already gone.
    pub fn from_env() -> Option<ReadyPipe> {
        let fd: u32 = std::env::var(READY_ENV).ok()?.parse().ok()?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{fd}"))
            .ok()?;
        f.metadata().ok()?.file_type().is_fifo().then_some(ReadyPipe(f))
    }

    pub fn ok(mut self) {
        let _ = self.0.write_all(b"ok\n");
    }

    pub fn error(mut self, msg: &str) {
        let _ = self
            .0
            .write_all(format!("error: {}\n", msg.replace('\n', " ")).as_bytes());
    }
}

/// Starts the daemon in the background with `child_args` (our arguments with the foreground flag
/// added) and waits until it has mounted or failed.
pub fn spawn_background(child_args: Vec<OsString>, env: &[(&str, String)], log: Option<&Path>) -> ExitCode {
    match try_spawn(child_args, env, log) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("unionfs: cannot start the daemon: {e}");
            ExitCode::from(2)
        }
    }
}

fn try_spawn(child_args: Vec<OsString>, env: &[(&str, String)], log: Option<&Path>) -> io::Result<ExitCode> {
    let stderr = match log {
        Some(p) => Stdio::from(open_log(p)?),
        None => Stdio::null(),
    };
    // CLOEXEC everywhere except on the child's end, which must survive the exec (we are still
    // single-threaded, so no other child can inherit it).
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::fcntl_setfd(&wr, rustix::io::FdFlags::empty())?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(child_args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(READY_ENV, wr.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    drop(wr);
    let mut line = String::new();
    BufReader::new(File::from(rd)).read_line(&mut line)?;
    let line = line.trim_end();
    if line == "ok" {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(msg) = line.strip_prefix("error: ") {
        eprintln!("unionfs: {msg}");
        let _ = child.wait();
        return Ok(ExitCode::from(2));
    }
    let status = child.wait()?;
    eprintln!("unionfs: the daemon exited before the mount was ready ({status})");
    Ok(ExitCode::from(2))
}

fn open_log(p: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(p)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", p.display())))
}

/// Logs to stderr (or `log`), filtered by UNIONFS_LOG or RUST_LOG (default `warn`, `debug` with
/// `-d`). fuser logs through `log`; tracing-subscriber bridges it.
fn init_logging(debug: bool, log: Option<&Path>) -> io::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_from_env("UNIONFS_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "warn,unionfs::stats=info" }));
    let (writer, ansi) = match log {
        Some(p) => (BoxMakeWriter::new(std::sync::Mutex::new(open_log(p)?)), false),
        None => (BoxMakeWriter::new(io::stderr), io::stderr().is_terminal()),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .try_init();
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every live directory and open file
/// holds a descriptor.
fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let Some(max) = lim.maximum else { return };
    if lim.current.is_some_and(|c| c < max) {
        let new = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if let Err(e) = setrlimit(Resource::Nofile, new) {
            tracing::warn!("cannot raise the open file limit to {max}: {e}");
        }
    }
}

/// Why the daemon could not start: its exit status and one line for the user.
struct Failure(u8, String);

/// A mount made, not yet serving.
struct Started {
    mounted: session::Mounted,
    union: Arc<Union>,
    signals: signal_hook::iterator::Signals,
    mountpoint: PathBuf,
    /// The upper and workdir, ours until the daemon exits (see `unionfs::inuse`).
    _in_use: Vec<unionfs::inuse::DirLock>,
}

/// Mounts and serves in this process until unmounted. `ready` is set in a background child.
pub fn serve(spec: MountSpec, ready: Option<ReadyPipe>) -> ExitCode {
    let daemon_child = ready.is_some();
    match start(&spec, daemon_child) {
        Ok(started) => run_until_unmounted(started, ready, daemon_child),
        Err(Failure(code, msg)) => {
            match ready {
                Some(r) => {
                    tracing::error!("{msg}");
                    r.error(&msg)
                }
                None => eprintln!("unionfs: {msg}"),
            }
            ExitCode::from(code)
        }
    }
}

/// Everything up to a mount that works: logging, signals, the checked configuration, the
/// union's layers, the FUSE session. A failure changes nothing on disk.
fn start(spec: &MountSpec, daemon_child: bool) -> Result<Started, Failure> {
    if daemon_child {
        // Leave the parent's session and terminal: no SIGHUP/SIGINT from it.
        let _ = rustix::process::setsid();
    }
    // A background child already has its stderr on the log file.
    let log = if daemon_child { None } else { spec.log.as_deref() };
    init_logging(spec.debug, log).map_err(|e| Failure(2, e.to_string()))?;
    for w in &spec.warnings {
        eprintln!("unionfs: warning: {w}");
    }
    raise_nofile_limit();
    // signal-hook delivers signals to an ordinary thread through a self-pipe, so we write no
    // signal handler (and no `unsafe`) ourselves. Registered before mounting, so a signal that
    // arrives meanwhile is not lost; acted on once the mount exists.
    let signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1])
        .map_err(|e| Failure(1, format!("cannot set up signal handling: {e}")))?;
    let setup = |e: SetupError| Failure(2, setup_message(&e));
    let mut prepared = spec.prepare().map_err(|e| Failure(2, e))?;
    if daemon_child {
        super::image::take_pinned(&mut prepared.config);
    } else if let Some(pinned) = super::image::index(&prepared.config).map_err(|e| Failure(2, e))? {
        if let Some(img) = prepared.config.image.as_mut() {
            img.reference = pinned;
        }
    }
    let (cfg, mountpoint) = (prepared.config, prepared.mountpoint);
    let mountpoint = std::fs::canonicalize(&mountpoint).map_err(|e| {
        setup(SetupError::Io {
            role: "mountpoint",
            path: mountpoint,
            source: e,
        })
    })?;
    if daemon_child {
        // Paths are canonical now; do not keep the caller's directory busy.
        let _ = std::env::set_current_dir("/");
    }
    let created_workdir = cfg.workdir.as_ref().filter(|w| !w.exists()).cloned();
    let in_use = unionfs::inuse::hold_for_mount(&cfg).map_err(setup)?;
    // Modes of new files come from the callers (the kernel applies their umask, or sends it).
    rustix::process::umask(rustix::fs::Mode::empty());
    let union = Union::new(&cfg).map(Arc::new).map_err(|e| {
        remove_workdir(created_workdir.as_deref());
        setup(e)
    })?;
    if union.writable() && !union.atime_by_mount() {
        tracing::debug!("access times follow the upper's own mount options (but noatime): no private mount");
    }
    let mounted = session::mount(Arc::clone(&union), &mountpoint, &prepared.session).map_err(|e| {
        remove_workdir(created_workdir.as_deref());
        Failure(2, mount_error_message(&e, &mountpoint))
    })?;
    Ok(Started {
        mounted,
        union,
        signals,
        mountpoint,
        _in_use: in_use,
    })
}

/// Tells the parent the mount is ready and serves until it is unmounted.
fn run_until_unmounted(s: Started, ready: Option<ReadyPipe>, daemon_child: bool) -> ExitCode {
    let mountpoint = s.mountpoint;
    let pidfile = match PidFile::create(&mountpoint) {
        Ok(p) => {
            tracing::debug!("pid file {}", p.path().display());
            Some(Arc::new(p))
        }
        Err(e) => {
            tracing::warn!("cannot write a pid file (`unionfs umount` will not wait for this daemon): {e}");
            None
        }
    };
    spawn_signal_thread(s.signals, mountpoint.clone(), pidfile.clone(), s.union);
    tracing::info!("mounted {}", mountpoint.display());
    if let Some(r) = ready {
        r.ok();
    }
    let r = s.mounted.run();
    if let Some(p) = &pidfile {
        p.remove();
    }
    match r {
        Ok(()) => {
            tracing::info!("unmounted {}", mountpoint.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("serving {}: {e}", mountpoint.display());
            if !daemon_child {
                eprintln!("unionfs: serving {}: {e}", mountpoint.display());
            }
            ExitCode::from(1)
        }
    }
}

/// On SIGTERM, SIGINT or SIGHUP: detach the mount, which ends the session and makes `run`
/// return; if open files keep it alive past the grace period, exit anyway. On SIGUSR1: log what
/// the daemon holds (`Union::stats`, resident memory) at info level.
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    mountpoint: PathBuf,
    pidfile: Option<Arc<PidFile>>,
    union: Arc<Union>,
) {
    let body = move || {
        let Some(sig) = signals.forever().find(|&s| {
            if s == libc::SIGUSR1 {
                tracing::info!(target: "unionfs::stats", "{} rss_kib={}", union.stats(), rss_kib().unwrap_or(0));
            }
            s != libc::SIGUSR1
        }) else {
            return;
        };
        tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
        let code = match session::unmount(&mountpoint, true) {
            Ok(()) => 0,
            // Already gone (unmounted by someone else): `run` is returning.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => 0,
            Err(e) => {
                tracing::error!("unmount {}: {e}", mountpoint.display());
                1
            }
        };
        std::thread::sleep(SIGNAL_GRACE);
        if code == 0 {
            tracing::warn!(
                "files still open on {} after unmount; exiting anyway",
                mountpoint.display()
            );
        }
        if let Some(p) = &pidfile {
            p.remove();
        }
        std::process::exit(code);
    };
    if let Err(e) = std::thread::Builder::new().name("signals".into()).spawn(body) {
        tracing::warn!("cannot start the signal thread: {e}");
    }
}

/// This process's resident memory (VmRSS), in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Removes a workdir we created for a mount that then failed, so failure changes nothing.
fn remove_workdir(w: Option<&Path>) {
    if let Some(w) = w {
        let _ = std::fs::remove_dir_all(w);
    }
}

/// One line saying why mounting failed.
fn mount_error_message(e: &io::Error, mountpoint: &Path) -> String {
    let dev_fuse = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .err()
    };
    match e.raw_os_error() {
        Some(libc::EACCES) if dev_fuse().is_some_and(|d| d.kind() == io::ErrorKind::PermissionDenied) => {
            return "cannot open /dev/fuse: permission denied".into();
        }
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) if !Path::new("/dev/fuse").exists() => {
            return "cannot open /dev/fuse: no such device (is the fuse module loaded? try `modprobe fuse`)".into();
        }
        Some(libc::ENOTCONN) => {
            return setup_message(&SetupError::Io {
                role: "mountpoint",
                path: mountpoint.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::ENOTCONN),
            });
        }
        _ => {}
    }
    // fuser reports a failed mount(2) as "Error calling mount() at .. with .. and flags=..: ERRNO".
    let text = e.to_string();
    let text = match text.find("Error calling mount()") {
        Some(_) => text
            .rfind("flags=")
            .and_then(|i| text[i..].find(": ").map(|j| i + j + 2))
            .map(|i| format!("mount(2) failed: {}", &text[i..]))
            .unwrap_or(text),
        None => text.trim().to_string(),
    };
    format!("mount {}: {}", mountpoint.display(), text)
}
