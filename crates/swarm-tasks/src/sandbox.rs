//! Sandboxed execution of untrusted programs (model-written Python and shell).
//!
//! Isolation is bubblewrap (`bwrap`, Debian package `bubblewrap`) plus rlimits:
//!
//! - namespaces: user, mount, PID, network, IPC, UTS, cgroup. The PID namespace means nothing a
//!   run starts survives it: when the run's first process exits, or when we kill it, the kernel
//!   kills everything else in the namespace. The network namespace has only a loopback device.
//! - file system: a read-only view of `/usr` (and the `/bin`, `/lib*` links into it) and a few
//!   harmless files of `/etc`; the run's [`Scratch`] directory is the only writable place,
//!   bound at the paths a task asks for (`/work`, `/tmp`, `/home/agent`, ...).
//! - identity: when we are root, each run gets its own unprivileged uid (chosen from a private
//!   range), so that file permissions protect the host too and `RLIMIT_NPROC`, which the kernel
//!   does not enforce for root, really bounds a fork bomb.
//! - rlimits (set in the child before `exec`): CPU time, address space, processes, file size,
//!   open files, no core dumps. Wall time and output size are enforced by this process, which
//!   kills the run's whole process group (and so the PID namespace) when either is exceeded.
//!
//! If the sandbox cannot be set up, [`Sandbox::new`] fails with the reason; nothing here ever
//! runs a program unconfined.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Errors of the sandbox itself (not of the program run inside it).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The isolation could not be set up; nothing was run.
    #[error("sandbox unavailable: {0} (install bubblewrap: `apt-get install -y bubblewrap`)")]
    Unavailable(String),
    /// An I/O error while preparing or supervising a run.
    #[error("sandbox I/O error while {action}: {source}")]
    Io {
        /// What we were doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A mount or working directory that is not allowed.
    #[error("invalid sandbox request: {0}")]
    InvalidRequest(String),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let action = action.into();
    move |source| SandboxError::Io { action, source }
}

/// Resource limits of one sandboxed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU seconds per process (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Wall-clock limit for the whole run.
    pub wall: Duration,
    /// Address-space bytes per process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Processes (and threads) the run may have at once (`RLIMIT_NPROC`).
    pub max_processes: u64,
    /// Largest file the run may write (`RLIMIT_FSIZE`).
    pub max_file_bytes: u64,
    /// Bytes of stdout (and separately of stderr) kept; more kills the run.
    pub max_output_bytes: usize,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_seconds: 5,
            wall: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            max_processes: 64,
            max_file_bytes: 16 << 20,
            max_output_bytes: 1 << 20,
            max_open_files: 256,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal (e.g. `SIGXCPU` for the CPU limit).
    Signaled(i32),
    /// The wall-clock limit was reached and the run was killed.
    WallTimeout,
    /// More output than allowed was written and the run was killed.
    OutputLimit,
}

/// What a sandboxed run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// How the run ended.
    pub termination: Termination,
    /// Standard output (at most `max_output_bytes`).
    pub stdout: Vec<u8>,
    /// Standard error (at most `max_output_bytes`).
    pub stderr: Vec<u8>,
    /// Wall time taken.
    pub elapsed: Duration,
}

impl RunOutput {
    /// True when the program exited with code 0.
    pub fn success(&self) -> bool {
        self.termination == Termination::Exited(0)
    }

    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Why the run did not end normally, in words, or `None` for a normal exit (any code).
    pub fn limit_reason(&self, limits: &Limits) -> Option<String> {
        match &self.termination {
            Termination::Exited(_) => None,
            Termination::WallTimeout => Some(format!(
                "wall-time limit of {:.1}s exceeded",
                limits.wall.as_secs_f64()
            )),
            Termination::OutputLimit => Some(format!(
                "output limit of {} bytes exceeded",
                limits.max_output_bytes
            )),
            Termination::Signaled(sig) => Some(match *sig {
                libc::SIGXCPU => format!("CPU-time limit of {}s exceeded", limits.cpu_seconds),
                libc::SIGXFSZ => {
                    format!(
                        "file-size limit of {} bytes exceeded",
                        limits.max_file_bytes
                    )
                }
                libc::SIGKILL => "killed (SIGKILL)".to_string(),
                libc::SIGSEGV => "crashed (SIGSEGV)".to_string(),
                other => format!("killed by signal {other}"),
            }),
        }
    }

