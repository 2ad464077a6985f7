//! `vnfctl`: validate, plan, run, observe and change service chains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chains::cli;

#[derive(Debug, Parser)]
#[command(
    name = "vnfctl",
    version,
    about = "Declarative service chains for the vnf suite: validate, plan, run, probe and change them",
    long_about = "Declarative service chains for the vnf suite.\n\n\
        A chain file (YAML, docs/chains.md) names one tenant's networks (overlay VNIs or \
        external VLANs), its function instances (vnf-router, vnf-firewall, vnf-lb) and the \
        chains of hops between networks. vnfctl checks it (`validate`), compiles it into one \
        config per instance (`plan`), runs the instances on this machine under a supervisor \
        (`up`, `status`, `down`), changes a running chain safely (`apply`) and proves it \
        end to end with synthetic hosts (`probe`).\n\n\
        Exit status: 0 on success, 1 when the chain file or the running chain has a problem \
        (each printed as FILE:LINE:COLUMN: message), 2 on a usage error."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check chain files: every syntax, type and semantic problem, as FILE:LINE:COLUMN.
    Validate {
        /// Chain files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile a chain into one config file per instance, a manifest and a Prometheus
    /// scrape configuration.
    Plan {
        /// The chain file.
        file: PathBuf,
        /// Directory to write to (created; files of instances no longer planned are
        /// removed). Default: plan-TENANT.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Scrape interval written into prometheus.yml.
        #[arg(long, default_value = "15s", value_parser = cli::parse_interval)]
        scrape_interval: String,
        /// Print the plan's files to stdout instead of writing them.
        #[arg(long)]
        stdout: bool,
    },
    /// Plan a chain and run every instance on this machine under a supervisor that
    /// restarts them with backoff; returns once all are ready.
    Up {
        /// The chain file.
        file: PathBuf,
        #[command(flatten)]
        run: cli::RunArgs,
        /// Stay in the foreground (Ctrl-C stops the chain) instead of detaching.
        #[arg(long)]
        foreground: bool,
        /// How long to wait for every instance to be ready, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Stop a running chain: every instance, then the supervisor.
    Down {
        /// The chain file (or give --state).
        file: Option<PathBuf>,
        /// The state directory (default .vnfctl/TENANT).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Show each instance of a running chain: process, health and key counters.
    Status {
        /// The chain file (or give --state).
        file: Option<PathBuf>,
        /// The state directory (default .vnfctl/TENANT).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Change a running chain to an edited chain file: validate, show the difference,
    /// reload changed instances, start new ones, stop removed ones; roll back if an
    /// instance refuses its new config.
    Apply {
        /// The edited chain file.
        file: PathBuf,
        /// The state directory (default .vnfctl/TENANT).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Show the difference only.
        #[arg(long)]
        dry_run: bool,
        /// Scrape interval written into prometheus.yml.
        #[arg(long, default_value = "15s", value_parser = cli::parse_interval)]
        scrape_interval: String,
    },
    /// Synthetic tenant hosts: join a network of a chain and ping, connect, fetch or
    /// serve HTTP across it (no root needed).
    Probe(cli::ProbeArgs),
    /// Build VM images: per function kind a kernel, an initrd and a bootable disk; per
    /// instance a NoCloud seed ISO holding its config (docs/images.md).
    Image {
        /// The chain file.
        file: PathBuf,
        /// Directory to write to: vnf-KIND/{vmlinuz,initrd.img,disk.qcow2} per kind,
        /// seeds/TENANT-NAME.iso and seeds/TENANT-NAME.user-data per instance.
        #[arg(long, short)]
        out: PathBuf,
        /// Where the statically linked vnf-* binaries are (scripts/build-static puts them
        /// in target/x86_64-unknown-linux-gnu/release). Default: beside vnfctl, then PATH.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Where downloaded Debian packages are kept. Default:
        /// $XDG_CACHE_HOME/vnfctl/images or ~/.cache/vnfctl/images.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Skip the disk.qcow2 images (no dosfstools, syslinux, mtools or qemu-utils
        /// needed).
        #[arg(long)]
        no_qcow2: bool,
    },
    /// Run the supervisor in the foreground (what `up` starts in the background).
    #[command(hide = true)]
    Supervise {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// Where the vnf-* binaries are.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Log level for the instances.
        #[arg(long)]
        log_level: Option<String>,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`vnfctl status | head -1`), as other command-line
    // tools do, instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    let result = match args.command {
        Command::Validate { files } => cli::validate(&files),
        Command::Plan {
            file,
            out,
            scrape_interval,
            stdout,
        } => cli::plan(&file, out.as_deref(), &scrape_interval, stdout),
        Command::Up {
            file,
            run,
            foreground,
            wait,
        } => cli::up(
            &file,
            &run,
            foreground,
            std::time::Duration::from_secs(wait),
        ),
        Command::Down { file, state } => {
            state_dir(file.as_deref(), state).and_then(|s| cli::down(&s))
        }
        Command::Status { file, state } => {
            state_dir(file.as_deref(), state).and_then(|s| cli::status(&s))
        }
        Command::Apply {
            file,
            state,
            dry_run,
            scrape_interval,
        } => cli::apply(&file, state, dry_run, &scrape_interval),
        Command::Probe(p) => cli::probe(&p),
        Command::Image {
            file,
            out,
            bin_dir,
            cache,
            no_qcow2,
        } => cli::image(&file, out, bin_dir, cache, !no_qcow2),
        Command::Supervise {
            state,
            bin_dir,
            log_level,
        } => cli::supervise(state, bin_dir, log_level),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vnfctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn state_dir(file: Option<&Path>, state: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    cli::resolve_state(file, state)
}
