//! Builds the example functions (`hello`, `cpu`) as static executables and
//! puts them in `$OUT_DIR/functions/`, where `src/embedded.rs` includes them
//! into the `faas` binary.
//!
//! A nested `cargo build --release --target $TARGET` with
//! `-Ctarget-feature=+crt-static`, in its own target directory
//! (`$OUT_DIR/functions-target`), so it never waits for the outer build's
//! locks. The environment the outer cargo (or clippy) gives a build script
//! is cleaned first, so the nested build is a plain one.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Package name and binary name of each embedded function.
const FUNCTIONS: &[(&str, &str)] = &[("faas-fn-hello", "hello"), ("faas-fn-cpu", "cpu")];

#[path = "../../build-support/nested_cargo.rs"]
mod nested_cargo;

fn main() {
    let manifest_dir = PathBuf::from(required_var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(required_var("OUT_DIR"));
    let target = required_var("TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let workspace = manifest_dir.join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);

    for watched in [
        "faas-guest",
        "faas-core",
        "examples/functions",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-changed=build.rs");

    link_faas_statically(&out_dir);
    link_early_client(&manifest_dir, &out_dir);

    let target_dir = out_dir.join("functions-target");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(&target)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    if workspace.join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    for (package, _) in FUNCTIONS {
        cmd.arg("-p").arg(package);
    }
    nested_cargo::clean_env(&mut cmd);
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        // Only the executables are embedded: no debug info to carry.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_TERM_COLOR", "never")
        .current_dir(&workspace);

    let started = Instant::now();
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => panic!(
            "faas-platform build.rs: cannot run {} to build the example functions: {e}",
            Path::new(&cargo).display()
        ),
    };
    if !output.status.success() {
        panic!(
            "faas-platform build.rs: the nested build of the example functions failed ({}):\n\
             command: {} {} (in {}, CARGO_TARGET_DIR={})\n\
             --- nested cargo stderr ---\n{}",
            output.status,
            Path::new(&cargo).display(),
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            workspace.display(),
            target_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = target_dir.join(&target).join("release");
    let dest = out_dir.join("functions");
    if let Err(e) = fs::create_dir_all(&dest) {
        panic!("faas-platform build.rs: mkdir {}: {e}", dest.display());
    }
    for (_, bin) in FUNCTIONS {
        let from = built.join(bin);
        let to = dest.join(bin);
        if let Err(e) = fs::copy(&from, &to) {
            panic!(
                "faas-platform build.rs: copy {} to {}: {e}",
                from.display(),
                to.display()
            );
        }
        if let Some(interp) = program_interpreter(&to) {
            panic!(
                "faas-platform build.rs: {} is dynamically linked (interpreter {interp}); \
                 the example functions must be static",
                to.display()
            );
        }
    }
    build_node_addon(&cargo, &workspace, &out_dir);
    // In the build script's `output` file (and with `cargo build -vv`).
    println!(
        "nested build of the example functions and the Node addon: {:.1} s (jobserver {})",
        started.elapsed().as_secs_f64(),
        if env::var_os("CARGO_MAKEFLAGS").is_some() {
            "shared with the outer cargo"
        } else {
            "of its own"
        }
    );
}

/// Builds the Node.js runtime's N-API addon (`faas-guest/runtimes/node/native`,
/// a standalone package: it passes sealed-memfd bodies over fd 3) into
/// `$OUT_DIR/faas_native.node`, where `src/runtimes.rs` embeds it. A plain
/// dynamic cdylib for the host's `node` (no `+crt-static`).
fn build_node_addon(cargo: &OsString, workspace: &Path, out_dir: &Path) {
    let manifest = workspace.join("faas-guest/runtimes/node/native/Cargo.toml");
    let target_dir = out_dir.join("node-native-target");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest);
    nested_cargo::clean_env(&mut cmd);
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TERM_COLOR", "never")
        .current_dir(workspace);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("faas-platform build.rs: cannot run cargo to build the Node addon: {e}"),
    };
    if !output.status.success() {
        panic!(
            "faas-platform build.rs: building the Node addon ({}) failed ({}):\n{}",
            manifest.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("release/libfaas_node_native.so");
    if let Err(e) = fs::copy(&built, out_dir.join("faas_native.node")) {
        panic!("faas-platform build.rs: copy {}: {e}", built.display());
    }
}

fn required_var(name: &str) -> String {
    match env::var(name) {
        Ok(v) => v,
        Err(e) => panic!("faas-platform build.rs: ${name}: {e} (is this run by cargo?)"),
    }
}

/// The `PT_INTERP` of a 64-bit little-endian ELF executable, if it has one:
/// a dynamically linked executable names its loader there, a static (or
/// static-pie) one has none. `None` also for files that are not such ELF
/// files (other targets are not checked).
fn program_interpreter(path: &Path) -> Option<String> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).ok()?;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != PT_INTERP {
            return None;
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let size = usize::try_from(u64_at(ph + 32)?).ok()?;
        let name = elf.get(off..off + size)?;
        Some(
            String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_owned(),
        )
    })
}

/// Links the `faas` executable statically and at a fixed address (no
/// dynamic loader, no relocations at start): a command like `faas sandbox
/// run` is mostly the cost of starting this process, and this halves it.
///
/// `-C target-feature=+crt-static` would do it but cannot be given to one
/// binary of a workspace built without `--target` (it breaks the
/// proc-macros), and rustc asks for the shared C libraries before any
/// link argument of ours. So the libraries it names (`-lc`, `-lgcc_s`,
/// ...) find, in `$OUT_DIR/static-link`, linker scripts of the same names
/// that stand for the static archives, and the link is made `-static
/// -no-pie`. Where an archive is missing (no static glibc installed), the
/// binary stays dynamic, with a warning.
fn link_faas_statically(out_dir: &Path) {
    let dir = out_dir.join("static-link");
    let cc = env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let archive = |name: &str| -> Option<PathBuf> {
        let out = Command::new(&cc)
            .arg(format!("-print-file-name={name}"))
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (p.is_absolute() && p.is_file()).then_some(p)
    };
    let shims: &[(&str, &[&str])] = &[
        ("c", &["libc.a"]),
        ("m", &["libm.a"]),
        ("gcc_s", &["libgcc_eh.a", "libgcc.a"]),
        ("pthread", &["libpthread.a"]),
        ("dl", &["libdl.a"]),
        ("rt", &["librt.a"]),
        ("util", &["libutil.a"]),
    ];
    let mut scripts = Vec::new();
    for (lib, archives) in shims {
        let mut paths = Vec::new();
        for a in *archives {
            match archive(a) {
                Some(p) => paths.push(p.display().to_string()),
                None => {
                    println!(
                        "cargo:warning=no static {a}: the faas binary is linked dynamically \
                         (install libc6-dev for a faster start)"
                    );
                    return;
                }
            }
        }
        scripts.push((
            format!("lib{lib}.so"),
            format!("GROUP({})\n", paths.join(" ")),
        ));
    }
    let written = fs::create_dir_all(&dir).and_then(|()| {
        scripts
            .iter()
            .try_for_each(|(name, text)| fs::write(dir.join(name), text))
    });
    if let Err(e) = written {
        panic!("faas-platform build.rs: writing {}: {e}", dir.display());
    }
    println!("cargo:rustc-link-arg-bin=faas=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bin=faas=-static");
    println!("cargo:rustc-link-arg-bin=faas=-no-pie");
}

/// Compiles `src/sys/early_client.c` (the client of `faas sandbox serve`,
/// run before the C library starts; see its header) and makes its
/// `faas_entry` the `faas` executable's entry point. First the object is
/// linked alone, with nothing else to call: code that runs before the C
/// library may not call into it (a `memcpy` the compiler emitted, a stack
/// protector's check), and this proves it does not.
fn link_early_client(manifest_dir: &Path, out_dir: &Path) {
    let src = manifest_dir.join("src/sys/early_client.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if !matches!(arch.as_str(), "x86_64" | "aarch64") {
        println!(
            "cargo:warning=no early client for {arch}: `faas sandbox run` will not use a \
             `faas sandbox serve` daemon"
        );
        return;
    }
    let cc = env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let obj = out_dir.join("early_client.o");
    let run = |cmd: &mut Command, what: &str| match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "faas-platform build.rs: {what} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "faas-platform build.rs: {what}: cannot run {}: {e}",
            Path::new(&cc).display()
        ),
    };
    run(
        Command::new(&cc)
            .args([
                "-c",
                "-O2",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-ffreestanding",
                "-fno-builtin",
                "-fno-stack-protector",
                "-fno-tree-loop-distribute-patterns",
                "-fno-asynchronous-unwind-tables",
                "-fPIE",
                "-o",
            ])
            .arg(&obj)
            .arg(&src),
        "compiling src/sys/early_client.c",
    );
    run(
        Command::new(&cc)
            .args([
                "-nostdlib",
                "-static",
                "-Wl,-e,faas_entry",
                "-Wl,--defsym,_start=0",
                "-o",
            ])
            .arg(out_dir.join("early_client.check"))
            .arg(&obj),
        "linking src/sys/early_client.c alone (it may call nothing outside itself)",
    );
    println!("cargo:rustc-link-arg-bin=faas={}", obj.display());
    println!("cargo:rustc-link-arg-bin=faas=-Wl,-e,faas_entry");
}