    /// A short description of a non-zero or abnormal end, for scoring reasons.
    pub fn describe_failure(&self, limits: &Limits) -> String {
        if let Some(reason) = self.limit_reason(limits) {
            return reason;
        }
        let code = match self.termination {
            Termination::Exited(c) => c,
            _ => -1,
        };
        let err = self.stderr_text();
        let tail: String = tail_chars(err.trim(), 300);
        if tail.is_empty() {
            format!("exit code {code}")
        } else {
            format!("exit code {code}: {tail}")
        }
    }
}

/// The last `n` characters of `s`.
pub(crate) fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// A directory of the scratch area bound into the sandbox at `dest` (writable) or a host path
/// bound read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the host.
    pub host: PathBuf,
    /// Path inside the sandbox.
    pub dest: PathBuf,
    /// Writable mounts must lie inside the run's scratch directory.
    pub writable: bool,
}

/// One program to run in the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCommand {
    /// Program and arguments, resolved inside the sandbox (`PATH` is `/usr/local/bin:/usr/bin:/bin`).
    pub argv: Vec<String>,
    /// Bytes given on standard input.
    pub stdin: Vec<u8>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Extra environment variables (the environment is otherwise cleared).
    pub env: Vec<(String, String)>,
    /// Writable scratch directories and read-only extras.
    pub mounts: Vec<Mount>,
}

impl SandboxCommand {
    /// A command with the scratch directory bound at `/work` (also the working directory) and
    /// `/tmp` bound to `scratch/.tmp`.
    pub fn in_work_dir(scratch: &Scratch, argv: Vec<String>) -> Result<Self, SandboxError> {
        let tmp = scratch.subdir(".tmp")?;
        Ok(Self {
            argv,
            stdin: Vec::new(),
            cwd: PathBuf::from("/work"),
            env: vec![("HOME".into(), "/work".into())],
            mounts: vec![
                Mount {
                    host: scratch.path().to_path_buf(),
                    dest: PathBuf::from("/work"),
                    writable: true,
                },
                Mount {
                    host: tmp,
                    dest: PathBuf::from("/tmp"),
                    writable: true,
                },
            ],
        })
    }
}

/// A run's private scratch directory (deleted on drop), owned by the uid the run will use.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    uid: Option<u32>,
}

impl Scratch {
    /// The scratch directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The unprivileged uid runs in this scratch use (`None` when we are not root).
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, rel: &str) -> Result<PathBuf, SandboxError> {
        let p = self.safe_join(rel)?;
        std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        Ok(p)
    }

    /// Writes a file (creating parent directories).
    pub fn write_file(&self, rel: &str, contents: &[u8]) -> Result<PathBuf, SandboxError> {
        let p = self.safe_join(rel)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&p, contents).map_err(io_err(format!("writing {}", p.display())))?;
        Ok(p)
    }

    fn safe_join(&self, rel: &str) -> Result<PathBuf, SandboxError> {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(SandboxError::InvalidRequest(format!(
                "scratch path must be relative without `..`: {rel:?}"
            )));
        }
        Ok(self.dir.path().join(rel_path))
    }

    /// Gives every file in the scratch to the run's uid, so the run can change what the host
    /// prepared. Symlinks are not followed.
    fn hand_over(&self) -> Result<(), SandboxError> {
        let Some(uid) = self.uid else { return Ok(()) };
        chown_tree(self.dir.path(), uid)
    }
}

fn chown_tree(path: &Path, uid: u32) -> Result<(), SandboxError> {
    let meta =
        std::fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if meta.uid() != uid {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid))
            .map_err(io_err(format!("chown {}", path.display())))?;
        // chown clears the set-user/group-id bits; a task may depend on them.
        if meta.mode() & 0o6000 != 0 && !meta.file_type().is_symlink() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
    }
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(io_err(format!("listing {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", path.display())))?;
            chown_tree(&entry.path(), uid)?;
        }
    }
    Ok(())
}

/// First uid of the private range handed to sandboxed runs when we are root.
const UID_BASE: u32 = 1_200_000_000;
static NEXT_UID: AtomicU32 = AtomicU32::new(0);

