//! The `certguard` command line: run, check, diff, explain, dev-certs, demo, health.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use certguard::config::{Config, UpstreamScheme};
use certguard::Proxy;

/// jemalloc instead of the system allocator: with glibc's malloc an idle connection's buffers
/// (hyper's 8 KiB read and write buffers, rustls' 4 KiB record buffer) land in memory that
/// earlier handshakes already touched; jemalloc's page-aligned size classes leave the unused
/// parts of those buffers unbacked (README, "Memory per connection").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "certguard",
    version,
    about = "mTLS-terminating reverse proxy with policy enforcement"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        short,
        long,
        env = "CERTGUARD_CONFIG",
        default_value = "config/certguard.yaml"
    )]
    config: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT; SIGHUP reloads.
    Run(ConfigArg),
    /// Validate the config and everything it names; print a summary and warnings.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// `text` (default) or `json` (trust_sources, routes, warnings, matrix).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// What changing OLD into NEW does to access: exit 0 unchanged, 3 changed, 2 error.
    Diff {
        /// The configuration before the change.
        old: PathBuf,
        /// The configuration after the change.
        new: PathBuf,
        /// `text` (default) or `json` (gained, lost, changes).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Offline dry run: would this client certificate be allowed this request?
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// Client certificate PEM: leaf first, intermediates may follow.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request host; without it, routes that name a host do not match.
        #[arg(long)]
        host: Option<String>,
        /// Request path (query allowed).
        path: String,
        /// Do not ask OCSP responders, CRL URLs or distribution points: files and the CRL
        /// cache only.
        #[arg(long)]
        offline: bool,
    },
    /// Write the development PKI.
    DevCerts {
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Run the proxy with a built-in echo upstream and print curl commands to try.
    Demo(ConfigArg),
    /// Probe the admin /readyz endpoint: exit 0 when ready, 1 when not.
    Health {
        /// Admin address; without it (and without $CERTGUARD_ADMIN), the config's
        /// `admin.address`, or 127.0.0.1:9901.
        #[arg(long, env = "CERTGUARD_ADMIN")]
        admin: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Both providers are compiled in (rcgen and rustls); make aws-lc-rs the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Run(c) => serve(&c.config, false),
        Command::Demo(c) => serve(&c.config, true),
        Command::Check { config, format } => check(&config.config, format),
        Command::Diff { old, new, format } => diff(&old, &new, format),
        Command::Explain {
            config,
            cert,
            method,
            host,
            path,
            offline,
        } => explain(
            &config.config,
            &cert,
            &method,
            host.as_deref(),
            &path,
            offline,
        ),
        Command::DevCerts { out, force } => match certguard::devpki::write(&out, force) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("certguard dev-certs: {e}");
                ExitCode::from(1)
            }
        },
        Command::Health { admin, config } => {
            let admin = admin.unwrap_or_else(|| {
                certguard::config::admin_probe_address(&config.config)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "127.0.0.1:9901".to_owned())
            });
            health(&admin)
        }
    }
}

fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!(
                "{}: {} configuration error(s):",
                path.display(),
                errors.0.len()
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            None
        }
    }
}

fn serve(path: &Path, demo: bool) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(2);
    };
    let _log_guard = certguard::logging::init(&config.logging);
    certguard::listener::check_fd_limit(config.listen.max_connections);
    // One thread runs tasks in the order they were woken: an HTTP/2 connection then writes
    // the responses of every stream that finished in one turn together (see README,
    // `runtime.single_thread`).
    let mut runtime = if config.runtime.single_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if let (false, Some(n)) = (config.runtime.single_thread, config.runtime.worker_threads) {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("certguard: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let demo_info = demo.then(|| DemoInfo::from_config(&config));
        if let Some(info) = &demo_info {
            for addr in &info.upstreams {
                match tokio::net::TcpListener::bind(addr.as_str()).await {
                    Ok(l) => {
                        tokio::spawn(certguard::echo::serve(l));
                    }
                    Err(e) => {
                        eprintln!("certguard demo: cannot bind echo upstream {addr}: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
        }
        let proxy = match Proxy::start(config).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("certguard: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(info) = demo_info {
            info.print(&proxy);
        }
        wait_for_signals(&proxy).await;
        // Read at shutdown time, not at start: `runtime.shutdown_grace` is reloadable.
        let grace = proxy.state.current.load().config.runtime.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: draining connections");
        proxy.shutdown(grace).await;
        ExitCode::SUCCESS
    })
}

/// Until SIGTERM or SIGINT; SIGHUP reloads.
async fn wait_for_signals(proxy: &Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; waiting for Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // On a blocking thread: the single-threaded runtime has no other to lend.
                let state = proxy.state.clone();
                let _ = tokio::task::spawn_blocking(move || state.reload()).await;
            }
        }
    }
}

