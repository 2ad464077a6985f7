//! VM images (`vnfctl image`): one bootable image per function kind, one NoCloud seed per
//! instance.
//!
//! Layout of the output directory:
//!
//! ```text
//! OUT/vnf-router/vmlinuz        the Debian cloud kernel (linux-image-cloud-amd64's)
//! OUT/vnf-router/initrd.img     gzip'd newc cpio: static busybox, /init, the static
//!                               vnf-router, the kernel modules the guest needs
//! OUT/vnf-router/disk.qcow2     the same two on a FAT disk with syslinux (BIOS boot)
//! OUT/seeds/TENANT-NAME.iso     ISO 9660 labelled `cidata`: meta-data, user-data (cloud-init
//!                               NoCloud) and vnf/boot.env + vnf/config.yaml (read by /init)
//! OUT/seeds/TENANT-NAME.user-data  that user-data alone, for a cloud's own config drive
//!                               (OpenStack `--user-data`); /init reads it there too
//! ```
//!
//! Design: an image knows its kind and nothing about any tenant, so one image serves every
//! instance of that kind; the seed makes it an instance. The image's `/init`
//! (`image/init.sh`, busybox ash as PID 1) loads the modules, finds the seed, sets up the
//! NICs (eth0 underlay, the config's external interfaces, then one management NIC with
//! DHCP), runs the VNF under a restart loop and prints `vnf-image: READY ...` on the
//! serial console once `/readyz` answers.
//!
//! Reproducibility: the cpio is written here (sorted paths, fixed inodes, uid/gid 0, every
//! mtime `SOURCE_DATE_EPOCH` or 0) and gzip'd with `gzip -n`; the ISO and FAT tools get
//! `SOURCE_DATE_EPOCH` (the FAT one no earlier than 1980, the first date FAT can hold)
//! and fixed volume ids. The same inputs (chain, binaries, Debian packages) give
//! byte-identical outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::manifest::{Instance, Kind};
use crate::plan::{InstanceConfig, Plan};

/// The Debian package whose dependency is the kernel (`linux-image-VERSION-cloud-amd64`):
/// virtio drivers, no hardware zoo.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// The Debian package of the guest's only userland.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The kernel command line of every image (syslinux.cfg of the disk; give it to `-append`
/// with `-kernel`/`-initrd`). `panic=-1` reboots at once on a panic, so a VM run with
/// `-no-reboot` exits instead of hanging.
pub const KERNEL_COMMAND_LINE: &str = "console=ttyS0 panic=-1 quiet";
/// The guest's `/init`.
pub const INIT: &str = include_str!("image/init.sh");
/// The modules the guest loads (their dependencies come along): virtio PCI NICs and disks,
/// CD-ROMs on virtio-scsi and PIIX IDE/SATA (config-drive style seeds), ISO 9660, the ACPI
/// power button and the input events acpid reads, virtio-rng for early entropy. Debian's
/// cloud kernel has no AHCI and no e1000: use virtio NICs and disks.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_rng",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "isofs",
    "button",
    "evdev",
];
/// The FAT volume id of the disks (fixed, for reproducible images).
const FAT_VOLUME_ID: &str = "564e4631";
/// The FAT volume label of the disks.
const FAT_LABEL: &str = "VNFBOOT";
/// 1980-01-01T00:00:00Z: FAT's first date.
const FAT_EPOCH: u64 = 315_532_800;

/// Options of `vnfctl image`.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The output directory.
    pub out: PathBuf,
    /// Where the static vnf-* binaries are (else beside vnfctl, then `$PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Where downloaded Debian packages are kept.
    pub cache: PathBuf,
    /// Also build `disk.qcow2` per kind.
    pub qcow2: bool,
    /// Every timestamp in the outputs.
    pub source_date_epoch: u64,
}

impl ImageOptions {
    /// The default cache: `$XDG_CACHE_HOME/vnfctl/images`, else `~/.cache/vnfctl/images`.
    pub fn default_cache() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("vnfctl").join("images")
    }

    /// `SOURCE_DATE_EPOCH` from the environment, else 0.
    pub fn source_date_epoch_from_env() -> anyhow::Result<u64> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH `{v}`: not a number of seconds")),
            Err(_) => Ok(0),
        }
    }
}

/// A Debian package the build used.
#[derive(Debug, Clone)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where apt fetched it from (none when apt could not resolve it and the cache served).
    pub url: Option<String>,
    /// The .deb in the cache.
    pub deb: PathBuf,
    /// Taken from the cache rather than downloaded now.
    pub reused: bool,
}

/// An output file.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// What `build` did.
#[derive(Debug, Clone, Default)]
pub struct ImageReport {
    /// The kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// The Debian packages used.
    pub packages: Vec<Package>,
    /// The modules in every initrd, in load order.
    pub modules: Vec<String>,
    /// Every file written.
    pub outputs: Vec<OutputFile>,
    /// Things that work but may not be what was meant.
    pub warnings: Vec<String>,
}