fn next_uid() -> u32 {
    // Unique per process and run, so that RLIMIT_NPROC (counted per uid) is per run.
    let per_process = (std::process::id() % 100_000) * 1000;
    UID_BASE + per_process + NEXT_UID.fetch_add(1, Ordering::Relaxed) % 1000
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A configured sandbox; cheap to clone, safe to share between threads.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    limits: Limits,
    view: Vec<String>,
}

static PROBE: OnceLock<Result<(), String>> = OnceLock::new();

impl Sandbox {
    /// Finds bubblewrap, checks once per process that it really isolates a run, and returns a
    /// sandbox with these limits. Fails (never falls back to running unconfined) otherwise.
    pub fn new(limits: Limits) -> Result<Self, SandboxError> {
        let bwrap = find_bwrap().ok_or_else(|| {
            SandboxError::Unavailable("`bwrap` not found (set SWARM_BWRAP or install it)".into())
        })?;
        let sandbox = Self {
            bwrap,
            limits,
            view: base_view(),
        };
        let probe = PROBE.get_or_init(|| sandbox.probe());
        match probe {
            Ok(()) => Ok(sandbox),
            Err(reason) => Err(SandboxError::Unavailable(reason.clone())),
        }
    }

    /// The limits every run gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The same sandbox with other limits.
    pub fn with_limits(&self, limits: Limits) -> Self {
        Self {
            limits,
            ..self.clone()
        }
    }

    /// A fresh scratch directory for one run (or several rounds of one episode).
    pub fn scratch(&self) -> Result<Scratch, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("swarm-sbx-")
            .tempdir()
            .map_err(io_err("creating a scratch directory"))?;
        let uid = running_as_root().then(next_uid);
        let scratch = Scratch { dir, uid };
        scratch.hand_over()?;
        Ok(scratch)
    }

    fn probe(&self) -> Result<(), String> {
        let scratch = self.scratch().map_err(|e| e.to_string())?;
        let cmd = SandboxCommand::in_work_dir(
            &scratch,
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo ok > probe.txt && cat probe.txt".into(),
            ],
        )
        .map_err(|e| e.to_string())?;
        let out = self
            .spawn_and_wait(&scratch, &cmd)
            .map_err(|e| e.to_string())?;
        if out.success() && out.stdout == b"ok\n" {
            Ok(())
        } else {
            Err(format!(
                "probe run failed ({:?}): {}",
                out.termination,
                out.stderr_text().trim()
            ))
        }
    }

    /// Runs one command in `scratch` under the limits. Errors mean the sandbox failed (the
    /// command may not have run); anything the program does wrong is in the [`RunOutput`].
    pub fn run(&self, scratch: &Scratch, cmd: &SandboxCommand) -> Result<RunOutput, SandboxError> {
        for m in &cmd.mounts {
            if m.writable && !m.host.starts_with(scratch.path()) {
                return Err(SandboxError::InvalidRequest(format!(
                    "writable mount {} is outside the scratch directory",
                    m.host.display()
                )));
            }
            if !m.dest.is_absolute() {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount destination {} is not absolute",
                    m.dest.display()
                )));
            }
        }
        if cmd.argv.is_empty() {
            return Err(SandboxError::InvalidRequest("empty argv".into()));
        }
        scratch.hand_over()?;
        self.spawn_and_wait(scratch, cmd)
    }

    fn bwrap_args(&self, cmd: &SandboxCommand) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        for s in [
            "--unshare-user",
            // The same identity inside every run (outputs such as `ls -l` or `id` must not
            // depend on which private uid a run got); no capabilities even so.
            "--uid",
            "0",
            "--gid",
            "0",
            "--cap-drop",
            "ALL",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "PYTHONDONTWRITEBYTECODE",
            "1",
            "--setenv",
            "PYTHONHASHSEED",
            "0",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            // bwrap's /dev is a writable tmpfs: memory the run could fill.
            "--remount-ro",
            "/dev",
        ] {
            push(s);
        }
        for s in &self.view {
            push(s);
        }
        for (k, v) in &cmd.env {
            push("--setenv");
            push(k);
            push(v);
        }
        // Parents before children, so that nested binds land inside their parents.
        let mut mounts: Vec<&Mount> = cmd.mounts.iter().collect();
        mounts.sort_by_key(|m| m.dest.components().count());
        for m in mounts {
            a.push(OsString::from(if m.writable {
                "--bind"
            } else {
                "--ro-bind"
            }));
            a.push(m.host.clone().into_os_string());
            a.push(m.dest.clone().into_os_string());
        }
        // bwrap's root is a tmpfs: nothing but the binds above may be writable.
        a.push("--remount-ro".into());
        a.push("/".into());
        a.push("--chdir".into());
        a.push(cmd.cwd.clone().into_os_string());
        a.push("--".into());
        for s in &cmd.argv {
            a.push(OsString::from(s));
        }
        a
    }

    fn spawn_and_wait(
        &self,
        scratch: &Scratch,
        cmd: &SandboxCommand,
    ) -> Result<RunOutput, SandboxError> {
        let limits = self.limits.clone();
        let mut command = Command::new(&self.bwrap);
        command
            .args(self.bwrap_args(cmd))
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(uid) = scratch.uid() {
            // std drops supplementary groups when root changes uid.
            command.uid(uid).gid(uid);
        }
        let rl = limits.clone();
        // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || set_rlimits(&rl));
        }
        let start = Instant::now();
        let mut child = command.spawn().map_err(io_err("starting bwrap"))?;
        let (events_tx, events) = mpsc::channel::<Event>();
        let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
        let readers = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for (idx, reader) in readers.into_iter().enumerate() {
            if let Some(reader) = reader {
                let tx = tx.clone();
                let ev = events_tx.clone();
                let cap = limits.max_output_bytes;
                thread::spawn(move || {
                    let (buf, over) = read_capped(reader, cap);
                    if over {
                        let _ = ev.send(Event::OutputLimit);
                    }
                    let _ = tx.send((idx, buf));
                });
            }
        }
        drop(tx);
        if let Some(mut stdin) = child.stdin.take() {
            let input = cmd.stdin.clone();
            thread::spawn(move || {
                // The program may exit without reading: a broken pipe is not our error.
                let _ = stdin.write_all(&input);
            });
        }
        // Waits for the exit without reaping, so that only this thread reaps (and kills).
        let pid = child.id() as libc::id_t;
        let ev = events_tx.clone();
        thread::spawn(move || {
            // SAFETY: `info` is a valid siginfo_t to write into; WNOWAIT leaves the child
            // unreaped, so its pid stays ours until `Child::wait`.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                while libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) != 0
                {
                    if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        break;
                    }
                }
            }
            let _ = ev.send(Event::Exited);
        });
        drop(events_tx);
        let termination = supervise(&mut child, &limits, &events, start)?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        // The PID namespace is gone, so the pipes close; the bound only guards against surprises.
        let deadline = Instant::now() + Duration::from_secs(2);
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((0, b)) => stdout = b,
                Ok((_, b)) => stderr = b,
                Err(_) => break,
            }
        }
        Ok(RunOutput {
            termination,
            stdout,
            stderr,
            elapsed: start.elapsed(),
        })
    }
}