struct DemoInfo {
    upstreams: Vec<String>,
    certs: PathBuf,
}

impl DemoInfo {
    fn from_config(config: &Config) -> DemoInfo {
        let certs = config
            .listen
            .cert_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let cwd = std::env::current_dir().unwrap_or_default();
        let certs = lexical(&certs);
        let certs = certs
            .strip_prefix(&cwd)
            .map(Path::to_path_buf)
            .unwrap_or(certs);
        DemoInfo {
            // An `https://` upstream is a real TLS server elsewhere: the plain echo cannot
            // stand in for it.
            upstreams: config
                .upstreams
                .iter()
                .filter(|u| u.scheme != UpstreamScheme::Https)
                .map(|u| u.authority.to_string())
                .collect(),
            certs,
        }
    }

    fn print(&self, proxy: &Proxy) {
        let d = self.certs.display();
        let port = proxy.listen_addr.port();
        let url = format!("https://localhost:{port}");
        let curl = |who: &str, path: &str| {
            format!("curl --cacert {d}/ca.crt --cert {d}/{who}.crt --key {d}/{who}.key {url}{path}")
        };
        println!();
        println!("certguard demo is running. Try, from another terminal:");
        println!();
        println!("  # alice may reach everything: 200 with the echoed request (note x-forwarded-client-cert)");
        println!("  {}", curl("alice", "/api/hello"));
        println!("  # bob may reach /status only: 403 here");
        println!("  {}", curl("bob", "/api/hello"));
        println!("  {}", curl("bob", "/status"));
        println!("  # ci-runner (self-signed, pinned) may reach /deploy only");
        println!("  {}", curl("ci-runner", "/deploy"));
        println!("  # a revoked certificate fails the TLS handshake");
        println!("  {}", curl("revoked", "/api/hello"));
        println!("  # no client certificate fails the TLS handshake");
        println!("  curl --cacert {d}/ca.crt {url}/api/hello");
        println!();
        println!("  # metrics and the identity inventory");
        println!("  curl http://{}/metrics", proxy.admin_addr);
        println!("  curl http://{}/identities", proxy.admin_addr);
        println!();
        println!("Ctrl-C stops it.");
    }
}

/// `config/../certs-dev` -> `certs-dev`, without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn check(path: &Path, format: Format) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    let report = match format {
        Format::Text => certguard::report::check(&config),
        Format::Json => certguard::report::check_json(&config).map(|v| format!("{v:#}\n")),
    };
    match report {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// `certguard diff OLD NEW`: 0 when access is unchanged, 3 when it changed (a CI gate for
/// policy review), 2 when either configuration does not load.
fn diff(old: &Path, new: &Path, format: Format) -> ExitCode {
    let (Some(old_config), Some(new_config)) = (load(old), load(new)) else {
        return ExitCode::from(2);
    };
    let diff = certguard::access::diff(&old_config, &new_config);
    match format {
        Format::Text => print!("{}", diff.text()),
        Format::Json => match serde_json::to_string_pretty(&diff) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("certguard diff: {e}");
                return ExitCode::from(2);
            }
        },
    }
    if diff.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn explain(
    path: &Path,
    cert: &Path,
    method: &str,
    host: Option<&str>,
    target: &str,
    offline: bool,
) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(2);
    };
    match certguard::report::explain(&config, cert, method, host, target, offline) {
        Ok(report) => {
            print!("{}", report.text);
            if report.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("certguard explain: {e}");
            ExitCode::from(2)
        }
    }
}

fn health(admin: &str) -> ExitCode {
    use std::io::{Read, Write};
    let probe = || -> std::io::Result<bool> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(admin)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut head = [0u8; 16];
        let mut n = 0;
        while n < head.len() {
            match stream.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(head[..n].starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("certguard health: {admin}/readyz is not ready");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("certguard health: {admin}: {e}");
            ExitCode::from(1)
        }
    }
}