impl fmt::Display for ImageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {}", self.kernel_release)?;
        for p in &self.packages {
            let how = match (&p.url, p.reused) {
                (Some(url), true) => format!("reused {} = {url}", p.deb.display()),
                (None, true) => format!("reused {}, apt could not resolve it", p.deb.display()),
                (Some(url), false) => format!("downloaded {url} to {}", p.deb.display()),
                (None, false) => p.deb.display().to_string(),
            };
            writeln!(f, "package {} {} ({how})", p.name, p.version)?;
        }
        writeln!(
            f,
            "modules ({}): {}",
            self.modules.len(),
            self.modules.join(" ")
        )?;
        writeln!(f, "kernel command line: {KERNEL_COMMAND_LINE}")?;
        for o in &self.outputs {
            writeln!(f, "{:>10}  {}  {}", o.size, o.sha256, o.path.display())?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Build the images of every kind `plan` uses and a seed per instance into `opts.out`,
/// logging progress to `log`.
pub fn build(plan: &Plan, opts: &ImageOptions, log: &mut dyn Write) -> anyhow::Result<ImageReport> {
    let tools = Tools::find(opts.qcow2)?;
    let mut report = ImageReport::default();
    let kinds: Vec<Kind> = crate::plan::kinds()
        .into_iter()
        .filter(|k| plan.manifest.instances.iter().any(|i| i.kind == *k))
        .collect();
    // The binaries first: a dynamic one is the likeliest mistake, and finding it needs no
    // download.
    let mut binaries = BTreeMap::new();
    for kind in &kinds {
        let path = crate::supervise::find_binary(kind.binary(), opts.bin_dir.as_deref())?;
        let data = fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        match elf::interpreter(&data) {
            Ok(None) => {}
            Ok(Some(interp)) => bail!(
                "{} is dynamically linked (ELF interpreter {interp}) and the image has no \
                 dynamic loader: build static binaries with scripts/build-static and pass \
                 --bin-dir target/x86_64-unknown-linux-gnu/release",
                path.display()
            ),
            Err(e) => bail!("{}: {e}", path.display()),
        }
        binaries.insert(*kind, path);
    }
    let seeds: Vec<Seed> = plan
        .manifest
        .instances
        .iter()
        .map(|i| Seed::new(plan, i, &mut report.warnings))
        .collect::<anyhow::Result<_>>()?;

    fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;
    let work = opts.out.join(".work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;

    let debs = opts.cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("{}: cannot create", debs.display()))?;
    let kernel_pkg = fetch_kernel(&tools, &debs, log, &mut report.warnings)?;
    let busybox_pkg = fetch(&tools, &debs, BUSYBOX_PACKAGE, log, &mut report.warnings)?;
    let kernel_root = extract(&tools, &opts.cache, &kernel_pkg, log)?;
    let busybox_root = extract(&tools, &opts.cache, &busybox_pkg, log)?;
    report.packages = vec![kernel_pkg, busybox_pkg];

    let kernel = Kernel::find(&kernel_root)?;
    report.kernel_release = kernel.release.clone();
    let modules = resolve_modules(&kernel.modules, MODULES)?;
    report.modules = modules.iter().map(|m| m.name.clone()).collect();
    let busybox_path = busybox_root.join("bin/busybox");
    let busybox = fs::read(&busybox_path)
        .with_context(|| format!("{}: cannot read", busybox_path.display()))?;
    let vmlinuz = fs::read(&kernel.vmlinuz)
        .with_context(|| format!("{}: cannot read", kernel.vmlinuz.display()))?;

    let mtime = opts.source_date_epoch;
    let mut outputs = Vec::new();
    for kind in &kinds {
        let binary = kind.binary();
        let _ = writeln!(log, "building the {binary} image");
        let dir = opts.out.join(binary);
        fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let vnf = stripped(&tools, &binaries[kind], &work)?;
        let archive = initrd(*kind, &busybox, vnf, &kernel, &modules)?;
        let kernel_out = dir.join("vmlinuz");
        let initrd_out = dir.join("initrd.img");
        write_file(&kernel_out, &vmlinuz, mtime)?;
        gzip(
            &tools,
            &archive.newc(u32::try_from(mtime).unwrap_or(u32::MAX)),
            &initrd_out,
        )?;
        set_mtime(&initrd_out, mtime)?;
        outputs.push(kernel_out.clone());
        outputs.push(initrd_out.clone());
        if let Some(disk) = &tools.disk {
            let qcow2 = dir.join("disk.qcow2");
            build_disk(disk, &kernel_out, &initrd_out, &qcow2, &work, mtime)?;
            outputs.push(qcow2);
        }
    }

    let seeds_dir = opts.out.join("seeds");
    fs::create_dir_all(&seeds_dir)
        .with_context(|| format!("{}: cannot create", seeds_dir.display()))?;
    for seed in &seeds {
        let iso = seeds_dir.join(format!("{}.iso", seed.instance_id));
        let _ = writeln!(log, "writing the seed {}", iso.display());
        build_seed(&tools, seed, &iso, &work, mtime)?;
        outputs.push(iso);
        // The same user-data alone, for clouds that take it instead of a seed disk
        // (OpenStack: `--user-data` with `--config-drive true`).
        let user_data = seeds_dir.join(format!("{}.user-data", seed.instance_id));
        write_file(&user_data, seed.user_data.as_bytes(), mtime)?;
        outputs.push(user_data);
    }
    let _ = fs::remove_dir_all(&work);

    for path in outputs {
        let size = fs::metadata(&path)
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        let sha256 = sha256(&tools, &path)?;
        report.outputs.push(OutputFile { path, size, sha256 });
    }
    Ok(report)
}

/// The initrd of `kind`'s image: busybox, /init, the VNF, the modules (and the list /init
/// loads them from, dependencies first), modules.dep for a hand-run modprobe, and
/// /etc/vnf-image/image.env saying what the image is.
fn initrd(
    kind: Kind,
    busybox: &[u8],
    vnf: Vec<u8>,
    kernel: &Kernel,
    modules: &[Module],
) -> anyhow::Result<Archive> {
    let mut archive = Archive::default();
    archive.dir("dev");
    archive.char_device("dev/console", 5, 1);
    for d in ["proc", "sys", "run", "tmp", "mnt", "etc", "var", "root"] {
        archive.dir(d);
    }
    for d in ["sbin", "usr/bin", "usr/sbin"] {
        archive.dir(d);
    }
    archive.file("init", INIT.as_bytes().to_vec(), 0o755);
    archive.file("bin/busybox", busybox.to_vec(), 0o755);
    archive.symlink("bin/sh", "busybox");
    archive.file(&format!("bin/{}", kind.binary()), vnf, 0o755);
    let module_root = format!("lib/modules/{}", kernel.release);
    let mut load = String::new();
    let mut dep = String::new();
    for m in modules {
        let data = fs::read(kernel.modules.join(&m.path))
            .with_context(|| format!("{}: cannot read", m.path))?;
        archive.file(&format!("{module_root}/{}", m.path), data, 0o644);
        load.push_str(&format!("/{module_root}/{}\n", m.path));
        dep.push_str(&format!("{}:", m.path));
        for d in &m.all_depends {
            dep.push_str(&format!(" {d}"));
        }
        dep.push('\n');
    }
    archive.file(
        &format!("{module_root}/modules.dep"),
        dep.into_bytes(),
        0o644,
    );
    archive.file("etc/vnf-image/modules", load.into_bytes(), 0o644);
    let image_env = format!(
        "# Written by vnfctl image: what this image is.\nIMAGE_KIND={}\nKERNEL_RELEASE={}\n",
        kind.name(),
        kernel.release
    );
    archive.file("etc/vnf-image/image.env", image_env.into_bytes(), 0o644);
    Ok(archive)
}

// ---------------------------------------------------------------------------------------
// The seed

/// One instance's seed: what goes on its ISO.
#[derive(Debug, Clone)]
pub struct Seed {
    /// `TENANT-NAME`: cloud-init's instance-id and the ISO's file name.
    pub instance_id: String,
    /// `meta-data`.
    pub meta_data: String,
    /// `user-data`.
    pub user_data: String,
    /// `vnf/boot.env`.
    pub boot_env: String,
    /// `vnf/config.yaml`.
    pub config: String,
}

impl Seed {
    /// The seed of `instance` of `plan`; anything odd about it goes to `warnings`.
    pub fn new(
        plan: &Plan,
        instance: &Instance,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<Seed> {
        let tenant = &plan.manifest.tenant;
        let name = &instance.name;
        let config_text = plan
            .files()
            .into_iter()
            .find(|(file, _)| *file == instance.config)
            .map(|(_, text)| text)
            .with_context(|| format!("{name}: the plan has no config {}", instance.config))?;
        let config = plan
            .configs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .with_context(|| format!("{name}: the plan has no config"))?;
        let (mtu, external) = nics(config);
        let prefix = plan
            .underlay_subnet
            .filter(|n| n.contains(instance.host))
            .map_or(24, |n| n.prefix());
        if instance.host.is_loopback() {
            warnings.push(format!(
                "{name}: underlay address {} is a loopback address: its VM boots, but reaches \
                 no other VTEP (give the chain an underlay subnet, docs/chains.md)",
                instance.host
            ));
        }
        for nic in &external {
            if nic == "eth0" {
                warnings.push(format!(
                    "{name}: external network on eth0, which the image uses for the underlay"
                ));
            } else if !is_eth(nic) {
                warnings.push(format!(
                    "{name}: external network on `{nic}`: the image's NICs are named eth0, \
                     eth1, ... in PCI order"
                ));
            }
        }
        let management = (1..)
            .map(|n| format!("eth{n}"))
            .find(|n| !external.contains(n))
            .unwrap_or_default();
        let gateway = plan
            .underlay_gateway
            .map(|g| g.to_string())
            .unwrap_or_default();
        let boot_env = format!(
            "# vnf instance `{name}` of tenant `{tenant}`, written by vnfctl image; read by the image's /init.\n\
             VNF_KIND={kind}\n\
             VNF_NAME={name}\n\
             VNF_TENANT={tenant}\n\
             UNDERLAY_ADDRESS={address}\n\
             UNDERLAY_GATEWAY={gateway}\n\
             UNDERLAY_MTU={mtu}\n\
             EXTERNAL_INTERFACES={external}\n\
             MANAGEMENT_INTERFACE={management}\n\
             ADMIN=0.0.0.0:{port}\n",
            kind = instance.kind.name(),
            address = if plan.underlay_dhcp {
                "dhcp".to_string()
            } else {
                format!("{}/{prefix}", instance.host)
            },
            external = external.join(","),
            port = instance.admin.port(),
        );
        // Spaces would break the sourcing shell; the planner's names never have any.
        if boot_env
            .lines()
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.contains(char::is_whitespace))
        {
            bail!("{name}: boot.env would have a value with a space:\n{boot_env}");
        }
        let instance_id = format!("{tenant}-{name}");
        let meta_data = format!("instance-id: {instance_id}\nlocal-hostname: {name}\n");
        let user_data = format!(
            "#cloud-config\n\
             # vnf instance `{name}` of tenant `{tenant}`, written by vnfctl image.\n\
             write_files:\n\
             - path: /etc/vnf/config.yaml\n  permissions: \"0644\"\n  encoding: b64\n  content: {}\n\
             - path: /etc/vnf/boot.env\n  permissions: \"0644\"\n  encoding: b64\n  content: {}\n",
            base64(config_text.as_bytes()),
            base64(boot_env.as_bytes()),
        );
        Ok(Seed {
            instance_id,
            meta_data,
            user_data,
            boot_env,
            config: config_text,
        })
    }
}

/// The underlay MTU of a config and the interfaces its external ports use, in order.
fn nics(config: &InstanceConfig) -> (u32, Vec<String>) {
    let (underlay, ports) = match config {
        InstanceConfig::Router(c) => (&c.underlay, &c.ports),
        InstanceConfig::Firewall(c) => (&c.underlay, &c.ports),
        InstanceConfig::Lb(c) => (&c.underlay, &c.ports),
    };
    let mut external: Vec<String> = Vec::new();
    for p in ports {
        if let Some(nic) = p.trunk.as_ref().or(p.interface.as_ref())
            && !external.contains(nic)
        {
            external.push(nic.clone());
        }
    }
    (underlay.mtu, external)
}

fn is_eth(nic: &str) -> bool {
    nic.strip_prefix("eth")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn build_seed(
    tools: &Tools,
    seed: &Seed,
    iso: &Path,
    work: &Path,
    mtime: u64,
) -> anyhow::Result<()> {
    let stage = work.join("seed").join(&seed.instance_id);
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("vnf"))
        .with_context(|| format!("{}: cannot create", stage.display()))?;
    write_file(&stage.join("meta-data"), seed.meta_data.as_bytes(), mtime)?;
    write_file(&stage.join("user-data"), seed.user_data.as_bytes(), mtime)?;
    write_file(&stage.join("vnf/boot.env"), seed.boot_env.as_bytes(), mtime)?;
    write_file(
        &stage.join("vnf/config.yaml"),
        seed.config.as_bytes(),
        mtime,
    )?;
    set_mtime(&stage.join("vnf"), mtime)?;
    set_mtime(&stage, mtime)?;
    let _ = fs::remove_file(iso);
    let mut cmd = match &tools.iso {
        IsoTool::Xorriso(x) => {
            let mut c = Command::new(x);
            c.args(["-as", "mkisofs"]);
            c
        }
        IsoTool::Genisoimage(g) => Command::new(g),
    };
    cmd.arg("-quiet")
        .arg("-o")
        .arg(iso)
        .args(["-V", "cidata", "-J", "-r"])
        .arg(&stage)
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .env("TZ", "UTC");
    run(&mut cmd)?;
    set_mtime(iso, mtime)
}

// ---------------------------------------------------------------------------------------
// The disk

/// A FAT "superfloppy" with syslinux in its boot sector, the kernel, the initrd and a
/// syslinux.cfg with [`KERNEL_COMMAND_LINE`], converted to qcow2. All without root: mtools
/// writes into the image file.
fn build_disk(
    disk: &DiskTools,
    kernel: &Path,
    initrd: &Path,
    qcow2: &Path,
    work: &Path,
    mtime: u64,
) -> anyhow::Result<()> {
    let epoch = mtime.max(FAT_EPOCH).to_string();
    let cfg = work.join("syslinux.cfg");
    let text = format!(
        "# Written by vnfctl image.\nSERIAL 0 115200\nDEFAULT vnf\nPROMPT 0\nTIMEOUT 0\n\
         LABEL vnf\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_COMMAND_LINE}\n"
    );
    write_file(&cfg, text.as_bytes(), mtime.max(FAT_EPOCH))?;
    // mcopy -m keeps the files' own times.
    let kernel_copy = work.join("vmlinuz");
    let initrd_copy = work.join("initrd.img");
    fs::copy(kernel, &kernel_copy).with_context(|| format!("{}: cannot copy", kernel.display()))?;
    fs::copy(initrd, &initrd_copy).with_context(|| format!("{}: cannot copy", initrd.display()))?;
    set_mtime(&kernel_copy, mtime.max(FAT_EPOCH))?;
    set_mtime(&initrd_copy, mtime.max(FAT_EPOCH))?;
    let content = fs::metadata(&kernel_copy)?.len() + fs::metadata(&initrd_copy)?.len();
    // FAT's own tables, syslinux's ldlinux.sys/.c32 (~120 KiB) and slack, to whole MiB.
    const MIB: u64 = 1 << 20;
    let size = (content + content / 16 + 4 * MIB).div_ceil(MIB) * MIB;
    let raw = work.join("disk.raw");
    let _ = fs::remove_file(&raw);
    fs::File::create(&raw)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("{}: cannot create", raw.display()))?;
    let env = |c: &mut Command| {
        c.env("SOURCE_DATE_EPOCH", &epoch).env("TZ", "UTC");
    };
    let mut mkfs = Command::new(&disk.mkfs_vfat);
    mkfs.args(["-n", FAT_LABEL, "-i", FAT_VOLUME_ID, "--invariant"])
        .arg(&raw);
    env(&mut mkfs);
    run(&mut mkfs)?;
    let mut syslinux = Command::new(&disk.syslinux);
    syslinux.arg("--install").arg(&raw);
    env(&mut syslinux);
    run(&mut syslinux)?;
    let mut mcopy = Command::new(&disk.mcopy);
    mcopy
        .arg("-m")
        .arg("-i")
        .arg(&raw)
        .arg(&kernel_copy)
        .arg(&initrd_copy)
        .arg(&cfg)
        .arg("::/");
    env(&mut mcopy);
    run(&mut mcopy)?;
    let _ = fs::remove_file(qcow2);
    run(Command::new(&disk.qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(qcow2))?;
    let _ = fs::remove_file(&raw);
    set_mtime(qcow2, mtime)
}

// ---------------------------------------------------------------------------------------
// Tools

#[derive(Debug)]
enum IsoTool {
    Xorriso(PathBuf),
    Genisoimage(PathBuf),
}

#[derive(Debug)]
struct DiskTools {
    mkfs_vfat: PathBuf,
    syslinux: PathBuf,
    mcopy: PathBuf,
    qemu_img: PathBuf,
}

/// The programs the build runs, found before anything is downloaded.
#[derive(Debug)]
struct Tools {
    apt_get: PathBuf,
    apt_cache: PathBuf,
    dpkg_deb: PathBuf,
    gzip: PathBuf,
    sha256sum: PathBuf,
    strip: Option<PathBuf>,
    iso: IsoTool,
    disk: Option<DiskTools>,
}

impl Tools {
    fn find(qcow2: bool) -> anyhow::Result<Tools> {
        let iso = match (find_tool("xorriso"), find_tool("genisoimage")) {
            (Some(x), _) => IsoTool::Xorriso(x),
            (None, Some(g)) => IsoTool::Genisoimage(g),
            (None, None) => bail!(
                "neither `xorriso` nor `genisoimage` found (for the seeds): install the \
                 Debian package xorriso (apt-get install xorriso)"
            ),
        };
        let disk = if qcow2 {
            Some(DiskTools {
                mkfs_vfat: need("mkfs.vfat", "dosfstools", "the disk.qcow2 images")?,
                syslinux: need("syslinux", "syslinux", "the disk.qcow2 images")?,
                mcopy: need("mcopy", "mtools", "the disk.qcow2 images")?,
                qemu_img: need("qemu-img", "qemu-utils", "the disk.qcow2 images")?,
            })
        } else {
            None
        };
        Ok(Tools {
            apt_get: need("apt-get", "apt", "downloading the kernel and busybox")?,
            apt_cache: need("apt-cache", "apt", "downloading the kernel and busybox")?,
            dpkg_deb: need("dpkg-deb", "dpkg", "unpacking the kernel and busybox")?,
            gzip: need("gzip", "gzip", "the initrds")?,
            sha256sum: need("sha256sum", "coreutils", "the report")?,
            strip: find_tool("strip"),
            iso,
            disk,
        })
    }
}

/// `name` in `$PATH` or the sbin directories (mkfs.vfat lives there, and a user's `$PATH`
/// may lack them).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn need(name: &str, package: &str, what: &str) -> anyhow::Result<PathBuf> {
    find_tool(name).with_context(|| {
        format!(
            "`{name}` not found (needed for {what}): install the Debian package {package} \
             (apt-get install {package})"
        )
    })
}