enum Event {
    Exited,
    OutputLimit,
}

/// Waits for the child, killing its process group on a limit. Only this thread kills or
/// reaps, so a kill can never hit a recycled pid.
fn supervise(
    child: &mut Child,
    limits: &Limits,
    events: &mpsc::Receiver<Event>,
    start: Instant,
) -> Result<Termination, SandboxError> {
    let pgid = child.id() as libc::pid_t;
    let mut killed_for: Option<Termination> = None;
    let mut output_over = false;
    let kill = || {
        // SAFETY: kill has no memory-safety preconditions; the group leader is our
        // unreaped child, so the pgid cannot have been recycled.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    };
    loop {
        let left = limits.wall.saturating_sub(start.elapsed());
        let wait = if killed_for.is_some() {
            Duration::from_secs(5)
        } else {
            left
        };
        match events.recv_timeout(wait) {
            Ok(Event::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::OutputLimit) => {
                output_over = true;
                if killed_for.is_none() {
                    kill();
                    killed_for = Some(Termination::OutputLimit);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if killed_for.is_none() {
                    kill();
                    killed_for = Some(Termination::WallTimeout);
                } else {
                    break; // killed but no exit seen: fall through to a blocking wait
                }
            }
        }
    }
    let status = child.wait().map_err(io_err("waiting for bwrap"))?;
    if let Some(t) = killed_for {
        return Ok(t);
    }
    if output_over {
        // The reader stopped reading; the program may have died of SIGPIPE first.
        return Ok(Termination::OutputLimit);
    }
    Ok(match (status.code(), status.signal()) {
        // bwrap reports a child killed by signal N as exit code 128 + N.
        (Some(code), _) if code > 128 && code <= 128 + 64 => Termination::Signaled(code - 128),
        (Some(code), _) => Termination::Exited(code),
        (None, Some(sig)) => Termination::Signaled(sig),
        (None, None) => Termination::Signaled(0),
    })
}

/// Reads at most `cap` bytes; returns them and whether there was more.
fn read_capped(mut reader: Box<dyn Read + Send>, cap: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return (buf, false),
            Ok(n) => {
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    return (buf, true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (buf, false),
        }
    }
}

fn set_rlimits(l: &Limits) -> std::io::Result<()> {
    let set = |res, value: u64| -> std::io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // Soft limit first (SIGXCPU, reported as the CPU limit), SIGKILL a second later.
    let cpu = libc::rlimit {
        rlim_cur: l.cpu_seconds as libc::rlim_t,
        rlim_max: l.cpu_seconds.saturating_add(1) as libc::rlim_t,
    };
    // SAFETY: `cpu` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CPU, &cpu) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    set(libc::RLIMIT_AS, l.memory_bytes)?;
    set(libc::RLIMIT_NPROC, l.max_processes)?;
    set(libc::RLIMIT_FSIZE, l.max_file_bytes)?;
    set(libc::RLIMIT_NOFILE, l.max_open_files)?;
    set(libc::RLIMIT_CORE, 0)?;
    Ok(())
}

fn find_bwrap() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWARM_BWRAP") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
}

/// The read-only view every run gets: `/usr`, the merged-usr links, and a few harmless files
/// of `/etc` (never `/etc/shadow` or the host's home directories).
fn base_view() -> Vec<String> {
    let mut v: Vec<String> = vec!["--ro-bind".into(), "/usr".into(), "/usr".into()];
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = PathBuf::from("/").join(top);
        match std::fs::read_link(&host) {
            Ok(target) => {
                v.push("--symlink".into());
                v.push(target.to_string_lossy().into_owned());
                v.push(format!("/{top}"));
            }
            Err(_) if host.is_dir() => {
                v.push("--ro-bind".into());
                v.push(format!("/{top}"));
                v.push(format!("/{top}"));
            }
            Err(_) => {}
        }
    }
    for f in [
        "/etc/ld.so.cache",
        "/etc/alternatives",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
        "/etc/localtime",
        "/etc/bash.bashrc",
        "/etc/profile",
        "/etc/inputrc",
    ] {
        v.push("--ro-bind-try".into());
        v.push(f.into());
        v.push(f.into());
    }
    v
}

