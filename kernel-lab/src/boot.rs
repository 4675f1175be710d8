//! The kernel lab's host side: boots a stock Debian cloud kernel under qemu
//! with the agent inside and `faultline-kernel-lab` (kernel-lab/src/guest.rs) as
//! `/init`, which exercises netem latency, nftables partitions and crash
//! recovery in network namespaces of the guest (see docs/agent.md, "Kernel
//! lab"). This program only installs, packs and boots, and like the
//! guest's `/init` it runs every program as an argument vector, never
//! through a shell.
//!
//! ```text
//! faultline-kernel-lab-boot --prepare        install packages, fetch and unpack the kernel
//! faultline-kernel-lab-boot AGENT LAB_INIT   prepare (reusing the cache), build the
//!                                            initramfs, boot; the serial console goes
//!                                            to stdout, progress to stderr
//! ```
//!
//! AGENT and LAB_INIT are the faultline-agent and faultline-kernel-lab
//! binaries. The kernel and its module archive are cached under
//! `target/kernel-lab/` (`FAULTLINE_KERNEL_LAB_DIR` overrides). The guest
//! has no network device: all its traffic stays inside namespaces it creates.
//!
//! Environment: `FLTLAB_DELAY_MS` (default 50) and `FLTLAB_SAMPLES` (default
//! 20) reach `/init` on the kernel command line, as does `FLTLAB_BENCH` (run
//! only the benchmark of kernel-lab/benches/kernel_lab.rs, that many times);
//! `FLTLAB_TIMEOUT` (seconds, default 300) bounds the boot. `FLTLAB_QEMU_ARGS`
//! (default `-icount shift=0,sleep=off`) are extra qemu options, split at
//! spaces: by default the guest clock counts instructions (1 ns each) and
//! jumps over idle time, so RTTs and netem delays read in the guest do not
//! depend on how busy the host is. Set and empty, the guest gets a
//! real-time clock (RTTs then carry the host's scheduling noise).
//!
//! Exit codes: 0 the guest ran `/init` to its end (whether its checks passed
//! is for the caller to judge from the FLTLAB lines); 3 the lab cannot run
//! here (not root, packages not installable, no kernel reachable); 2 bad
//! arguments; 124 the boot timed out; anything else: the lab itself broke.

use std::{
    ffi::OsStr,
    fs,
    io::Write as _,
    os::{fd::AsFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

/// Why the lab did not boot.
enum Fail {
    /// Exit 3: this machine cannot run it.
    Cannot(String),
    Usage,
    /// Exit 1: something that should have worked did not.
    Broke(String),
}

type Result<T> = std::result::Result<T, Fail>;

fn say(msg: &str) {
    eprintln!("kernel-lab: {msg}");
}

fn broke(what: &str) -> impl FnOnce(std::io::Error) -> Fail + '_ {
    move |e| Fail::Broke(format!("{what}: {e}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(Fail::Cannot(why)) => {
            say(&format!("cannot run: {why}"));
            ExitCode::from(3)
        }
        Err(Fail::Usage) => {
            say(
                "usage: faultline-kernel-lab-boot --prepare | faultline-kernel-lab-boot AGENT_BINARY LAB_INIT_BINARY [FAULTLINE_BINARY]",
            );
            ExitCode::from(2)
        }
        Err(Fail::Broke(why)) => {
            say(&why);
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let binaries = match args.as_slice() {
        [flag] if flag == "--prepare" => None,
        [agent, init, cli @ ..] if !agent.starts_with('-') && cli.len() <= 1 => Some((
            PathBuf::from(agent),
            PathBuf::from(init),
            cli.first().map(PathBuf::from),
        )),
        _ => return Err(Fail::Usage),
    };
    if !rustix::process::geteuid().is_root() {
        return Err(Fail::Cannot(
            "needs root (apt-get, and the initramfs holds root-owned files)".into(),
        ));
    }
    let mut apt = Apt::default();
    install_missing(&mut apt)?;
    let lab = std::env::var_os("FAULTLINE_KERNEL_LAB_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kernel-lab"),
        PathBuf::from,
    );
    let (version, kdir) = kernel(&mut apt, &lab)?;
    let Some((agent, init, cli)) = binaries else {
        return Ok(ExitCode::SUCCESS);
    };
    if !is_executable(&agent) || !is_executable(&init) || !cli.as_deref().is_none_or(is_executable)
    {
        return Err(Fail::Usage);
    }
    let run = RunDir::new(&lab)?;
    let initrd = initramfs(&run.0, &kdir, &agent, &init, cli.as_deref())?;
    boot(&version, &kdir, &initrd)
}

/// Runs a program with its output on stderr (stdout is the guest console).
fn quiet(cmd: &mut Command) -> bool {
    let err = std::io::stderr().as_fd().try_clone_to_owned();
    if let Ok(fd) = err {
        cmd.stdout(Stdio::from(fd));
    }
    cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs a program; its stdout, when it exits 0.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `program` is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> bool {
        if !self.updated {
            say("apt-get update");
            self.updated = quiet(Command::new("apt-get").args(["update", "-qq"]));
        }
        self.updated
    }
}

fn install_missing(apt: &mut Apt) -> Result<()> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nft", "nftables"),
        ("unshare", "util-linux"),
    ] {
        if which(program).is_none() && !missing.contains(&package) {
            missing.push(package);
        }
    }
    // A static busybox: the dynamic one (package busybox) would need its
    // libraries, and ldd fails on a static binary.
    let static_busybox = Path::new("/bin/busybox").exists()
        && !Command::new("ldd")
            .arg("/bin/busybox")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !static_busybox {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("installing {}", missing.join(" ")));
    if !apt.update() {
        return Err(Fail::Cannot("apt-get update failed".into()));
    }
    // No recommends: qemu would pull a whole desktop stack.
    let installed = quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if installed {
        Ok(())
    } else {
        Err(Fail::Cannot(format!(
            "apt-get install {} failed",
            missing.join(" ")
        )))
    }
}

