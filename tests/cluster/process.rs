//! Child processes of the control plane: started with their output in a log file, stopped with
//! SIGTERM then SIGKILL, and never outliving the test binary that started them.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ClusterError;

/// How long a component lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when the process that started it dies, however it dies (a panic that
    /// aborts, a failed test binary, SIGKILL). For tests.
    TiedToProcess,
    /// In its own session, outliving the starter. For `kruise-dev up`; `kruise-dev down` stops it.
    Detached,
}

/// One running component.
pub struct Component {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Component {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        lifetime: Lifetime,
    ) -> Result<Self, ClusterError> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| ClusterError::io(&log, e))?;
        let err = out.try_clone().map_err(|e| ClusterError::io(&log, e))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let spawn_err = |source| ClusterError::Spawn { component: name.to_string(), source };
        let child = match lifetime {
            Lifetime::TiedToProcess => {
                // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                spawn_on_keeper_thread(cmd).map_err(spawn_err)?
            }
            Lifetime::Detached => {
                // SAFETY: setsid is async-signal-safe; the child leaves our session and process
                // group so a Ctrl-C in the starter's terminal does not reach it.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::setsid() < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                cmd.spawn().map_err(spawn_err)?
            }
        };
        Ok(Self { name: name.to_string(), log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the log's path when the process has already exited.
    pub fn check_running(&mut self) -> Result<(), ClusterError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ClusterError::Exited {
                component: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
            }),
            Err(e) => Err(ClusterError::io(&self.log, e)),
        }
    }

    /// SIGKILL at once (a crash, as far as the process can tell), and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        terminate_pid(self.child.id(), grace);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `pid` and waits up to `grace` for it to go, then SIGKILLs it. Works for
/// processes that are not our children too (used by `kruise-dev down`).
pub fn terminate_pid(pid: u32, grace: Duration) {
    let Ok(raw) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: plain syscalls on a pid we started.
    unsafe {
        if libc::kill(raw, libc::SIGTERM) != 0 {
            return;
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(raw, libc::SIGKILL);
    }
}

/// Whether `pid` is a running process. A zombie (exited, not yet reaped) counts as gone: once a
/// starter has exited, its orphans are reaped by PID 1, which in some sandboxes never reaps.
pub fn pid_alive(pid: u32) -> bool {
    // Reap it first if it is our own child; WNOHANG never blocks.
    if let Ok(raw) = libc::pid_t::try_from(pid) {
        let mut status = 0;
        // SAFETY: waitpid on one specific pid with WNOHANG.
        if unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) } == raw {
            return false;
        }
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Test
/// threads end after each test, so tied components are forked from one thread that lives as long
/// as the process.
fn spawn_on_keeper_thread(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("control-plane-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the control-plane keeper thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper.send((cmd, reply_tx)).map_err(|_| std::io::Error::other("control-plane keeper thread is gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("control-plane keeper thread is gone"))?
}

/// `GET path` over plain HTTP/1.0 on `addr` (host:port); the body, if the status is 200.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// The last `lines` lines of a log file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The port a kruise-manager logged for its webhook server (`serving webhooks (HTTPS) addr=…`),
/// for tests and benchmarks that start it with `--webhook-port=0`.
pub fn logged_webhook_port(log: &str) -> Option<u16> {
    log.lines()
        .find(|l| l.contains("serving webhooks (HTTPS)"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}