/// Processes on the host whose real uid is `uid` (used by tests to prove nothing survives).
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let meta = e.metadata().ok()?;
            (meta.uid() == uid).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_command_and_captures_output() -> anyhow::Result<()> {
        let sb = Sandbox::new(Limits::default())?;
        let scratch = sb.scratch()?;
        scratch.write_file("in.txt", b"a\nb\nc\n")?;
        let cmd = SandboxCommand::in_work_dir(
            &scratch,
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "wc -l < in.txt; echo err >&2".into(),
            ],
        )?;
        let out = sb.run(&scratch, &cmd)?;
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout_text().trim(), "3");
        assert_eq!(out.stderr_text().trim(), "err");
        Ok(())
    }

    #[test]
    fn writable_mount_outside_scratch_is_refused() -> anyhow::Result<()> {
        let sb = Sandbox::new(Limits::default())?;
        let scratch = sb.scratch()?;
        let mut cmd = SandboxCommand::in_work_dir(&scratch, vec!["true".into()])?;
        cmd.mounts.push(Mount {
            host: PathBuf::from("/etc"),
            dest: PathBuf::from("/x"),
            writable: true,
        });
        assert!(matches!(
            sb.run(&scratch, &cmd),
            Err(SandboxError::InvalidRequest(_))
        ));
        Ok(())
    }

    #[test]
    fn scratch_paths_cannot_escape() -> anyhow::Result<()> {
        let sb = Sandbox::new(Limits::default())?;
        let scratch = sb.scratch()?;
        assert!(scratch.write_file("../evil", b"x").is_err());
        assert!(scratch.write_file("/etc/evil", b"x").is_err());
        Ok(())
    }
}
