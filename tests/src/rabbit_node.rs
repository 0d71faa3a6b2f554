//! A RabbitMQ node of a test's own: the machine's `rabbitmq-server` run with
//! its own node name, ports and directories, so that it can be killed and
//! started again without disturbing the shared broker.
//!
//! Needs RabbitMQ and Erlang installed (`apt-get install rabbitmq-server`).
//! The node takes its settings from its own files only (no `/etc/rabbitmq`),
//! runs no plugins, listens on loopback, and keeps a private Erlang cookie in
//! its directory; the Erlang port mapper (`epmd`) is shared with any other
//! node on the machine.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a node may take to accept AMQP connections once started.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the `rabbitmq-server` script may take to exit once its Erlang VM
/// is dead.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian and Ubuntu keep the server script itself: their
/// `/usr/sbin/rabbitmq-server` wraps it to run as the `rabbitmq` user with
/// output redirected to `/var/log/rabbitmq`, which a private node must avoid.
const DEBIAN_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

const HOW_TO_INSTALL: &str = "install RabbitMQ and Erlang (Debian/Ubuntu: \
     `apt-get install rabbitmq-server`; elsewhere RabbitMQ's generic Unix package with its \
     `sbin` on PATH)";

/// A private RabbitMQ node on a free loopback port.
///
/// [`RabbitNode::crash`] kills its Erlang VM with SIGKILL — no shutdown, so
/// only what RabbitMQ had written before survives, as in a crash;
/// [`RabbitNode::boot`] starts it again on the same port and data directory.
/// Dropping the node kills it and removes its directory.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let mut node = eventbus_tests::rabbit_node::RabbitNode::start("eventbus-demo").await?;
/// let url = node.url(); // amqp://guest:guest@127.0.0.1:<port>/%2f
/// node.crash().await?;
/// node.boot().await?;
/// # let _ = url; Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitNode {
    server: PathBuf,
    dir: PathBuf,
    /// The Erlang node name, `<prefix>-<port>@localhost`.
    name: String,
    port: u16,
    dist_port: u16,
    /// The node's console output (warnings and errors, and the banner of
    /// each boot): outlives the node's directory, for a look after a failure.
    console_log: PathBuf,
    /// The `rabbitmq-server` script while the node runs: a shell whose child
    /// is the Erlang VM.
    script: Option<Child>,
    /// The Erlang VM's process id while the node runs.
    vm: Option<u32>,
}

