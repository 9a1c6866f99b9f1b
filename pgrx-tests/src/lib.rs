//! Black-box test harness for tenant_guard.
//!
//! Starts a throwaway PostgreSQL cluster (initdb as the `postgres` OS user
//! when run as root, a private port and data directory, the extension in
//! `shared_preload_libraries`, secrets in a 0600 config file), creates the
//! extension in `template1` and three login roles, and hands each test a
//! fresh database and connections as:
//! - `dba`: the bootstrap superuser,
//! - `svc`: a login role granted `tenant_guard_service`,
//! - `app`: a plain login role, the attacker of the threat model.
//!
//! The cluster is stopped and removed when the test process exits.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub use postgres;

pub const PASSPHRASE: &str = "harness-passphrase-7c1f0b6e9d2a4f58b3e1c7d90a6b2e4f";
pub const JWT_SECRET: &str = "harness-jwt-secret-5e8a1d3c7b9f2e4a6c0d8b1f3a5e7c9d";

pub struct Options {
    pub preload: bool,
    /// What shared_preload_libraries holds when `preload` (default: tenant_guard).
    pub preload_libraries: String,
    /// Create the extension in template1 and the login roles dba/svc/app use.
    pub bootstrap: bool,
    pub passphrase: String,
    pub jwt_secret: String,
    /// Extra lines for postgresql.conf.
    pub extra_conf: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            preload: true,
            preload_libraries: "tenant_guard".into(),
            bootstrap: true,
            passphrase: PASSPHRASE.into(),
            jwt_secret: JWT_SECRET.into(),
            extra_conf: vec![],
        }
    }
}

/// A random secret from the OS CSPRNG, base64-free hex (no quoting issues in config files).
pub fn generate_secret() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Cluster {
    pub port: u16,
    pub datadir: PathBuf,
    bindir: PathBuf,
    dbs: AtomicUsize,
}

static CLUSTERS: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// pid files of pgbouncers to stop at exit.
static BOUNCERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static DEFAULT: OnceLock<Cluster> = OnceLock::new();

extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
    fn geteuid() -> u32;
}

