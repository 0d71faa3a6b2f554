//! A PostgreSQL cluster of a test's own, on a free port: to crash at will, or
//! to configure as the shared server is not (TLS only, password auth).
//!
//! Needs the server binaries (`initdb`, `pg_ctl`) under
//! `/usr/lib/postgresql/<version>/bin`; as root, the cluster runs as the
//! `postgres` user, since PostgreSQL refuses to run as root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// What can go wrong starting or driving a cluster; the text says what to do.
pub type ClusterError = Box<dyn std::error::Error + Send + Sync>;

/// How a [`PostgresCluster`] is set up beyond the defaults (trust on
/// loopback, no TLS).
#[derive(Debug, Default, Clone)]
pub struct ClusterOptions {
    settings: Vec<(String, String)>,
    hba: Option<String>,
    password: Option<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl ClusterOptions {
    /// A server setting (`postgresql.conf` parameter), e.g. `ssl` = `on`.
    #[must_use]
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// What logical decoding needs (the log relay's mode): `wal_level =
    /// logical`, and room for the slots and readers of a test.
    #[must_use]
    pub fn logical(self) -> Self {
        self.set("wal_level", "logical")
            .set("max_replication_slots", "16")
            .set("max_wal_senders", "16")
    }

    /// The whole `pg_hba.conf`.
    #[must_use]
    pub fn hba(mut self, text: &str) -> Self {
        self.hba = Some(text.to_owned());
        self
    }

    /// The `postgres` superuser's password.
    #[must_use]
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// A file in the data directory, readable by the server only (keys and
    /// certificates for `ssl_*_file` settings).
    #[must_use]
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }
}

/// A running private cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
}

impl PostgresCluster {
    /// A cluster with trust authentication on loopback.
    ///
    /// # Errors
    ///
    /// When the server binaries are missing or the cluster does not start.
    pub async fn start() -> Result<Self, ClusterError> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// A cluster set up by `options`.
    ///
    /// # Errors
    ///
    /// When the server binaries are missing or the cluster does not start.
    pub async fn start_with(options: ClusterOptions) -> Result<Self, ClusterError> {
        let bin = postgres_bin()?;
        let port = crate::harness::try_free_port()?;
        let dir = std::env::temp_dir().join(format!("eventbus-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let cluster = PostgresCluster {
            bin,
            dir,
            port,
            settings: options.settings,
        };
        let data = cluster.data();
        let mut initdb = vec![
            "initdb".to_owned(),
            "-D".to_owned(),
            data.clone(),
            "-U".to_owned(),
            "postgres".to_owned(),
            "--auth=trust".to_owned(),
            "-E".to_owned(),
            "UTF8".to_owned(),
        ];
        if let Some(password) = &options.password {
            let file = cluster.dir.join("pwfile");
            std::fs::write(&file, password)?;
            initdb.push(format!("--pwfile={}", file.display()));
        }
        as_postgres_owner(&cluster.dir).await?;
        cluster
            .pg(&initdb.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        let _ = std::fs::remove_file(cluster.dir.join("pwfile"));
        let data_dir = Path::new(&data);
        if let Some(hba) = &options.hba {
            std::fs::write(data_dir.join("pg_hba.conf"), hba)?;
        }
        for (name, contents) in &options.files {
            let path = data_dir.join(name);
            std::fs::write(&path, contents)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        as_postgres_owner(&cluster.dir).await?;
        cluster.ctl(&["start"]).await?;
        Ok(cluster)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Stops PostgreSQL as a crash would (no checkpoint, connections
    /// dropped), then starts it again: it recovers from its WAL.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails.
    pub async fn crash_and_restart(&self) -> Result<(), ClusterError> {
        self.ctl(&["stop", "-m", "immediate"]).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.ctl(&["start"]).await
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    async fn ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on \
             -c synchronous_commit=on -c max_connections=100",
            self.port,
            self.dir.display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let log = self.log().display().to_string();
        let data = self.data();
        let mut all = vec![
            "pg_ctl", "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options,
        ];
        all.extend_from_slice(args);
        self.pg(&all).await
    }

    /// Runs a PostgreSQL program, as the `postgres` user when we are root.
    async fn pg(&self, args: &[&str]) -> Result<(), ClusterError> {
        let program = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(&args[1..]).stdin(Stdio::null()).output().await?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            Err(format!(
                "{} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                log.trim()
            )
            .into())
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd.args(["-D", &data, "stop", "-m", "immediate"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL server binaries on this machine.
fn postgres_bin() -> Result<PathBuf, ClusterError> {
    let root = Path::new("/usr/lib/postgresql");
    let missing = "PostgreSQL server binaries (initdb, pg_ctl) not found under \
                   /usr/lib/postgresql: install them (apt-get install postgresql)";
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| missing)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| missing.into())
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Gives `dir` to the `postgres` user when we are root.
async fn as_postgres_owner(dir: &Path) -> Result<(), ClusterError> {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .await?;
        if !status.success() {
            return Err(format!("chown postgres {} failed", dir.display()).into());
        }
    }
    Ok(())
}