/// Run `cmd`; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn sha256(tools: &Tools, file: &Path) -> anyhow::Result<String> {
    let out = run(Command::new(&tools.sha256sum).arg(file))?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("sha256sum {}: no output", file.display()))
}

/// `data` through `gzip -n -9` (no name, no time: the same bytes every time) into `out`.
fn gzip(tools: &Tools, data: &[u8], out: &Path) -> anyhow::Result<()> {
    let file =
        fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut child = Command::new(&tools.gzip)
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(data).context("gzip: cannot write")?;
    }
    let status = child.wait_with_output().context("gzip")?;
    if !status.status.success() {
        bail!(
            "gzip failed ({}): {}",
            status.status,
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    Ok(())
}

/// The binary at `path` without symbols (`strip`; as it is when strip is missing).
fn stripped(tools: &Tools, path: &Path, work: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(strip) = &tools.strip {
        let out = work.join("stripped");
        let _ = fs::remove_file(&out);
        run(Command::new(strip)
            .arg("--strip-all")
            .arg("-o")
            .arg(&out)
            .arg(path))?;
        return fs::read(&out).with_context(|| format!("{}: cannot read", out.display()));
    }
    fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn write_file(path: &Path, data: &[u8], mtime: u64) -> anyhow::Result<()> {
    fs::write(path, data).with_context(|| format!("{}: cannot write", path.display()))?;
    set_mtime(path, mtime)
}

fn set_mtime(path: &Path, mtime: u64) -> anyhow::Result<()> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
    fs::File::open(path)
        .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time)))
        .with_context(|| format!("{}: cannot set its time", path.display()))
}

