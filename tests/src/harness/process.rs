//! Child processes of a test: a command with a clean environment, running one
//! to completion, signals, a clean stop, a worker that says `ready`, and
//! [`Proc`], a long-running child whose log goes to a file and is shown when
//! the test fails.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a command run to completion may take.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many lines of a failing test's child log are printed.
const LOG_TAIL: usize = 200;

/// `bin args…` with no `EVENTBUS_*` setting inherited from the test run,
/// logging at `info` without colours, killed if the test drops it.
pub fn command(bin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EVENTBUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `bin args…` ([`command`]) to completion (at most 60 s) and returns
/// what it did.
///
/// # Panics
///
/// When it cannot be started or runs longer.
pub async fn output(bin: &str, args: &[&str]) -> Output {
    tokio::time::timeout(OUTPUT_TIMEOUT, command(bin, args).output())
        .await
        .unwrap_or_else(|_| panic!("`{bin} {}` did not finish within 60 s", args.join(" ")))
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// Runs `bin args…` to completion, asserts it succeeded, and returns its
/// standard output.
///
/// # Panics
///
/// As [`output`], and when it fails (showing its output).
pub async fn cli_ok(bin: &str, args: &[&str]) -> String {
    let out = output(bin, args).await;
    assert!(
        out.status.success(),
        "`{bin} {}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout and stderr of `out` as one text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends `signal` (`TERM`, `INT`, `STOP`, `CONT`, …) to `pid` with `kill(1)`.
///
/// # Errors
///
/// When `kill` cannot be run or fails (no such process).
pub fn try_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{signal} {pid} failed ({status})"
        )))
    }
}

/// Sends `signal` to `child` and asserts that it then exits with status 0
/// within `timeout`.
///
/// # Panics
///
/// When the signal cannot be sent or the process does not exit cleanly in
/// time.
pub async fn stop_cleanly(child: &mut Child, signal: &str, timeout: Duration) {
    let pid = child.id().expect("the process is running");
    try_signal(pid, signal).unwrap_or_else(|e| panic!("{e}"));
    let status = tokio::time::timeout(timeout, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process exits within {timeout:?} of SIG{signal}"))
        .expect("wait for the process");
    assert!(status.success(), "exit status {status} after SIG{signal}");
}

/// Sends SIGTERM and asserts a clean exit within 30 s.
///
/// # Panics
///
/// When the process does not exit cleanly in time.
pub async fn sigterm(child: &mut Child) {
    stop_cleanly(child, "TERM", Duration::from_secs(30)).await;
}

/// Starts `cmd` with its standard output piped and waits (up to 60 s) until
/// its first line is `ready`; the rest of its output is drained for as long
/// as it lives. For the worker binaries of the crash tests.
///
/// # Panics
///
/// When it cannot be started or its first line is something else.
pub async fn spawn_ready(mut cmd: Command, what: &str) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} starts within 60 s"))
        .unwrap_or_else(|e| panic!("read the standard output of {what}: {e}"));
    assert_eq!(first.as_deref(), Some("ready"), "{what} start-up line");
    // Keep the pipe open (and drained) for as long as the process lives.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A fresh directory for the logs of one test's child processes.
///
/// # Panics
///
/// When it cannot be created.
pub fn log_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique_name(&format!("eventbus_{tag}")));
    std::fs::create_dir_all(&dir).expect("create log directory");
    dir
}

/// Peak resident memory of process `pid` so far (`VmHWM`), in bytes.
///
/// # Errors
///
/// When `/proc/<pid>/status` cannot be read or has no `VmHWM`.
pub fn peak_rss_bytes(pid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other(format!("no VmHWM in {path}")))
}

/// The binary `name` of this workspace built beside the running executable:
/// in its directory (a binary in `target/<profile>/`) or the one above (a
/// test in `target/<profile>/deps/`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
}

/// A child process whose standard output and error go to a log file. It is
/// killed (SIGKILL, after SIGCONT in case it is stopped) when dropped, and
/// when the test is failing the end of its log is printed.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with standard output and error going to `<dir>/<name>.log`.
    ///
    /// # Panics
    ///
    /// When the log file cannot be created or the process cannot start.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    ///
    /// # Panics
    ///
    /// When it has already exited.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{} has already exited", self.name))
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn signal(&self, signal: &str) {
        try_signal(self.pid(), signal).unwrap_or_else(|e| panic!("{e} ({})", self.name));
    }

    /// SIGKILL, and waits (up to 10 s) for the process to be gone.
    ///
    /// # Panics
    ///
    /// When it does not exit in time.
    pub async fn kill(&mut self) -> ExitStatus {
        self.child.start_kill().expect("send SIGKILL");
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics if it has exited.
    ///
    /// # Panics
    ///
    /// When it has exited, with its status.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status})", self.name);
        }
    }

    /// Waits for it to exit.
    ///
    /// # Panics
    ///
    /// When it does not exit within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for child process"),
            Err(_) => panic!("{} did not exit within {timeout:?}", self.name),
        }
    }

    /// The child, for what this type does not cover.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines at WARN or ERROR level.
    pub fn notable_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // A stopped process is woken first, so that it dies at once.
            let _ = try_signal(pid, "CONT");
        }
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "----- last {} lines of {} ({}) -----\n{}\n----- end of {} -----",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n"),
                self.name
            );
        }
    }
}

/// Prints the WARN/ERROR lines of each process's log (visible with
/// `--no-capture` or `--success-output`), at most 30 per process.
pub fn report_logs(procs: &[&Proc]) {
    for p in procs {
        let lines = p.notable_lines();
        eprintln!(
            "{}: {} WARN/ERROR log lines ({})",
            p.name,
            lines.len(),
            p.log.display()
        );
        for line in lines.iter().take(30) {
            eprintln!("    {line}");
        }
    }
}