/// Which linux-image-VERSION-cloud-amd64 the metapackage points at now.
fn current_version() -> Option<String> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    deps.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Depends: linux-image-")?;
        v.ends_with("-cloud-amd64").then(|| v.to_owned())
    })
}

fn nonempty(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.len() > 0)
}

/// The kernel version and its cache directory (vmlinuz, modules.cpio.gz),
/// fetched when the cache does not hold the version apt points at.
fn kernel(apt: &mut Apt, lab: &Path) -> Result<(String, PathBuf)> {
    fs::create_dir_all(lab).map_err(broke("cannot create the lab directory"))?;
    let version = match current_version().or_else(|| {
        apt.update();
        current_version()
    }) {
        Some(v) => v,
        // Offline: whatever was fetched last time.
        None => {
            let cached = fs::read_to_string(lab.join("current")).unwrap_or_default();
            let cached = cached.trim();
            if cached.is_empty() {
                return Err(Fail::Cannot(format!(
                    "no linux-image-cloud-amd64 in apt and nothing cached in {}",
                    lab.display()
                )));
            }
            say(&format!(
                "apt does not know linux-image-cloud-amd64; using the cached {cached}"
            ));
            cached.to_owned()
        }
    };
    let kernels = lab.join("kernel");
    let kdir = kernels.join(&version);
    if !nonempty(&kdir.join("vmlinuz")) || !nonempty(&kdir.join("modules.cpio.gz")) {
        fetch(apt, &version, &kdir)?;
    }
    fs::write(lab.join("current"), format!("{version}\n"))
        .map_err(broke("cannot write current"))?;
    // Kernels the metapackage no longer points at.
    if let Ok(entries) = fs::read_dir(&kernels) {
        for e in entries.flatten() {
            if e.path() != kdir {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    say(&format!("kernel {version} ready in {}", kdir.display()));
    Ok((version, kdir))
}

fn fetch(apt: &mut Apt, version: &str, kdir: &Path) -> Result<()> {
    say(&format!("fetching linux-image-{version}"));
    // Beside the final directory (with_extension would cut the version at its last dot).
    let tmp = kdir.with_file_name(format!("{version}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let (deb, root, mods) = (tmp.join("deb"), tmp.join("root"), tmp.join("mods"));
    for d in [&deb, &mods] {
        fs::create_dir_all(d).map_err(broke("cannot create the kernel directory"))?;
    }
    let package = format!("linux-image-{version}");
    let download = || {
        quiet(
            Command::new("apt-get")
                .args(["download", "-qq", &package])
                .current_dir(&deb),
        )
    };
    let fetched = download() || (apt.update() && download());
    if !fetched {
        return Err(Fail::Cannot(format!("apt-get download {package} failed")));
    }
    let file = fs::read_dir(&deb)
        .map_err(broke("cannot list the download"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| Fail::Broke(format!("apt-get download {package} left no .deb")))?;
    if !quiet(Command::new("dpkg").arg("-x").arg(&file).arg(&root)) {
        return Err(Fail::Broke(format!("dpkg -x {} failed", file.display())));
    }
    fs::copy(
        root.join(format!("boot/vmlinuz-{version}")),
        tmp.join("vmlinuz"),
    )
    .map_err(broke("cannot copy vmlinuz"))?;
    // Only what networking needs (netem, prio, u32, matchall, veth, nf_tables
    // and what they depend on); the whole tree would triple the boot time.
    let src = root.join("lib/modules").join(version);
    let dst = mods.join("lib/modules").join(version);
    for d in ["net", "drivers/net", "lib", "crypto", "arch"] {
        let from = src.join("kernel").join(d);
        if !from.is_dir() {
            continue;
        }
        let to = dst.join("kernel").join(d);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(broke("cannot create the module tree"))?;
        }
        if !quiet(Command::new("cp").arg("-a").arg(&from).arg(&to)) {
            return Err(Fail::Broke(format!("cp -a {} failed", from.display())));
        }
    }
    for e in fs::read_dir(&src)
        .map_err(broke("cannot list the modules"))?
        .flatten()
    {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("modules.builtin") || name == "modules.order" {
            let _ = fs::copy(e.path(), dst.join(&*name));
        }
    }
    if !quiet(Command::new("depmod").arg("-b").arg(&mods).arg(version)) {
        return Err(Fail::Broke("depmod failed".into()));
    }
    cpio_gz(&mods, &tmp.join("modules.cpio.gz"))?;
    for d in [&deb, &root, &mods] {
        let _ = fs::remove_dir_all(d);
    }
    let _ = fs::remove_dir_all(kdir);
    fs::rename(&tmp, kdir).map_err(broke("cannot put the kernel in place"))
}

/// Every path under `dir`, as `find . -mindepth 1` prints them (symlinks
/// not followed), in byte order.
fn tree(dir: &Path) -> Vec<Vec<u8>> {
    fn walk(dir: &Path, rel: &[u8], out: &mut Vec<Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let mut path = rel.to_vec();
            path.push(b'/');
            path.extend_from_slice(e.file_name().as_bytes());
            out.push(path.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, b".", &mut out);
    out.sort();
    out
}

/// A gzip-compressed newc cpio archive of everything under `dir`.
fn cpio_gz(dir: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out).map_err(broke("cannot create the archive"))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(broke("cannot start cpio"))?;
    let packed = cpio
        .stdout
        .take()
        .map(Stdio::from)
        .unwrap_or_else(Stdio::null);
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(packed)
        .stdout(file)
        .spawn()
        .map_err(broke("cannot start gzip"))?;
    if let Some(mut list) = cpio.stdin.take() {
        for path in tree(dir) {
            // cpio's list is one path per line; no name here holds a newline.
            let _ = list.write_all(&path);
            let _ = list.write_all(b"\n");
        }
    }
    let ok = cpio.wait().is_ok_and(|s| s.success()) && gzip.wait().is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(Fail::Broke(format!("packing {} failed", dir.display())))
    }
}

/// A directory for one boot, removed when it ends.
struct RunDir(PathBuf);

impl RunDir {
    fn new(lab: &Path) -> Result<RunDir> {
        let dir = lab.join(format!("run.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(broke("cannot create the run directory"))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies `from` (following links) to `to`, creating its directory.
fn put(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(broke("cannot create an initramfs directory"))?;
    }
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Fail::Broke(format!("cannot copy {}: {e}", from.display())))
}

/// Copies a program to `/lab/bin/NAME` with the shared libraries ldd names,
/// each at its own path.
fn program(root: &Path, from: &Path, name: &str) -> Result<()> {
    put(from, &root.join("lab/bin").join(name))?;
    let libs = output(Command::new("ldd").arg(from)).unwrap_or_default();
    for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
        let inside = root.join(lib.trim_start_matches('/'));
        if !inside.exists() {
            put(Path::new(lib), &inside)?;
        }
    }
    Ok(())
}

/// What the bulkhead scenario runs with the `faultline` CLI, from the
/// experiment library (as users run it), placed at `/lab/demo/`.
const DEMO_FILES: [&str; 2] = ["payments-starved.yaml", "limited-topology.yaml"];

fn initramfs(
    run: &Path,
    kdir: &Path,
    agent: &Path,
    init: &Path,
    cli: Option<&Path>,
) -> Result<PathBuf> {
    let root = run.join("root");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "lab/bin", "etc",
    ] {
        fs::create_dir_all(root.join(d)).map_err(broke("cannot create the initramfs"))?;
    }
    put(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    // Applet links, but not ip/tc: the real ones are called by full path.
    let applets = output(Command::new("/bin/busybox").arg("--list-full")).unwrap_or_default();
    for applet in applets.lines() {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let link = root.join(applet.trim_start_matches('/'));
        if matches!(name, "ip" | "tc" | "busybox") || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            let _ = fs::create_dir_all(parent);
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .map_err(broke("cannot link a busybox applet"))?;
    }
    // unshare: util-linux's, for its --cgroup (busybox's has none).
    for name in ["ip", "tc", "nft", "unshare"] {
        let path = which(name).ok_or_else(|| Fail::Cannot(format!("no {name} on PATH")))?;
        program(&root, &path, name)?;
    }
    program(&root, agent, "faultline-agent")?;
    program(&root, init, "init")?;
    fs::rename(root.join("lab/bin/init"), root.join("init"))
        .map_err(broke("cannot place /init"))?;
    let mut strip = Command::new("strip");
    strip
        .arg("--strip-debug")
        .arg(root.join("lab/bin/faultline-agent"))
        .arg(root.join("init"));
    if let Some(cli) = cli {
        program(&root, cli, "faultline")?;
        strip.arg(root.join("lab/bin/faultline"));
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/demo");
        for file in DEMO_FILES {
            put(&demo.join(file), &root.join("lab/demo").join(file))?;
        }
    }
    // Debug info is most of a dev build; the guest only runs it.
    let _ = quiet(&mut strip);
    let own = run.join("run.cpio.gz");
    cpio_gz(&root, &own)?;
    // The kernel unpacks concatenated archives in order.
    let initrd = run.join("initrd.gz");
    let mut joined =
        fs::read(kdir.join("modules.cpio.gz")).map_err(broke("cannot read the modules"))?;
    joined.extend(fs::read(&own).map_err(broke("cannot read the initramfs"))?);
    fs::write(&initrd, joined).map_err(broke("cannot write the initrd"))?;
    Ok(initrd)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn boot(version: &str, kdir: &Path, initrd: &Path) -> Result<ExitCode> {
    let append = format!(
        "console=ttyS0 quiet panic=-1 fltlab.delay_ms={} fltlab.samples={} fltlab.bench={}",
        env_or("FLTLAB_DELAY_MS", "50"),
        env_or("FLTLAB_SAMPLES", "20"),
        env_or("FLTLAB_BENCH", "0"),
    );
    let timeout = Duration::from_secs(env_or("FLTLAB_TIMEOUT", "300").parse().unwrap_or(300));
    // Unset: the instruction-counting clock; set, even empty: as given.
    let extra =
        std::env::var("FLTLAB_QEMU_ARGS").unwrap_or_else(|_| "-icount shift=0,sleep=off".into());
    let size = fs::metadata(initrd).map_or(0, |m| m.len() / 1024);
    say(&format!("booting {version} ({size} KiB initramfs)"));
    // No network device (-nic none): nothing the guest does reaches the host's network.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(extra.split_whitespace())
        .arg("-kernel")
        .arg(kdir.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .spawn()
        .map_err(broke("cannot start qemu-system-x86_64"))?;
    let started = Instant::now();
    loop {
        match qemu.try_wait() {
            Ok(Some(status)) => {
                let code = status
                    .code()
                    .and_then(|c| u8::try_from(c).ok())
                    .unwrap_or(1);
                return Ok(ExitCode::from(code));
            }
            Ok(None) if started.elapsed() > timeout => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                say(&format!(
                    "the guest did not finish within {} s",
                    timeout.as_secs()
                ));
                return Ok(ExitCode::from(124));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Fail::Broke(format!("waiting for qemu: {e}"))),
        }
    }
}
