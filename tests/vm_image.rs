//! VM images (`vnfctl image`): each function kind boots under `qemu-system-x86_64` with
//! software emulation (TCG), configured by its NoCloud seed alone.
//!
//! ```text
//!  uls (underlay switch namespace): Linux bridge br0, 198.18.0.0/24
//!   |                 |                       |
//!  hv1 198.18.0.11   hv2 198.18.0.12         tap0 -- qemu: the router VM
//!  vx0 VNI 100       vx0 VNI 200                  eth0 198.18.0.1 (underlay, from the seed)
//!  10.0.1.5/24       10.0.2.5/24                  eth1 user networking: admin :9100
//!  via 10.0.1.1      via 10.0.2.1                 forwarded to 127.0.0.1:19100 in `uls`
//! ```
//!
//! `router_image_boots_and_routes_vxlan`: the router's image boots to its READY line, its
//! `/metrics` answer through the forwarded port, hv1 pings hv2 through the VM (kernel
//! `vxlan` devices as the hypervisors' VTEPs), and an ACPI power-off stops it cleanly.
//! `firewall_lb_and_disk_images_boot_to_ready`: the firewall and load-balancer images,
//! and the router's qcow2 disk, boot to READY with their seeds and answer `/metrics`, their
//! underlay address taken by DHCP (`underlay.dhcp`); so does the router with an
//! OpenStack-style config drive (config-2, user-data) instead of the seed.
//! `router_image_restarts_its_vnf`: the guest's init restarts a VNF that was killed.
//! `image_build_is_reproducible`: two builds of the same chain are byte-identical.
//!
//! The images hold statically linked binaries: the tests build them with
//! `scripts/build-static` (cargo caches the build). Boot times under TCG are printed; on a
//! busy 2-core machine the wait for READY is generous, and no time is asserted.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vnf_tests::netns::{
    Family, Netns, Proc, WorkDir, bin, have_root, have_tool, hypervisor, ping, serial, sh,
    underlay_switch, wait_for,
};

/// Generous: TCG boots of a distribution kernel take 10-40 s on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Guest memory: the image's documented need.
const MEMORY_MB: u32 = 128;
/// The kernel command line `vnfctl image` documents.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The tools the image build and the boot need (`.ci/run` installs them).
const TOOLS: [&str; 7] = [
    "qemu-system-x86_64",
    "qemu-img",
    "xorriso",
    "mkfs.vfat",
    "syslinux",
    "mcopy",
    "dpkg-deb",
];

fn tools(test: &str) -> bool {
    TOOLS.iter().all(|t| have_tool(test, t))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The statically linked VNF binaries, built once per test run.
fn static_bins() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(workspace().join("scripts/build-static"))
            .current_dir(workspace())
            .output()
            .expect("run scripts/build-static");
        assert!(
            out.status.success(),
            "scripts/build-static failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        workspace().join("target/x86_64-unknown-linux-gnu/release")
    })
    .clone()
}

/// Downloads (the Debian kernel and busybox packages) are kept across test runs.
fn cache() -> PathBuf {
    workspace().join("target/vnfctl-image-cache")
}

/// `vnfctl image CHAIN --out DIR`, with the static binaries and the shared cache.
fn build_images(chain: &Path, out: &Path) -> String {
    let cmd = format!(
        "{} image {} --out {} --bin-dir {} --cache {}",
        bin("vnfctl").display(),
        chain.display(),
        out.display(),
        static_bins().display(),
        cache().display()
    );
    let started = Instant::now();
    let o = sh(&cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "`{cmd}` failed:\n{text}");
    println!(
        "vnfctl image {}: {:.1} s",
        chain.display(),
        started.elapsed().as_secs_f64()
    );
    text
}

/// A VM under qemu, its serial console in a file; killed on drop.
struct Vm {
    proc: Proc,
    console: PathBuf,
    monitor: PathBuf,
    started: Instant,
    name: String,
}

