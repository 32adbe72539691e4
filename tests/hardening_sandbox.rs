//! Recipe scripts are contained: no host file is reachable or writable (directly, through
//! /proc, /sys, a new mount or a device node), goldsmith's own work on the tree never
//! follows a layer's symlinks out of it, there is no network unless asked for, a script
//! that hangs is killed with everything it started, and memory is capped on request.

#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use hostile::nonce;
use support::assert_failed_cleanly;
use support::{processes_matching, shared_cache, Project};

/// Build image `image` whose top layer runs `script`; the build must fail in the script
/// and the host file `victim` must keep its content.
fn attempt_fails(image: &str, script: &str) {
    let p = Project::example();
    let victim = p.path("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let dev = victim.metadata().unwrap().dev();
    // A fresh layer digest every run: a cached layer would not run the script at all.
    let script = format!("# {}\n{script}", nonce("attempt"))
        .replace("VICTIM", &victim.display().to_string())
        .replace("MAJOR", &libc::major(dev).to_string())
        .replace("MINOR", &libc::minor(dev).to_string());
    hostile::add_image(
        &p,
        image,
        &format!("[[scripts]]\nrun = '''\n{script}\n'''\n"),
        &[],
        r#"["raw"]"#,
    );
    let r = p.run(&["build", image]);
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        image,
        &r,
        &[&format!("layer {image}-top: script inline-0 failed")],
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn a_script_cannot_write_a_host_file() {
    attempt_fails("esc-direct", "echo pwned > VICTIM");
}

#[test]
fn a_script_cannot_reach_the_host_through_proc() {
    attempt_fails(
        "esc-proc",
        "echo pwned > /proc/1/root/VICTIM || echo pwned > /proc/self/root/VICTIM",
    );
}

#[test]
fn a_script_cannot_write_to_sys() {
    // Writing back the value just read: harmless even if the protection failed.
    attempt_fails(
        "esc-sys",
        "mount -o remount,rw /sys || true\nv=$(cat /sys/kernel/mm/ksm/run)\necho \"$v\" > /sys/kernel/mm/ksm/run",
    );
}

#[test]
fn a_script_cannot_set_host_sysctls() {
    // A core_pattern of "|/some/program" would run that program as the host's root on
    // the next crash; the value written back here is the one just read.
    attempt_fails(
        "esc-sysctl",
        "v=$(cat /proc/sys/kernel/core_pattern)\necho \"$v\" > /proc/sys/kernel/core_pattern",
    );
}

#[test]
fn a_script_cannot_mount_anything() {
    attempt_fails("esc-mount", "mount -t tmpfs none /mnt");
}

#[test]
fn a_script_cannot_create_a_node_for_the_host_disk() {
    // With CAP_MKNOD a script could create a node for the disk holding the host's files
    // and read it (where no device cgroup stops it).
    attempt_fails(
        "esc-mknod",
        "mknod /tmp/hostdisk b MAJOR MINOR\nhead -c 4096 /tmp/hostdisk > /dev/null || true",
    );
}

#[test]
fn goldsmith_never_follows_a_layers_symlinks_out_of_the_tree() {
    // A layer may leave symlinks to host paths where goldsmith itself later cleans up,
    // writes or reads (from the host, outside the sandbox): emptying /var/tmp, removing
    // SSH host keys and logs, blanking machine-id, resetting the host name, copying the
    // kernel. All of that must happen inside the tree, never to the targets on the host.
    let p = Project::example();
    let host = p.path("host");
    for d in ["tmp", "ssh", "log"] {
        std::fs::create_dir_all(host.join(d)).unwrap();
    }
    let files = [
        ("tmp/keep-me", "tmp file"),
        ("ssh/ssh_host_ed25519_key", "host key"),
        ("log/dpkg.log", "host log"),
        ("machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("hostname", "buildhost\n"),
        ("kernel", "host-only bytes"),
    ];
    for (f, c) in files {
        std::fs::write(host.join(f), c).unwrap();
    }
    let h = host.display();
    let script = format!(
        "rm -rf /var/tmp /etc/ssh /var/log\n\
         ln -s {h}/tmp /var/tmp\nln -s {h}/ssh /etc/ssh\nln -s {h}/log /var/log\n\
         ln -sf {h}/machine-id /etc/machine-id\nln -sf {h}/hostname /etc/hostname\n\
         ln -s {h}/kernel /boot/vmlinuz-99.99\nln -s {h}/kernel /boot/initrd.img-99.99\n"
    );
    hostile::add_image(
        &p,
        "symlinks",
        &format!("[[scripts]]\nrun = '''\n{script}'''\n"),
        &[],
        r#"["raw"]"#,
    );
    let r = p.run(&["build", "symlinks"]);
    // The layer builds; the disk stage finds kernel 99.99 without an initrd *in the
    // tree* (the symlink resolves inside it) instead of copying the host file.
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        "symlinks",
        &r,
        &["image symlinks: kernel 99.99 has no initrd"],
    );
    for (f, c) in files {
        assert_eq!(
            std::fs::read_to_string(host.join(f)).unwrap_or_default(),
            c,
            "host file {f} was changed or removed"
        );
    }
}

#[test]
fn a_script_has_no_network_unless_it_asks() {
    let server = hostile::TokenServer::start("unused", "unused");
    let p = Project::example();
    hostile::add_image(
        &p,
        "nonet",
        "[[scripts]]\npath = \"connect.sh\"\n",
        &[(
            "scripts/connect.sh",
            &format!(
                "#!/bin/bash\n# {}\nexec 3<>/dev/tcp/127.0.0.1/{} || exit 7\necho connected\n",
                nonce("nonet"),
                server.port
            ),
        )],
        r#"["raw"]"#,
    );
    let r = p.run(&["build", "nonet"]);
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        "nonet",
        &r,
        &["layer nonet-top: script connect.sh failed", "exit code 7"],
    );
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the server on the host's loopback was reached"
    );
}