impl RabbitNode {
    /// Creates a node named `<prefix>-<port>@localhost` in
    /// `<temp dir>/<prefix>-rabbitmq-<port>` and boots it.
    ///
    /// # Errors
    ///
    /// When `rabbitmq-server` is not installed (the message says how to
    /// install it), its files cannot be written, or it does not accept AMQP
    /// connections within 90 s (the message carries the end of its log).
    pub async fn start(prefix: &str) -> io::Result<Self> {
        let server = server_script()?;
        // Both listeners are held until both ports are known, so they differ.
        let amqp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let dist = std::net::TcpListener::bind("127.0.0.1:0")?;
        let (port, dist_port) = (amqp.local_addr()?.port(), dist.local_addr()?.port());
        drop((amqp, dist));
        let dir = std::env::temp_dir().join(format!("{prefix}-rabbitmq-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let console_log = std::env::temp_dir().join(format!("{prefix}-rabbitmq.log"));
        // A new node, a new console log; restarts append to it.
        let _ = std::fs::remove_file(&console_log);
        let mut node = RabbitNode {
            server,
            name: format!("{prefix}-{port}@localhost"),
            console_log,
            dir,
            port,
            dist_port,
            script: None,
            vm: None,
        };
        node.write_files()?;
        node.boot().await?;
        Ok(node)
    }

    /// The AMQP URL of the node (user `guest`, default vhost).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's AMQP `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The Erlang node name, e.g. for `rabbitmqctl -n` (with `HOME` set to
    /// [`RabbitNode::home`], where its cookie is).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's `HOME`, which holds its Erlang cookie.
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// Starts the node (when it is not running) and waits until it accepts
    /// AMQP connections: by then RabbitMQ has recovered its durable queues
    /// and their persistent messages.
    ///
    /// # Errors
    ///
    /// When the script cannot be run, exits, or the node does not accept
    /// connections within 90 s; the node is then killed.
    pub async fn boot(&mut self) -> io::Result<()> {
        if self.script.is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.pid_file());
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console_log)?;
        let mut cmd = Command::new(&self.server);
        // Only this node's settings: none inherited from the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                cmd.env_remove(key);
            }
        }
        let file = |name: &str| self.dir.join(name);
        cmd.current_dir(&self.dir)
            .env("HOME", self.home())
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", file("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", file("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", file("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", file("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", file("plugins"))
            .env("RABBITMQ_MNESIA_BASE", file("mnesia"))
            .env("RABBITMQ_LOG_BASE", file("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            // Distribution on loopback only; epmd too, should this node start it.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .kill_on_drop(true);
        let script = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run {}: {e}; {HOW_TO_INSTALL}",
                    self.server.display()
                ),
            )
        })?;
        self.script = Some(script);
        match self.wait_until_accepting().await {
            Ok(vm) => {
                self.vm = Some(vm);
                Ok(())
            }
            Err(e) => {
                self.kill_now();
                Err(e)
            }
        }
    }

    /// Kills the node's Erlang VM with SIGKILL and waits until it is gone.
    /// Does nothing when the node is not running.
    ///
    /// # Errors
    ///
    /// When the process the node's pid file named at boot is not this node's
    /// VM (it is then left alone), or `kill` fails.
    pub async fn crash(&mut self) -> io::Result<()> {
        if let Some(vm) = self.vm.take() {
            self.kill_vm(vm)?;
        }
        if let Some(mut script) = self.script.take() {
            // The script exits once it has reaped the VM.
            if tokio::time::timeout(EXIT_TIMEOUT, script.wait())
                .await
                .is_err()
            {
                let _ = script.start_kill();
                let _ = script.wait().await;
            }
        }
        Ok(())
    }

    /// [`crash`](Self::crash), then [`boot`](Self::boot); returns how long
    /// the node took to accept connections again.
    ///
    /// # Errors
    ///
    /// As for `crash` and `boot`.
    pub async fn crash_and_restart(&mut self) -> io::Result<Duration> {
        self.crash().await?;
        let started = Instant::now();
        self.boot().await?;
        Ok(started.elapsed())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    fn write_files(&self) -> io::Result<()> {
        for sub in ["home", "mnesia", "log", "plugins"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        // No plugins: the management plugin would bind port 15672.
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        // Read instead of /etc/rabbitmq/rabbitmq-env.conf, which names the
        // shared node.
        std::fs::write(self.dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\n\
                 # The full log stays in log/; the console (kept after the node\n\
                 # is removed) gets what may explain a failure.\n\
                 log.console.level = warning\n",
                self.port
            ),
        )?;
        Ok(())
    }

    /// Waits until the node accepts TCP connections on its AMQP port, and
    /// returns its VM's process id.
    async fn wait_until_accepting(&mut self) -> io::Result<u32> {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // The pid file is written early in the boot, well before
                // the listener opens.
                return read_pid(&self.pid_file());
            }
            let exited = match self.script.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                None => Some("not started".into()),
            };
            if let Some(how) = exited {
                return Err(io::Error::other(format!(
                    "RabbitMQ node {} stopped while booting ({how}); if RabbitMQ or Erlang is \
                     missing, {HOW_TO_INSTALL}.\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            if started.elapsed() > BOOT_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "RabbitMQ node {} did not accept connections on 127.0.0.1:{} within \
                         {BOOT_TIMEOUT:?}.\n{}",
                        self.name,
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs `vm` after checking that it is this node's Erlang VM: a
    /// stale or foreign process id must never kill another process. A
    /// process already gone is fine.
    fn kill_vm(&self, vm: u32) -> io::Result<()> {
        let environ = std::fs::read(format!("/proc/{vm}/environ")).unwrap_or_default();
        if environ.is_empty() {
            return Ok(());
        }
        let ours = format!("RABBITMQ_NODENAME={}", self.name);
        if !environ.split(|&b| b == 0).any(|var| var == ours.as_bytes()) {
            return Err(io::Error::other(format!(
                "process {vm} is not the VM of RabbitMQ node {}; not killing it",
                self.name
            )));
        }
        let status = std::process::Command::new("kill")
            .args(["-KILL", &vm.to_string()])
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "kill -KILL {vm} failed: {status}"
            )))
        }
    }

    /// Kills the node without waiting for it (failures, `Drop`): its VM,
    /// found by the pid file or, early in a boot, as the script's child.
    fn kill_now(&mut self) {
        let mut vms: Vec<u32> = self.vm.take().into_iter().collect();
        vms.extend(read_pid(&self.pid_file()).ok());
        if let Some(script) = self.script.as_ref().and_then(Child::id) {
            let children =
                std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"));
            vms.extend(
                children
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok()),
            );
        }
        vms.sort_unstable();
        vms.dedup();
        for vm in vms {
            let _ = self.kill_vm(vm);
        }
        if let Some(mut script) = self.script.take() {
            // Give the script a moment to reap the VM, so that nothing of the
            // node is left when its directory goes.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(script.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = script.start_kill();
        }
    }

    /// The last lines of the node's own log and of its console output.
    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let mut out = String::new();
        for path in [log.as_path(), self.console_log.as_path()] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.trim().is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} (end):\n{tail}\n", path.display()));
        }
        out
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `rabbitmq-server` script to run: Debian's unwrapped one, or the one
/// on PATH.
fn server_script() -> io::Result<PathBuf> {
    let debian = Path::new(DEBIAN_SERVER);
    if debian.is_file() {
        return Ok(debian.to_owned());
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("rabbitmq-server"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "rabbitmq-server not found (neither {DEBIAN_SERVER} nor on PATH): \
                     a private RabbitMQ node is started from it; {HOW_TO_INSTALL}"
                ),
            )
        })
}

fn read_pid(path: &Path) -> io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|e| {
        io::Error::other(format!(
            "{}: not a process id ({e}): {text:?}",
            path.display()
        ))
    })
}