extern "C" fn stop_all() {
    if let Ok(list) = BOUNCERS.lock() {
        for pidfile in list.iter() {
            if let Ok(pid) = std::fs::read_to_string(pidfile) {
                let _ = Command::new("kill").arg(pid.trim()).output();
            }
        }
    }
    if let Ok(list) = CLUSTERS.lock() {
        for (bindir, datadir) in list.iter() {
            let _ = as_postgres(&bindir.join("pg_ctl")).args(["stop", "-m", "immediate", "-D"]).arg(datadir).output();
            if std::env::var_os("TG_KEEP_CLUSTER").is_none() {
                let _ = std::fs::remove_dir_all(datadir);
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// A command run as the `postgres` OS user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

fn bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config).arg("--bindir").output().expect("pg_config --bindir");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The shared, default cluster for this test process.
pub fn cluster() -> &'static Cluster {
    DEFAULT.get_or_init(|| Cluster::start(Options::default()))
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let bindir = bindir();
        let port = free_port();
        let datadir = std::env::temp_dir().join(format!("tenant_guard_test_{}_{}", std::process::id(), port));
        let _ = std::fs::remove_dir_all(&datadir);
        std::fs::create_dir_all(&datadir).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&datadir);
                    c
                },
                "chown datadir",
            );
        }
        let mut initdb = as_postgres(&bindir.join("initdb"));
        initdb.args(["-A", "trust", "-U", "dba", "--no-sync", "-E", "UTF8", "--locale=C", "-D"]).arg(&datadir);
        run(initdb, "initdb");

        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 60\nfsync = off\n\
             max_worker_processes = 16\nmax_parallel_workers = 8\nlog_min_messages = warning\n",
            datadir.display()
        );
        if opts.preload {
            conf.push_str(&format!("shared_preload_libraries = '{}'\n", opts.preload_libraries));
        }
        for l in &opts.extra_conf {
            conf.push_str(l);
            conf.push('\n');
        }
        // Secrets in their own file, readable by the server's OS user only.
        conf.push_str("include = 'tenant_guard_secrets.conf'\n");
        let secrets = format!(
            "tenant_guard.passphrase = '{}'\ntenant_guard.jwt_secret = '{}'\n",
            opts.passphrase, opts.jwt_secret
        );
        let conf_path = datadir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&conf);
        // Written as root (or ourselves), then handed to postgres with mode 0600.
        std::fs::write(&conf_path, existing).unwrap();
        let secrets_path = datadir.join("tenant_guard_secrets.conf");
        std::fs::write(&secrets_path, secrets).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secrets_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&conf_path).arg(&secrets_path);
            run(c, "chown conf");
        }

        let mut start = as_postgres(&bindir.join("pg_ctl"));
        start.args(["start", "-w", "-t", "60", "-D"]).arg(&datadir).arg("-l").arg(datadir.join("server.log"));
        // A hostile but common environment: Rust backtraces switched on for
        // the server (they must still never reach a client or the log).
        start.env("RUST_BACKTRACE", "1");
        {
            let mut list = CLUSTERS.lock().unwrap();
            if list.is_empty() {
                // SAFETY: registers a plain extern "C" function once per process.
                unsafe { atexit(stop_all) };
            }
            list.push((bindir.clone(), datadir.clone()));
        }
        let out = start.output().expect("pg_ctl start");
        if !out.status.success() {
            let log = std::fs::read_to_string(datadir.join("server.log")).unwrap_or_default();
            panic!("pg_ctl start failed:\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        let c = Cluster { port, datadir, bindir, dbs: AtomicUsize::new(0) };
        if opts.preload && opts.bootstrap {
            let mut dba = c.connect("template1", "dba");
            dba.batch_execute(
                "CREATE EXTENSION tenant_guard;
                 CREATE ROLE app LOGIN;
                 CREATE ROLE svc LOGIN IN ROLE tenant_guard_service;",
            )
            .expect("set up template1 and roles");
        }
        c
    }

    pub fn connect(&self, db: &str, user: &str) -> Client {
        Client::configure()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(db)
            .application_name("tenant_guard_tests")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
    }

    /// A fresh database (a copy of template1, so the extension is there).
    pub fn fresh_db(&self) -> Db<'_> {
        let n = self.dbs.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let mut dba = self.connect("postgres", "dba");
        dba.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        // Test objects are created in public by dba; let app/svc use them.
        let mut d = self.connect(&name, "dba");
        d.batch_execute("GRANT ALL ON SCHEMA public TO PUBLIC").unwrap();
        Db { cluster: self, name }
    }

    /// A streaming hot standby of this cluster (pg_basebackup -R), started on its own port.
    pub fn start_standby(&self) -> Cluster {
        let port = free_port();
        let datadir = std::env::temp_dir().join(format!("tenant_guard_standby_{}_{}", std::process::id(), port));
        let _ = std::fs::remove_dir_all(&datadir);
        std::fs::create_dir_all(&datadir).unwrap();
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&datadir);
            run(c, "chown standby datadir");
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&datadir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let mut bb = as_postgres(&self.bindir.join("pg_basebackup"));
        bb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "dba",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&datadir);
        run(bb, "pg_basebackup");
        let conf_path = datadir.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            datadir.display()
        ));
        std::fs::write(&conf_path, conf).unwrap();
        let _ = std::fs::remove_file(datadir.join("server.log"));
        let mut start = as_postgres(&self.bindir.join("pg_ctl"));
        start.args(["start", "-w", "-t", "60", "-D"]).arg(&datadir).arg("-l").arg(datadir.join("server.log"));
        CLUSTERS.lock().unwrap().push((self.bindir.clone(), datadir.clone()));
        let out = start.output().expect("pg_ctl start standby");
        if !out.status.success() {
            let log = std::fs::read_to_string(datadir.join("server.log")).unwrap_or_default();
            panic!("standby start failed:\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        Cluster { port, datadir, bindir: self.bindir.clone(), dbs: AtomicUsize::new(0) }
    }

    /// A PgBouncer in transaction pooling mode in front of this cluster, with
    /// ONE server connection per (database, user), so consecutive clients
    /// share a backend. Returns its port. Use the simple query protocol
    /// through it (named prepared statements do not survive pooling).
    pub fn start_pgbouncer(&self) -> u16 {
        let port = free_port();
        let dir = self.datadir.join(format!("pgbouncer_{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "\"app\" \"\"\n\"dba\" \"\"\n\"svc\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\ndefault_pool_size = 1\n\
             max_client_conn = 50\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            self.port,
            d = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        if is_root() {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(&dir);
            run(c, "chown pgbouncer dir");
        }
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is installed");
        let mut c = as_postgres(Path::new(bin));
        c.arg("-d").arg(dir.join("pgbouncer.ini"));
        run(c, "pgbouncer -d");
        BOUNCERS.lock().unwrap().push(dir.join("pgbouncer.pid"));
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return port;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("pgbouncer did not start: {}", std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default());
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.datadir.join("server.log")).unwrap_or_default()
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Run a server binary (pg_dump, psql, ...) as the postgres OS user.
    pub fn run_tool(&self, tool: &str, args: &[&str]) -> String {
        let mut c = as_postgres(&self.bindir.join(tool));
        c.args(args);
        run(c, tool)
    }

    /// Run pgbench with `script` as `user` (prepared statements, `clients`
    /// clients and as many threads, for `secs` seconds) and return the mean
    /// time per transaction in seconds (1/tps).
    pub fn pgbench(&self, script: &Path, user: &str, clients: u32, secs: u32) -> f64 {
        let (port, c, t) = (self.port.to_string(), clients.to_string(), secs.to_string());
        let out = self.run_tool(
            "pgbench",
            &[
                "-n",
                "-c",
                &c,
                "-j",
                &c,
                "-T",
                &t,
                "-M",
                "prepared",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                user,
                "-f",
                script.to_str().unwrap(),
                "postgres",
            ],
        );
        let tps = out
            .lines()
            .find(|l| l.starts_with("tps ="))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench output:\n{out}"));
        1.0 / tps
    }

    /// Like run_tool, with stderr merged into stdout in order (for showing a
    /// psql session, errors included).
    pub fn run_tool_merged(&self, tool: &str, args: &[&str]) -> String {
        let mut c = as_postgres(Path::new("/bin/sh"));
        c.arg("-c").arg("exec \"$0\" \"$@\" 2>&1").arg(self.bindir.join(tool)).args(args);
        run(c, tool)
    }

    pub fn reload(&self) {
        let mut c = as_postgres(&self.bindir.join("pg_ctl"));
        c.args(["reload", "-D"]).arg(&self.datadir);
        run(c, "pg_ctl reload");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// Append lines to postgresql.conf (a later line wins); takes effect at
    /// the next reload or restart.
    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.datadir.join("postgresql.conf")).unwrap();
        writeln!(f, "\n{lines}").unwrap();
    }

    /// Stop the server (fast) and start it again with the same data and configuration.
    pub fn restart(&self) {
        let mut c = as_postgres(&self.bindir.join("pg_ctl"));
        c.args(["restart", "-w", "-t", "60", "-m", "fast", "-D"]).arg(&self.datadir);
        c.arg("-l").arg(self.datadir.join("server.log"));
        c.env("RUST_BACKTRACE", "1");
        let out = c.output().expect("pg_ctl restart");
        if !out.status.success() {
            panic!("pg_ctl restart failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), self.server_log());
        }
    }

    /// Replace the secrets file (as the server's OS user would), then reload.
    pub fn write_secrets(&self, content: &str) {
        let p = self.datadir.join("tenant_guard_secrets.conf");
        std::fs::write(&p, content).unwrap();
        self.reload();
    }
}

/// A Citus cluster: a coordinator and two workers on private ports, each
/// with `citus,tenant_guard` preloaded and the same secrets, the workers
/// added to the coordinator, tenant_guard created (Citus creates it on the
/// workers too) and the login roles dba, svc and app (Citus propagates them).
/// Citus must be installed (scripts/setup.sh does it).
pub struct CitusCluster {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
}

impl CitusCluster {
    pub fn start() -> CitusCluster {
        let opts = || Options {
            bootstrap: false,
            preload_libraries: "citus,tenant_guard".into(),
            extra_conf: vec![
                "citus.node_conninfo = 'sslmode=disable'".into(),
                "max_worker_processes = 32".into(),
                "max_connections = 100".into(),
            ],
            ..Options::default()
        };
        let coordinator = Cluster::start(opts());
        let workers: Vec<Cluster> = (0..2).map(|_| Cluster::start(opts())).collect();
        for c in std::iter::once(&coordinator).chain(&workers) {
            c.connect("postgres", "dba").batch_execute("CREATE EXTENSION citus").expect("CREATE EXTENSION citus");
        }
        let mut dba = coordinator.connect("postgres", "dba");
        dba.batch_execute(&format!("SELECT citus_set_coordinator_host('127.0.0.1', {})", coordinator.port)).unwrap();
        for w in &workers {
            dba.batch_execute(&format!("SELECT citus_add_node('127.0.0.1', {})", w.port)).unwrap();
        }
        dba.batch_execute(
            "CREATE EXTENSION tenant_guard;
             CREATE ROLE app LOGIN;
             CREATE ROLE svc LOGIN IN ROLE tenant_guard_service;
             GRANT ALL ON SCHEMA public TO PUBLIC;",
        )
        .expect("set up the coordinator");
        CitusCluster { coordinator, workers }
    }

    /// A connection to the coordinator's `postgres` database as `user`.
    pub fn connect(&self, user: &str) -> Client {
        self.coordinator.connect("postgres", user)
    }

    /// A connection straight to worker `i` as `user`.
    pub fn worker(&self, i: usize, user: &str) -> Client {
        self.workers[i].connect("postgres", user)
    }
}

pub struct Db<'a> {
    pub cluster: &'a Cluster,
    pub name: String,
}

impl Db<'_> {
    pub fn dba(&self) -> Client {
        self.cluster.connect(&self.name, "dba")
    }
    pub fn svc(&self) -> Client {
        self.cluster.connect(&self.name, "svc")
    }
    pub fn app(&self) -> Client {
        self.cluster.connect(&self.name, "app")
    }
    pub fn connect(&self, user: &str) -> Client {
        self.cluster.connect(&self.name, user)
    }
}

