//! `cargo run -p tenant_guard_harness --bin quickstart -- examples/quickstart.sql`
//! Starts a throwaway cluster with tenant_guard preloaded and freshly generated
//! secrets, runs the script with psql as the superuser (the script switches
//! roles itself), prints the output and stops the cluster.

use tenant_guard_harness::{generate_secret, Cluster, Options};

fn main() {
    let script = std::env::args().nth(1).unwrap_or_else(|| "examples/quickstart.sql".into());
    let script = std::fs::canonicalize(&script).unwrap_or_else(|e| panic!("{script}: {e}"));
    let cluster = Cluster::start(Options {
        passphrase: generate_secret(),
        jwt_secret: generate_secret(),
        bootstrap: false,
        ..Options::default()
    });
    println!("throwaway cluster on 127.0.0.1:{} ({})", cluster.port, cluster.datadir.display());
    // psql runs as the postgres OS user: hand it a copy it can read.
    let copy = cluster.datadir.join("quickstart.sql");
    std::fs::copy(&script, &copy).expect("copy script");
    let port = cluster.port.to_string();
    let out = cluster.run_tool_merged(
        "psql",
        &[
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "dba",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-e",
            "-f",
            copy.to_str().unwrap(),
        ],
    );
    println!("{out}");
    println!("quickstart finished; the cluster is being stopped and removed");
}