impl Vm {
    /// Boot in namespace `ns` (which holds its tap device, and where its forwarded admin
    /// port listens). `boot` is the `-kernel/-initrd` or `-drive` part, `devices` the
    /// seed's drive and the NICs.
    fn start(ns: &Netns, dir: &Path, name: &str, boot: &str, devices: &str) -> Vm {
        let console = dir.join(format!("{name}.console"));
        let monitor = dir.join(format!("{name}.monitor"));
        let cmd = format!(
            "qemu-system-x86_64 -machine q35,accel=tcg -m {MEMORY_MB} -nographic \
             -no-reboot {boot} {devices} -monitor unix:{},server,nowait",
            monitor.display()
        );
        let proc = ns.spawn_logged(&cmd, Some(&console));
        Vm {
            proc,
            console,
            monitor,
            started: Instant::now(),
            name: name.into(),
        }
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Wait for the READY line; returns the boot time.
    fn wait_ready(&mut self) -> Duration {
        let ok = wait_for(READY_TIMEOUT, || {
            self.console_text().contains("vnf-image: READY") || !self.proc.running()
        });
        let text = self.console_text();
        assert!(
            ok && text.contains("vnf-image: READY"),
            "{}: no READY line within {READY_TIMEOUT:?}; console:\n{text}",
            self.name
        );
        let t = self.started.elapsed();
        let line = text
            .lines()
            .find(|l| l.contains("vnf-image: READY"))
            .unwrap_or_default()
            .trim()
            .to_string();
        println!(
            "{}: READY {:.1} s after qemu started: {line}",
            self.name,
            t.as_secs_f64()
        );
        t
    }

    /// ACPI power button (qemu's `system_powerdown`); the VM must stop by itself.
    fn power_off(&mut self) {
        let mut s = UnixStream::connect(&self.monitor).expect("qemu monitor");
        s.write_all(b"system_powerdown\n").expect("monitor write");
        let stopped = self.proc.wait_timeout(Duration::from_secs(60));
        let text = self.console_text();
        assert!(
            stopped.is_some(),
            "{}: still running 60 s after the ACPI power button; console:\n{text}",
            self.name
        );
        assert!(
            text.contains("vnf-image: powering off"),
            "{}: no clean power-off on the console:\n{text}",
            self.name
        );
    }
}

fn kernel_boot(images: &Path, kind: &str) -> String {
    format!(
        "-kernel {0}/{kind}/vmlinuz -initrd {0}/{kind}/initrd.img -append '{CMDLINE}'",
        images.display()
    )
}

/// The management NIC: qemu user networking with the admin port forwarded to `port`.
fn mgmt_nic(port: u16) -> String {
    format!(
        "-netdev user,id=m0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:9100 \
         -device virtio-net-pci,netdev=m0"
    )
}

/// GET `/metrics` through the forwarded port, in the VM's namespace.
fn metrics(ns: &Netns, port: u16) -> String {
    let cmd = format!("curl -sf --max-time 5 http://127.0.0.1:{port}/metrics");
    let o = ns.sh(&cmd);
    assert!(o.status.success(), "scrape through 127.0.0.1:{port} failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const ROUTER_CHAIN: &str = "\
tenant: vmt
underlay: {subnet: 198.18.0.0/24}
networks:
  - {name: a, vni: 100, vteps: [198.18.0.11], subnet: 10.0.1.0/24}
  - {name: b, vni: 200, vteps: [198.18.0.12], subnet: 10.0.2.0/24}
functions:
  - {name: r, kind: router, host: 198.18.0.1, addresses: {a: 10.0.1.1, b: 10.0.2.1}}
chains:
  - {name: ab, from: a, to: b, hops: [r]}
";

#[test]
fn router_image_boots_and_routes_vxlan() {
    const TEST: &str = "router_image_boots_and_routes_vxlan";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST) {
        return;
    }
    let dir = WorkDir::new(TEST);
    let chain = dir.join("chain.yaml");
    std::fs::write(&chain, ROUTER_CHAIN).expect("write chain");
    let images = dir.join("images");
    build_images(&chain, &images);

    let sw = underlay_switch(Family::V4);
    sw.run("ip link set lo up");
    sw.run("ip tuntap add tap0 mode tap");
    sw.run("ip link set tap0 master br0");
    sw.run("ip link set tap0 up");
    let hv1 = hypervisor(&sw, 11, 100, &[1]);
    let hv2 = hypervisor(&sw, 12, 200, &[1]);
    for (hv, addr, gw) in [
        (&hv1, "10.0.1.5", "10.0.1.1"),
        (&hv2, "10.0.2.5", "10.0.2.1"),
    ] {
        hv.run("ip addr flush dev vx0");
        hv.run(&format!("ip addr add {addr}/24 dev vx0"));
        hv.run(&format!("ip route add default via {gw}"));
    }

    let nics = format!(
        "-netdev tap,id=u0,ifname=tap0,script=no,downscript=no \
         -device virtio-net-pci,netdev=u0 {}",
        mgmt_nic(19100)
    );
    let seed = format!(
        "-drive file={},if=virtio,format=raw,readonly=on",
        images.join("seeds/vmt-r.iso").display()
    );
    let mut vm = Vm::start(
        &sw,
        &dir,
        "router",
        &kernel_boot(&images, "vnf-router"),
        &format!("{seed} {nics}"),
    );
    vm.wait_ready();

    let m = metrics(&sw, 19100);
    assert!(
        m.contains("vnf_build_info"),
        "not vnf-router's metrics:\n{m}"
    );
    // hv1 -> VM -> hv2 and back: routed between the two VNIs.
    let (received, out) = ping(&hv1, "-c 5 -i 0.2 -W 3 10.0.2.5");
    assert!(received >= 4, "ping through the router VM:\n{out}");
    let m = metrics(&sw, 19100);
    let forwarded = metric(&m, "vnf_router_forwarded_packets_total");
    assert!(forwarded >= 8.0, "forwarded {forwarded}:\n{m}");
    println!("router VM: ping {received}/5 through it, {forwarded} packets forwarded");

    vm.power_off();
    drop(hv2);
    drop(hv1);
}

const KINDS_CHAIN: &str = "\
tenant: vmk
transit: {vnis: 16000000-16000009}
underlay: {subnet: 198.18.0.0/24, dhcp: true}
networks:
  - {name: out, vni: 300, vteps: [198.18.0.50], subnet: 192.0.2.0/24, gateway: 192.0.2.1}
  - {name: web, vni: 100, vteps: [198.18.0.31], subnet: 10.0.1.0/24}
functions:
  - {name: edge, kind: router, host: 198.18.0.1, addresses: {out: 192.0.2.2}}
  - name: fw
    kind: firewall
    host: 198.18.0.2
    inbound: {default: drop, rules: [{name: http, protocol: tcp, dst_ports: [80], action: accept}]}
  - name: lb
    kind: lb
    host: 198.18.0.3
    addresses: {web: 10.0.1.1}
    pools: [{name: web, backends: [{name: w1, address: \"10.0.1.11:80\"}]}]
    services: [{name: www, vip: 10.0.9.10, port: 80, protocol: tcp, pool: web}]
chains:
  - {name: in, from: out, to: web, hops: [edge, fw, lb]}
";

#[test]
fn firewall_lb_and_disk_images_boot_to_ready() {
    const TEST: &str = "firewall_lb_and_disk_images_boot_to_ready";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST) {
        return;
    }
    let dir = WorkDir::new(TEST);
    let chain = dir.join("chain.yaml");
    std::fs::write(&chain, KINDS_CHAIN).expect("write chain");
    let images = dir.join("images");
    build_images(&chain, &images);

    // Underlay NIC on user networking (restricted: nothing leaves the host), management
    // NIC with the admin port forwarded, in a namespace of the test's own. One VM at a
    // time: TCG is CPU-bound.
    let ns = Netns::new("vmk");
    ns.run("ip link set lo up");
    // This chain's underlay is DHCP: qemu's DHCP server hands out the instance's host
    // address (its first lease is `dhcpstart`); qemu's own addresses kept out of the way.
    let underlay = |host: u8| {
        format!(
            "-netdev user,id=u0,restrict=on,net=198.18.0.0/24,host=198.18.0.254,\
             dns=198.18.0.253,dhcpstart=198.18.0.{host} -device virtio-net-pci,netdev=u0"
        )
    };
    let cases = [
        (
            "fw",
            kernel_boot(&images, "vnf-firewall"),
            "vmk-fw",
            2,
            19101,
            "vnf_conntrack_connections",
        ),
        (
            "lb",
            kernel_boot(&images, "vnf-lb"),
            "vmk-lb",
            3,
            19102,
            "vnf_lb_backend_up",
        ),
        (
            "router-disk",
            format!(
                "-drive file={}/vnf-router/disk.qcow2,if=virtio,format=qcow2,snapshot=on",
                images.display()
            ),
            "vmk-edge",
            1,
            19103,
            "vnf_nat_sessions",
        ),
    ];
    for (name, boot, seed, host, port, family) in cases {
        let nics = format!("{} {}", underlay(host), mgmt_nic(port));
        let seed = format!(
            "-drive file={},if=virtio,format=raw,readonly=on",
            images.join(format!("seeds/{seed}.iso")).display()
        );
        let mut vm = Vm::start(&ns, &dir, name, &boot, &format!("{seed} {nics}"));
        vm.wait_ready();
        let console = vm.console_text();
        assert!(
            console.contains(&format!("eth0: dhcp 198.18.0.{host}/24")),
            "{name}: no DHCP underlay address:\n{console}"
        );
        let m = metrics(&ns, port);
        assert!(
            m.contains(family),
            "{name}: no {family} in its metrics:\n{m}"
        );
        vm.power_off();
    }

    // An OpenStack config drive instead of our seed: an ISO 9660 labelled config-2 with
    // the user-data at openstack/latest/user_data, on a CD-ROM (virtio-scsi, as Nova
    // attaches it with hw_cdrom_bus=scsi and hw_scsi_model=virtio-scsi).
    let stage = dir.join("configdrive/openstack/latest");
    std::fs::create_dir_all(&stage).expect("mkdir");
    std::fs::copy(
        images.join("seeds/vmk-edge.user-data"),
        stage.join("user_data"),
    )
    .expect("the seed's user-data");
    let drive = dir.join("configdrive.iso");
    let o = sh(&format!(
        "xorriso -as mkisofs -quiet -V config-2 -J -r -o {} {}",
        drive.display(),
        dir.join("configdrive").display()
    ));
    assert!(
        o.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let cdrom = format!(
        "-device virtio-scsi-pci -drive file={},if=none,id=cd0,format=raw,media=cdrom,readonly=on \
         -device scsi-cd,drive=cd0",
        drive.display()
    );
    let nics = format!("{} {}", underlay(1), mgmt_nic(19104));
    let boot = kernel_boot(&images, "vnf-router");
    let mut vm = Vm::start(
        &ns,
        &dir,
        "router-configdrive",
        &boot,
        &format!("{cdrom} {nics}"),
    );
    vm.wait_ready();
    assert!(
        vm.console_text().contains("openstack/latest/user_data"),
        "the seed was not the config drive:\n{}",
        vm.console_text()
    );
    let m = metrics(&ns, 19104);
    assert!(m.contains("vnf_nat_sessions"), "router metrics:\n{m}");
    vm.power_off();
}

#[test]
fn image_build_is_reproducible() {
    const TEST: &str = "image_build_is_reproducible";
    let _g = serial();
    if !tools(TEST) {
        return;
    }
    let dir = WorkDir::new(TEST);
    let chain = dir.join("chain.yaml");
    std::fs::write(&chain, ROUTER_CHAIN).expect("write chain");
    let (a, b) = (dir.join("a"), dir.join("b"));
    build_images(&chain, &a);
    build_images(&chain, &b);
    let files = |root: &Path| {
        let mut v: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .expect("read dir")
                .filter_map(Result::ok)
            {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push(p.strip_prefix(root).expect("under root").to_path_buf());
                }
            }
        }
        v.sort();
        v
    };
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa, fb, "the two builds made different files");
    assert!(
        fa.iter().any(|p| p.ends_with("initrd.img"))
            && fa.iter().any(|p| p.ends_with("disk.qcow2")),
        "{fa:?}"
    );
    for f in &fa {
        let (x, y) = (
            std::fs::read(a.join(f)).expect("read"),
            std::fs::read(b.join(f)).expect("read"),
        );
        assert!(
            x == y,
            "{} differs between two builds of the same chain",
            f.display()
        );
        println!(
            "{}: {} bytes, identical in both builds",
            f.display(),
            x.len()
        );
    }
}

/// The guest's init restarts a VNF that dies: a second initramfs archive (the kernel
/// unpacks concatenated archives in order) replaces `/bin/vnf-router` with a wrapper whose
/// first run is SIGKILLed 3 s after it starts; the console shows the exit, the restart and
/// READY again, and the admin endpoint answers.
#[test]
fn router_image_restarts_its_vnf() {
    const TEST: &str = "router_image_restarts_its_vnf";
    let _g = serial();
    if !have_root(TEST) || !tools(TEST) || !have_tool(TEST, "strip") {
        return;
    }
    let dir = WorkDir::new(TEST);
    let chain = dir.join("chain.yaml");
    std::fs::write(&chain, ROUTER_CHAIN).expect("write chain");
    let images = dir.join("images");
    build_images(&chain, &images);

    let real = dir.join("vnf-router.real");
    let o = sh(&format!(
        "strip -o {} {}",
        real.display(),
        static_bins().join("vnf-router").display()
    ));
    assert!(o.status.success(), "strip failed");
    let wrapper = "#!/bin/sh\n\
        # The first run is killed 3 s after it starts; the next ones run normally.\n\
        if [ ! -e /run/vnf-test-crashed ]; then\n\
        \x20   touch /run/vnf-test-crashed\n\
        \x20   /bin/vnf-router.real \"$@\" &\n\
        \x20   pid=$!\n\
        \x20   sleep 3\n\
        \x20   kill -9 $pid\n\
        \x20   wait $pid\n\
        \x20   exit 137\n\
        fi\n\
        exec /bin/vnf-router.real \"$@\"\n";
    let mut overlay = chains::image::Archive::default();
    overlay.dir("bin");
    overlay.file("bin/vnf-router", wrapper.as_bytes().to_vec(), 0o755);
    overlay.file(
        "bin/vnf-router.real",
        std::fs::read(&real).expect("read"),
        0o755,
    );
    let mut initrd = std::fs::read(images.join("vnf-router/initrd.img")).expect("initrd");
    // The kernel looks for the next archive's header on a 4-byte boundary (zeros between
    // archives are skipped).
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend(overlay.newc(0));
    let crashing = dir.join("initrd-crashing.img");
    std::fs::write(&crashing, initrd).expect("write initrd");

    let ns = Netns::new("vmr");
    ns.run("ip link set lo up");
    let boot = format!(
        "-kernel {}/vnf-router/vmlinuz -initrd {} -append '{CMDLINE}'",
        images.display(),
        crashing.display()
    );
    let devices = format!(
        "-drive file={},if=virtio,format=raw,readonly=on \
         -netdev user,id=u0,restrict=on -device virtio-net-pci,netdev=u0 {}",
        images.join("seeds/vmt-r.iso").display(),
        mgmt_nic(19105)
    );
    let mut vm = Vm::start(&ns, &dir, "router-restart", &boot, &devices);
    vm.wait_ready();
    let again = wait_for(READY_TIMEOUT, || {
        vm.console_text().contains("vnf-image: READY again")
    });
    let text = vm.console_text();
    assert!(again, "no READY again after the VNF was killed:\n{text}");
    assert!(
        text.contains("vnf-image: vnf-router exited (status 137), restarting in 0.1s"),
        "no restart line:\n{text}"
    );
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "router VM: `{}` then `{}`",
        line("exited (status 137)"),
        line("READY again")
    );
    let m = metrics(&ns, 19105);
    assert!(
        m.contains("vnf_build_info"),
        "metrics after the restart:\n{m}"
    );
    vm.power_off();
}