/// Processes whose command line names `marker`, waiting up to 5 s for them to go.
fn survivors(marker: &str) -> Vec<(i32, String)> {
    for _ in 0..50 {
        let left = processes_matching(marker);
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    processes_matching(marker)
}

#[test]
fn a_hanging_script_is_killed_at_its_timeout_with_everything_it_started() {
    let marker = nonce("gs-hang");
    let p = Project::example();
    // A detached session, a double fork and the script itself all hang.
    let script = format!(
        "cp /bin/sleep /tmp/{marker}\nsetsid /tmp/{marker} 300 &\n(/tmp/{marker} 301 &)\n/tmp/{marker} 302\n"
    );
    hostile::add_image(
        &p,
        "hang",
        &format!("[[scripts]]\nrun = '''\n{script}'''\ntimeout_secs = 3\n"),
        &[],
        r#"["raw"]"#,
    );
    let r = p.run(&["build", "hang"]);
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        "hang",
        &r,
        &[
            "layer hang-top: script inline-0 failed",
            "timed out after 3s",
        ],
    );
    let left = survivors(&marker);
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
}

#[test]
fn what_a_successful_script_leaves_running_is_killed() {
    let marker = nonce("gs-daemon");
    let p = Project::example();
    let script = format!(
        "cp /bin/sleep /tmp/{marker}\nsetsid /tmp/{marker} 300 &\n(/tmp/{marker} 301 &)\necho started\n"
    );
    hostile::add_image(
        &p,
        "daemon",
        &format!("[[scripts]]\nrun = '''\n{script}'''\n"),
        &[],
        r#"["tar"]"#,
    );
    p.run(&["build", "daemon"]).expect(0);
    let left = survivors(&marker);
    assert!(
        left.is_empty(),
        "processes survived the build step: {left:?}"
    );
}

#[test]
fn build_memory_max_caps_what_a_script_can_allocate() {
    let p = Project::example();
    p.config_append("[build]\nmemory_max = \"256M\"\n");
    // GNU tail keeps the last N bytes of a pipe in memory.
    hostile::add_image(
        &p,
        "mem",
        &format!(
            "[[scripts]]\nrun = '''# {}\nhead -c 700M /dev/zero | tail -c 600M > /dev/null'''\n",
            nonce("mem")
        ),
        &[],
        r#"["raw"]"#,
    );
    let r = p.run(&["build", "mem"]);
    assert_failed_cleanly(
        &p,
        &shared_cache(),
        "mem",
        &r,
        &["layer mem-top: script inline-0 failed", "memory exhausted"],
    );
    // A malformed cap is a configuration error.
    p.edit("goldsmith.toml", "\"256M\"", "\"lots\"");
    let r = p.run(&["validate"]).expect(2);
    assert!(r.stderr.contains("build.memory_max"), "{}", r.stderr);
}

#[test]
fn test_vms_get_bounded_memory_and_cpus() {
    let p = Project::example();
    p.write(
        "images/big.toml",
        "layers = [\"debian-base\"]\nformats = [\"raw\"]\n[vm]\nmemory_mib = 65536\ncpus = 64\n",
    );
    let r = p.run(&["validate"]).expect(2);
    for want in [
        "images/big.toml: vm.memory_mib: 65536 is outside 256..=8192 (verify.max_memory_mib",
        "images/big.toml: vm.cpus: 64 is outside 1..=8 (verify.max_cpus",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in {}", r.stderr);
    }
    // A host that allows more says so in goldsmith.toml.
    p.edit(
        "goldsmith.toml",
        "[verify]\n",
        "[verify]\nmax_memory_mib = 65536\nmax_cpus = 64\n",
    );
    p.run(&["validate"]).expect(0);
}