// ---------------------------------------------------------------------------------------
// Debian packages

/// The kernel: `linux-image-cloud-amd64`'s dependency, as apt resolves it now.
fn fetch_kernel(
    tools: &Tools,
    debs: &Path,
    log: &mut dyn Write,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Package> {
    let _ = writeln!(log, "resolving {KERNEL_PACKAGE} with apt-cache depends");
    let depends = run(Command::new(&tools.apt_cache)
        .args(["depends", KERNEL_PACKAGE])
        .env("LC_ALL", "C"));
    let name = depends.ok().and_then(|out| {
        String::from_utf8_lossy(&out).lines().find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|d| d.starts_with("linux-image-") && !d.starts_with('<'))
                .map(str::to_string)
        })
    });
    match name {
        Some(name) => fetch(tools, debs, &name, log, warnings),
        None => cached(
            debs,
            |f| f.starts_with("linux-image-") && f.contains("-cloud-amd64_"),
            KERNEL_PACKAGE,
            warnings,
        ),
    }
}

/// Package `name`, downloaded into `debs` with `apt-get download` unless the cache has the
/// very file apt would fetch (same name, same SHA-256).
fn fetch(
    tools: &Tools,
    debs: &Path,
    name: &str,
    log: &mut dyn Write,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Package> {
    // In an empty directory: apt prints nothing for a file already in the current one.
    let empty = debs.join(format!(".print-uris-{}", std::process::id()));
    fs::create_dir_all(&empty).with_context(|| format!("{}: cannot create", empty.display()))?;
    let uris = run(Command::new(&tools.apt_get)
        .args(["download", "--print-uris", name])
        .current_dir(&empty)
        .env("LC_ALL", "C"));
    let _ = fs::remove_dir(&empty);
    // 'URL' FILE SIZE SHA256:HEX
    let line = uris.ok().and_then(|out| {
        String::from_utf8_lossy(&out)
            .lines()
            .find(|l| l.starts_with('\''))
            .map(str::to_string)
    });
    let Some(line) = line else {
        let prefix = format!("{name}_");
        return cached(debs, |f| f.starts_with(&prefix), name, warnings);
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (url, file, hash) = match fields.as_slice() {
        [url, file, _size, hash, ..] => (
            url.trim_matches('\'').to_string(),
            file.to_string(),
            hash.strip_prefix("SHA256:").map(str::to_lowercase),
        ),
        _ => bail!("apt-get download --print-uris {name}: cannot read `{line}`"),
    };
    let deb = debs.join(&file);
    let version = deb_version(&file).unwrap_or_default();
    if deb.is_file() && (hash.is_none() || hash == Some(sha256(tools, &deb)?)) {
        let _ = writeln!(log, "{name} {version}: in the cache");
        return Ok(Package {
            name: name.to_string(),
            version,
            url: Some(url),
            deb,
            reused: true,
        });
    }
    let _ = writeln!(log, "{name} {version}: downloading {url}");
    // Into a directory of this process's own, then renamed into the cache: two builds
    // sharing a cache never see each other's half-written file.
    let private = debs.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&private);
    fs::create_dir_all(&private)
        .with_context(|| format!("{}: cannot create", private.display()))?;
    let downloaded = run(Command::new(&tools.apt_get)
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", name])
        .current_dir(&private)
        .env("LC_ALL", "C"))
    .and_then(|_| {
        let fresh = private.join(&file);
        if let Some(hash) = &hash {
            let got = sha256(tools, &fresh)?;
            if got != *hash {
                bail!("{}: SHA-256 {got}, apt says {hash}", fresh.display());
            }
        }
        fs::rename(&fresh, &deb)
            .with_context(|| format!("{}: cannot move into the cache", deb.display()))
    });
    let _ = fs::remove_dir_all(&private);
    downloaded?;
    Ok(Package {
        name: name.to_string(),
        version,
        url: Some(url),
        deb,
        reused: false,
    })
}

/// When apt cannot resolve a package (no `apt-get update` yet, no network): the newest
/// matching .deb in the cache.
fn cached(
    debs: &Path,
    matches: impl Fn(&str) -> bool,
    what: &str,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Package> {
    let mut found: Vec<String> = fs::read_dir(debs)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|f| f.ends_with(".deb") && matches(f))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let Some(file) = found.pop() else {
        bail!(
            "apt cannot resolve {what} and the cache {} has none: run `apt-get update` \
             (and check that Debian's package mirror is reachable)",
            debs.display()
        );
    };
    warnings.push(format!(
        "apt cannot resolve {what} (run `apt-get update`): used the cached {file}"
    ));
    let name = file.split('_').next().unwrap_or(&file).to_string();
    Ok(Package {
        name,
        version: deb_version(&file).unwrap_or_default(),
        url: None,
        deb: debs.join(&file),
        reused: true,
    })
}

/// The version in a .deb's file name `NAME_VERSION_ARCH.deb` (apt writes an epoch's `:`
/// as `%3a`).
fn deb_version(file: &str) -> Option<String> {
    let mut parts = file.split('_');
    let _name = parts.next()?;
    Some(parts.next()?.replace("%3a", ":").replace("%3A", ":"))
}

/// The package's files, unpacked once into the cache with `dpkg-deb -x`.
fn extract(
    tools: &Tools,
    cache: &Path,
    package: &Package,
    log: &mut dyn Write,
) -> anyhow::Result<PathBuf> {
    let stem = package
        .deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = cache.join("unpacked").join(&stem);
    if root.join(".complete").is_file() {
        return Ok(root);
    }
    let _ = writeln!(log, "unpacking {}", package.deb.display());
    let tmp = cache
        .join("unpacked")
        .join(format!("{stem}.tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    run(Command::new(&tools.dpkg_deb)
        .arg("-x")
        .arg(&package.deb)
        .arg(&tmp))?;
    fs::write(tmp.join(".complete"), b"")
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    // Another build may have unpacked it meanwhile: then its copy stays.
    if root.join(".complete").is_file() {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).with_context(|| format!("{}: cannot rename", tmp.display()))?;
    Ok(root)
}

/// An unpacked kernel package.
#[derive(Debug)]
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    fn find(root: &Path) -> anyhow::Result<Kernel> {
        let boot = root.join("boot");
        let release = fs::read_dir(&boot)
            .with_context(|| format!("{}: no kernel in the package", boot.display()))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .find_map(|f| f.strip_prefix("vmlinuz-").map(str::to_string))
            .with_context(|| format!("{}: no vmlinuz-*", boot.display()))?;
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|d| d.is_dir())
            .with_context(|| format!("{}: no modules for {release}", root.display()))?;
        Ok(Kernel {
            vmlinuz: boot.join(format!("vmlinuz-{release}")),
            release,
            modules,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Kernel modules

/// A module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name (`virtio_net`).
    pub name: String,
    /// Its file, relative to the modules directory (`kernel/drivers/net/virtio_net.ko`).
    pub path: String,
    /// Every module it needs, transitively, in load order (as modules.dep lists them).
    pub all_depends: Vec<String>,
}

/// The modules of `roots` and everything they need, dependencies first. A root the kernel
/// has built in (modules.builtin) is skipped; one it has neither way is an error.
pub fn resolve_modules(dir: &Path, roots: &[&str]) -> anyhow::Result<Vec<Module>> {
    let mut files = BTreeMap::new();
    index_modules(dir, &dir.join("kernel"), &mut files)?;
    let builtin: BTreeSet<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for root in roots {
        let root = module_name(root);
        if builtin.contains(&root) && !files.contains_key(&root) {
            continue;
        }
        visit(
            dir,
            &root,
            &files,
            &mut depends,
            &mut order,
            &mut Vec::new(),
        )?;
    }
    let mut modules = Vec::new();
    for name in &order {
        // Every dependency, transitively, in load order.
        let mut all = BTreeSet::new();
        let mut stack = depends[name].clone();
        while let Some(d) = stack.pop() {
            if all.insert(d.clone()) {
                stack.extend(depends.get(&d).cloned().unwrap_or_default());
            }
        }
        let all_depends = order
            .iter()
            .filter(|m| all.contains(*m))
            .rev()
            .map(|m| files[m].clone())
            .collect();
        modules.push(Module {
            name: name.clone(),
            path: files[name].clone(),
            all_depends,
        });
    }
    Ok(modules)
}

/// Depth first: `name`'s dependencies, then `name`.
fn visit(
    dir: &Path,
    name: &str,
    files: &BTreeMap<String, String>,
    depends: &mut BTreeMap<String, Vec<String>>,
    order: &mut Vec<String>,
    path: &mut Vec<String>,
) -> anyhow::Result<()> {
    if depends.contains_key(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
    }
    let file = files
        .get(name)
        .with_context(|| format!("the kernel has no module {name} (in {})", dir.display()))?;
    let data = fs::read(dir.join(file)).with_context(|| format!("{file}: cannot read"))?;
    let modinfo = elf::section(&data, ".modinfo")
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?
        .with_context(|| format!("{file}: no .modinfo section"))?;
    let deps: Vec<String> = modinfo_depends(modinfo);
    path.push(name.to_string());
    for d in &deps {
        visit(dir, d, files, depends, order, path)?;
    }
    path.pop();
    depends.insert(name.to_string(), deps);
    order.push(name.to_string());
    Ok(())
}

/// The `depends=a,b` entry of a module's `.modinfo` (NUL-separated `key=value` strings).
pub fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// A module's name from its name or file name: `-` and `_` are the same to the kernel.
fn module_name(s: &str) -> String {
    s.trim_end_matches(".ko").replace('-', "_")
}

fn index_modules(
    base: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot read", dir.display()))?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            index_modules(base, &path, files)?;
        } else if file_name.ends_with(".ko") {
            let rel = path
                .strip_prefix(base)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.insert(module_name(&file_name), rel);
        } else if file_name.contains(".ko.") {
            bail!(
                "{}: compressed kernel modules are not supported (busybox insmod loads plain .ko)",
                path.display()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ELF

/// Just enough of ELF64 (little-endian) to tell a static binary from a dynamic one and to
/// read a kernel module's `.modinfo`.
pub mod elf {
    use std::ops::Range;

    /// Why a file could not be read as ELF.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum ElfError {
        /// not a little-endian ELF64 file
        #[error("not a little-endian ELF64 file")]
        NotElf64,
        /// truncated ELF file
        #[error("truncated ELF file")]
        Truncated,
    }

    /// The file header's fields.
    mod field {
        use std::ops::Range;
        pub const MAGIC: Range<usize> = 0..4;
        pub const CLASS: usize = 4;
        pub const DATA: usize = 5;
        pub const PHOFF: Range<usize> = 0x20..0x28;
        pub const SHOFF: Range<usize> = 0x28..0x30;
        pub const PHENTSIZE: Range<usize> = 0x36..0x38;
        pub const PHNUM: Range<usize> = 0x38..0x3a;
        pub const SHENTSIZE: Range<usize> = 0x3a..0x3c;
        pub const SHNUM: Range<usize> = 0x3c..0x3e;
        pub const SHSTRNDX: Range<usize> = 0x3e..0x40;
        pub const HEADER_LEN: usize = 0x40;
    }

    /// A program header's fields.
    mod program {
        use std::ops::Range;
        pub const TYPE: Range<usize> = 0..4;
        pub const OFFSET: Range<usize> = 0x08..0x10;
        pub const FILESZ: Range<usize> = 0x20..0x28;
        pub const LEN: usize = 0x38;
    }

    /// A section header's fields.
    mod section {
        use std::ops::Range;
        pub const NAME: Range<usize> = 0..4;
        pub const OFFSET: Range<usize> = 0x18..0x20;
        pub const SIZE: Range<usize> = 0x20..0x28;
        pub const LEN: usize = 0x40;
    }

    /// The program header of the dynamic loader's path.
    pub const PT_INTERP: u32 = 3;
    const MAGIC: &[u8] = b"\x7fELF";
    const CLASS_64: u8 = 2;
    const DATA_LSB: u8 = 1;

    fn bytes(data: &[u8], range: Range<usize>) -> Result<&[u8], ElfError> {
        data.get(range).ok_or(ElfError::Truncated)
    }

    fn uint(data: &[u8], range: Range<usize>) -> Result<u64, ElfError> {
        let b = bytes(data, range)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn usize_at(data: &[u8], range: Range<usize>) -> Result<usize, ElfError> {
        usize::try_from(uint(data, range)?).map_err(|_| ElfError::Truncated)
    }

    fn check(data: &[u8]) -> Result<(), ElfError> {
        if data.len() < field::HEADER_LEN
            || data[field::MAGIC] != *MAGIC
            || data[field::CLASS] != CLASS_64
            || data[field::DATA] != DATA_LSB
        {
            return Err(ElfError::NotElf64);
        }
        Ok(())
    }

    fn shifted(r: Range<usize>, by: usize) -> Range<usize> {
        r.start + by..r.end + by
    }

    /// The dynamic loader a binary asks for (its PT_INTERP), `None` for a static binary.
    pub fn interpreter(data: &[u8]) -> Result<Option<String>, ElfError> {
        check(data)?;
        let phoff = usize_at(data, field::PHOFF)?;
        let entsize = usize_at(data, field::PHENTSIZE)?;
        let count = usize_at(data, field::PHNUM)?;
        if count > 0 && entsize < program::LEN {
            return Err(ElfError::Truncated);
        }
        for i in 0..count {
            let at = phoff
                .checked_add(i.checked_mul(entsize).ok_or(ElfError::Truncated)?)
                .ok_or(ElfError::Truncated)?;
            if uint(data, shifted(program::TYPE, at))? as u32 != PT_INTERP {
                continue;
            }
            let offset = usize_at(data, shifted(program::OFFSET, at))?;
            let size = usize_at(data, shifted(program::FILESZ, at))?;
            let path = bytes(data, offset..offset.saturating_add(size))?;
            let path = path.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(path).into_owned()));
        }
        Ok(None)
    }

    /// The contents of the section called `name`, if there is one.
    pub fn section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
        check(data)?;
        let shoff = usize_at(data, field::SHOFF)?;
        let entsize = usize_at(data, field::SHENTSIZE)?;
        let count = usize_at(data, field::SHNUM)?;
        let strndx = usize_at(data, field::SHSTRNDX)?;
        if count == 0 {
            return Ok(None);
        }
        if entsize < section::LEN || strndx >= count {
            return Err(ElfError::Truncated);
        }
        let header = |i: usize| -> Result<usize, ElfError> {
            i.checked_mul(entsize)
                .and_then(|o| o.checked_add(shoff))
                .ok_or(ElfError::Truncated)
        };
        let contents = |at: usize| -> Result<&'a [u8], ElfError> {
            let offset = usize_at(data, shifted(section::OFFSET, at))?;
            let size = usize_at(data, shifted(section::SIZE, at))?;
            bytes(
                data,
                offset..offset.checked_add(size).ok_or(ElfError::Truncated)?,
            )
        };
        let names = contents(header(strndx)?)?;
        for i in 0..count {
            let at = header(i)?;
            let name_at = usize_at(data, shifted(section::NAME, at))?;
            let this = names
                .get(name_at..)
                .and_then(|n| n.split(|&b| b == 0).next())
                .ok_or(ElfError::Truncated)?;
            if this == name.as_bytes() {
                return contents(at).map(Some);
            }
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------
// cpio

/// What a path in the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// An initramfs being assembled: paths (relative, no leading `/`) sorted, parents first.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

/// newc's header fields, each 8 hex digits after the 6-byte magic ("SVR4 with no CRC",
/// the format the kernel's initramfs unpacker reads: Documentation/driver-api/
/// early-userspace/buffer-format.rst).
mod newc {
    pub const MAGIC: &[u8] = b"070701";
    pub const TRAILER: &str = "TRAILER!!!";
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFCHR: u32 = 0o020000;
}

impl Archive {
    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            self.nodes.entry(parent.to_string()).or_insert(Node::Dir);
            at += i + 1;
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        self.nodes.insert(path.to_string(), Node::Dir);
    }

    /// A regular file (and its parent directories).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parents(path);
        self.nodes
            .insert(path.to_string(), Node::File { data, mode });
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.nodes
            .insert(path.to_string(), Node::Symlink(target.to_string()));
    }

    /// A character device (0600).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.nodes
            .insert(path.to_string(), Node::CharDevice { major, minor });
    }

    /// The archive in newc format: sorted paths, inodes numbered from 1 in that order,
    /// owner root, every mtime `mtime`.
    pub fn newc(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 0u32;
        for (path, node) in &self.nodes {
            ino += 1;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (newc::S_IFDIR | 0o755, 2, &[], (0, 0)),
                Node::File { data, mode } => (newc::S_IFREG | mode, 1, data, (0, 0)),
                Node::Symlink(target) => (newc::S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Node::CharDevice { major, minor } => {
                    (newc::S_IFCHR | 0o600, 1, &[], (*major, *minor))
                }
            };
            entry(&mut out, path, ino, mode, nlink, mtime, data, rdev);
        }
        entry(&mut out, newc::TRAILER, 0, 0, 1, 0, &[], (0, 0));
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    out: &mut Vec<u8>,
    path: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
) {
    out.extend_from_slice(newc::MAGIC);
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        path.len() as u32 + 1, // namesize, with the NUL
        0,                     // check (no CRC)
    ];
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Standard base64 with padding (RFC 4648 §4), for cloud-init's `encoding: b64`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        // RFC 4648 §10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    /// Read back a newc archive: (path, mode, mtime, data) per entry, trailer excluded.
    fn parse_newc(mut a: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            assert_eq!(&a[..6], b"070701", "magic at {offset}");
            let field = |i: usize| hex(&a[6 + 8 * i..14 + 8 * i]);
            let (mode, mtime, size, namesize) = (field(1), field(5), field(6), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&a[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_at = name_end.div_ceil(4) * 4;
            let data = a[data_at..data_at + size as usize].to_vec();
            let next = (data_at + size as usize).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, mtime, data));
            a = &a[next..];
            offset += next;
        }
    }

    #[test]
    fn newc_is_sorted_parents_first_and_reproducible() {
        let mut a = Archive::default();
        a.file("init", b"#!/bin/sh\n".to_vec(), 0o755);
        a.file("lib/modules/x/kernel/a.ko", vec![1, 2, 3], 0o644);
        a.symlink("bin/sh", "busybox");
        a.char_device("dev/console", 5, 1);
        let bytes = a.newc(42);
        assert_eq!(bytes, a.clone().newc(42));
        assert!(bytes.len().is_multiple_of(4));
        let entries = parse_newc(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/kernel",
                "lib/modules/x/kernel/a.ko"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 42));
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").3, b"busybox");
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!(find("lib/modules/x/kernel/a.ko").3, [1, 2, 3]);
        // The console's device number: rdevmajor 5, rdevminor 1.
        let at = bytes
            .windows(b"dev/console\0".len())
            .position(|w| w == b"dev/console\0")
            .unwrap()
            - 110;
        assert_eq!(&bytes[at + 6 + 8 * 9..at + 6 + 8 * 11], b"0000000500000001");
    }

    /// A minimal ELF64 with one program header (PT_INTERP if `interp`) and a `.modinfo`
    /// section.
    fn tiny_elf(interp: Option<&str>, modinfo: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x40];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let put = |f: &mut Vec<u8>, at: usize, v: u64, n: usize| {
            f[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        };
        // Program header at 0x40.
        let interp_bytes = interp.map(|p| format!("{p}\0")).unwrap_or_default();
        let strtab = b"\0.shstrtab\0.modinfo\0";
        let data_at = 0x40 + 0x38;
        let interp_at = data_at;
        let strtab_at = interp_at + interp_bytes.len();
        let modinfo_at = strtab_at + strtab.len();
        let sh_at = modinfo_at + modinfo.len();
        f.resize(sh_at + 3 * 0x40, 0);
        put(&mut f, 0x20, 0x40, 8); // phoff
        put(&mut f, 0x28, sh_at as u64, 8); // shoff
        put(&mut f, 0x36, 0x38, 2);
        put(&mut f, 0x38, 1, 2);
        put(&mut f, 0x3a, 0x40, 2);
        put(&mut f, 0x3c, 3, 2);
        put(&mut f, 0x3e, 1, 2); // shstrndx
        put(&mut f, 0x40, if interp.is_some() { 3 } else { 1 }, 4);
        put(&mut f, 0x40 + 0x08, interp_at as u64, 8);
        put(&mut f, 0x40 + 0x20, interp_bytes.len() as u64, 8);
        f[interp_at..strtab_at].copy_from_slice(interp_bytes.as_bytes());
        f[strtab_at..modinfo_at].copy_from_slice(strtab);
        f[modinfo_at..sh_at].copy_from_slice(modinfo);
        // Section 1: .shstrtab, section 2: .modinfo.
        let sh1 = sh_at + 0x40;
        put(&mut f, sh1, 1, 4);
        put(&mut f, sh1 + 0x18, strtab_at as u64, 8);
        put(&mut f, sh1 + 0x20, strtab.len() as u64, 8);
        let sh2 = sh_at + 0x80;
        put(&mut f, sh2, 11, 4);
        put(&mut f, sh2 + 0x18, modinfo_at as u64, 8);
        put(&mut f, sh2 + 0x20, modinfo.len() as u64, 8);
        f
    }

    #[test]
    fn elf_interpreter_tells_static_from_dynamic() {
        let dynamic = tiny_elf(Some("/lib64/ld-linux-x86-64.so.2"), b"");
        assert_eq!(
            elf::interpreter(&dynamic),
            Ok(Some("/lib64/ld-linux-x86-64.so.2".to_string()))
        );
        assert_eq!(elf::interpreter(&tiny_elf(None, b"")), Ok(None));
        assert_eq!(
            elf::interpreter(b"#!/bin/sh\n"),
            Err(elf::ElfError::NotElf64)
        );
        let mut cut = dynamic.clone();
        cut.truncate(0x50);
        assert_eq!(elf::interpreter(&cut), Err(elf::ElfError::Truncated));
    }

    #[test]
    fn modinfo_depends_from_a_module() {
        let info = b"license=GPL\0depends=virtio_ring,net-failover,virtio\0name=virtio_net\0";
        let ko = tiny_elf(None, info);
        let section = elf::section(&ko, ".modinfo").unwrap().unwrap();
        assert_eq!(section, info);
        assert_eq!(
            modinfo_depends(section),
            ["virtio_ring", "net_failover", "virtio"]
        );
        assert_eq!(
            modinfo_depends(b"depends=\0name=virtio\0"),
            Vec::<String>::new()
        );
        assert_eq!(elf::section(&ko, ".nothing"), Ok(None));
    }

    #[test]
    fn resolves_modules_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        fs::create_dir_all(&k).unwrap();
        let module = |name: &str, deps: &str| {
            let info = format!("depends={deps}\0name={name}\0");
            fs::write(
                k.join(format!("{name}.ko")),
                tiny_elf(None, info.as_bytes()),
            )
            .unwrap();
        };
        module("virtio", "");
        module("virtio_ring", "");
        module("failover", "");
        module("net_failover", "failover");
        module("virtio_net", "net_failover,virtio_ring,virtio");
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/isofs/isofs.ko\n",
        )
        .unwrap();
        let modules = resolve_modules(dir.path(), &["virtio_net", "isofs", "virtio"]).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "failover",
                "net_failover",
                "virtio_ring",
                "virtio",
                "virtio_net"
            ]
        );
        assert_eq!(
            modules[4].all_depends,
            [
                "kernel/drivers/virtio.ko",
                "kernel/drivers/virtio_ring.ko",
                "kernel/drivers/net_failover.ko",
                "kernel/drivers/failover.ko"
            ]
        );
        let missing = resolve_modules(dir.path(), &["e1000"]).unwrap_err();
        assert!(missing.to_string().contains("no module e1000"), "{missing}");
    }

    fn plan_of(file: &str) -> Plan {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file);
        let text = fs::read_to_string(&path).unwrap();
        crate::plan::plan(&path, &text, &Default::default()).unwrap()
    }

    #[test]
    fn seed_of_the_three_tier_edge() {
        let plan = plan_of("chain-three-tier.yaml");
        let edge = &plan.manifest.instances[0];
        let mut warnings = Vec::new();
        let seed = Seed::new(&plan, edge, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(seed.instance_id, "shop-edge");
        assert_eq!(
            seed.meta_data,
            "instance-id: shop-edge\nlocal-hostname: edge\n"
        );
        let env: Vec<&str> = seed.boot_env.lines().skip(1).collect();
        assert_eq!(
            env,
            [
                "VNF_KIND=router",
                "VNF_NAME=edge",
                "VNF_TENANT=shop",
                "UNDERLAY_ADDRESS=198.18.0.1/24",
                "UNDERLAY_GATEWAY=",
                "UNDERLAY_MTU=1550",
                "EXTERNAL_INTERFACES=eth1",
                "MANAGEMENT_INTERFACE=eth2",
                "ADMIN=0.0.0.0:9100",
            ]
        );
        assert!(seed.config.contains("trunk: eth1"));
        assert!(seed.user_data.starts_with("#cloud-config\n"));
        assert!(seed.user_data.contains(&base64(seed.config.as_bytes())));
    }

    #[test]
    fn seed_of_a_loopback_chain_warns() {
        let plan = plan_of("chain-demo.yaml");
        let mut warnings = Vec::new();
        let seed = Seed::new(&plan, &plan.manifest.instances[0], &mut warnings).unwrap();
        assert!(seed.boot_env.contains("UNDERLAY_ADDRESS=127.0.0.21/24\n"));
        assert!(seed.boot_env.contains("MANAGEMENT_INTERFACE=eth1\n"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("loopback"), "{warnings:?}");
    }
}
