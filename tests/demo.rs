//! End to end: the README's demo command runs, shows each feature and unmounts.

use std::process::Command;

#[test]
fn readme_demo_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    assert!(
        readme.contains("bash scripts/demo.sh"),
        "README must name the demo command"
    );
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/demo.sh"))
        .env("UNIONFS_BIN", env!("CARGO_BIN_EXE_unionfs"))
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // Lookup: the top layer's file wins and base's script runs.
    assert!(stdout.contains("etc/motd: motd from app (overrides base)"), "{stdout}");
    assert!(stdout.contains("bin/hello: hello from base"), "{stdout}");
    // Copy-up: merged file changed, lower untouched.
    assert!(stdout.contains("  VARIANT=unionfs"), "{stdout}");
    assert!(
        stdout.contains("base layer is untouched:\n  NAME=demo-os\n  VERSION=1\n"),
        "{stdout}"
    );
    // Whiteouts and an opaque directory in the upper.
    assert!(stdout.contains("var/log now: []   srv now: [new.html]"), "{stdout}");
    assert!(stdout.contains("./var/log/old.log"), "{stdout}");
    assert!(stdout.contains("character special file"), "{stdout}");
    assert!(stdout.contains("srv is opaque: y"), "{stdout}");
    assert!(stdout.contains("unmounted; demo OK"), "{stdout}");
}