/// The SQLSTATE of a failed statement, or None if it succeeded.
pub fn sqlstate<T>(r: &Result<T, postgres::Error>) -> Option<String> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("non-db error: {e}"))),
    }
}

/// The message of a failed statement (empty when it succeeded).
pub fn message<T>(r: &Result<T, postgres::Error>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

/// Every field of a failed statement's error (message, detail, hint), for leak checks.
pub fn full_error<T>(r: &Result<T, postgres::Error>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => match e.as_db_error() {
            Some(d) => format!("{} | {} | {}", d.message(), d.detail().unwrap_or(""), d.hint().unwrap_or("")),
            None => e.to_string(),
        },
    }
}

/// A JWT for `user` in `org`, signed with the harness's JWT secret (valid 1 hour).
pub fn test_jwt(org: &str, user: &str) -> String {
    test_jwt_with(org, user, JWT_SECRET)
}

pub fn test_jwt_with(org: &str, user: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(r#"{{"sub":"{user}","org_id":"{org}","exp":{},"iat":{now}}}"#, now + 3600);
    sign_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, secret)
}

/// The one HS256 signer of the tests and benchmarks (the extension only
/// verifies): `header` and `claims` are JSON texts, used as given.
pub fn sign_hs256(header: &str, claims: &str, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let (h, p) = (B64.encode(header), B64.encode(claims));
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", B64.encode(m.finalize().into_bytes()))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A table of (label, baseline samples, candidate samples) with medians in
/// microseconds and the candidate/baseline ratio.
pub fn bench_table(rows: &[(&str, &[f64], &[f64])]) -> String {
    let mut out =
        format!("| {:<56} | {:>12} | {:>12} | {:>6} |\n", "measurement", "baseline us", "candidate us", "ratio");
    out.push_str(&format!("|{}|{}|{}|{}|\n", "-".repeat(58), "-".repeat(14), "-".repeat(14), "-".repeat(8)));
    for (label, base, cand) in rows {
        let (b, c) = (median(base) * 1e6, median(cand) * 1e6);
        out.push_str(&format!("| {:<56} | {:>12.1} | {:>12.1} | {:>6.3} |\n", label, b, c, c / b));
    }
    out
}
