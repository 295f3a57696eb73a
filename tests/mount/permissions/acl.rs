//! docs/semantics.md, "Permissions and ACLs": POSIX ACLs through real mounts, checked with two
//! plain users against kernel overlayfs over identical layers in the same test: ACLs a layer
//! ships, ACLs set through the view (copy-up), allow and deny entries, group entries, the mask
//! and `chmod`, default ACLs on create and mkdir (which replace the umask), removal, and all of it
//! again after a remount. Each case also states what it must give, so matching a broken kernel
//! would not pass either.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use Who::*;

/// A check: who runs what, and what it must give (`None`: only compared with the kernel).
struct Check {
    who: Who,
    script: &'static str,
    expect: Option<bool>,
}

#[derive(Clone, Copy)]
enum Who {
    Root,
    A,
    B,
}

struct Case {
    name: &'static str,
    /// Run as root in the top lower layer before mounting (`A`, `B`: the users' names).
    lower: &'static str,
    /// Run as root in the mount.
    setup: &'static str,
    checks: &'static [Check],
}

const fn c(who: Who, script: &'static str, expect: Option<bool>) -> Check {
    Check { who, script, expect }
}

const CASES: &[Case] = &[
    Case {
        name: "an ACL a lower layer ships denies a user the mode allows",
        lower: "echo secret > shipped; chmod 644 shipped; setfacl -m u:$A:--- shipped",
        setup: "",
        checks: &[
            c(A, "cat shipped", Some(false)),
            c(B, "cat shipped", Some(true)),
            c(Root, "getfacl -cp shipped", Some(true)),
        ],
    },
    Case {
        name: "an ACL set through the view copies the file up and denies",
        lower: "echo data > locked; chmod 644 locked",
        setup: "setfacl -m u:$A:--- locked",
        checks: &[
            c(A, "cat locked", Some(false)),
            c(B, "cat locked", Some(true)),
            c(Root, "getfacl -cp locked", Some(true)),
        ],
    },
    Case {
        name: "an allow entry opens a private file to one user",
        lower: "",
        setup: "echo mine > private; chmod 600 private; setfacl -m u:$A:r private",
        checks: &[
            c(A, "cat private", Some(true)),
            c(B, "cat private", Some(false)),
            c(A, "echo more >> private", Some(false)),
        ],
    },
    Case {
        name: "a group entry",
        lower: "echo team > team; chmod 640 team",
        setup: "setfacl -m g:$B:r team",
        checks: &[c(B, "cat team", Some(true)), c(A, "cat team", Some(false))],
    },
    Case {
        name: "chmod narrows the mask, and the mask limits named entries",
        lower: "echo shared > masked; chmod 664 masked; setfacl -m u:$A:rw masked",
        setup: "chmod 640 masked",
        checks: &[
            c(A, "cat masked", Some(true)),
            c(A, "echo more >> masked", Some(false)),
            c(Root, "getfacl -cp masked | grep -x 'mask::r--'", Some(true)),
            c(Root, "stat -c %a masked", Some(true)),
        ],
    },
    Case {
        name: "default ACLs are inherited on create and mkdir and replace the umask",
        lower: "mkdir proj; chmod 700 proj",
        setup: "setfacl -m u:$A:rwx proj; setfacl -d -m u::rwx,u:$A:rwx,g::---,o::--- proj; \
                (umask 077; echo plan > proj/plan; mkdir proj/sub; echo deep > proj/sub/deep)",
        checks: &[
            c(A, "cat proj/plan && echo edit >> proj/plan", Some(true)),
            c(A, "cat proj/sub/deep", Some(true)),
            c(B, "cat proj/plan", Some(false)),
            c(Root, "stat -c '%n %a' proj/plan proj/sub proj/sub/deep", Some(true)),
            c(Root, "getfacl -cp proj/plan proj/sub proj/sub/deep", Some(true)),
        ],
    },
    Case {
        name: "a user's own create in a directory with a default ACL",
        lower: "mkdir drop; chmod 777 drop",
        setup: "setfacl -d -m u::rwx,u:$B:r,g::r-x,o::--- drop",
        checks: &[
            c(A, "umask 022; echo from-a > drop/a; mkdir -p drop/adir", Some(true)),
            c(B, "cat drop/a", Some(true)),
            c(Root, "stat -c '%n %a %U' drop/a drop/adir", Some(true)),
            c(Root, "getfacl -cp drop/a drop/adir", Some(true)),
        ],
    },
    Case {
        name: "without a default ACL the umask applies",
        lower: "mkdir plain; chmod 777 plain",
        setup: "",
        checks: &[
            c(A, "umask 027; echo x > plain/f; mkdir -p plain/d", Some(true)),
            c(Root, "stat -c '%n %a' plain/f plain/d", Some(true)),
            c(Root, "getfacl -cp plain/f | grep -c user:", Some(true)),
        ],
    },
    Case {
        name: "removing the ACL gives the mode back its say",
        lower: "echo open > unlocked; chmod 644 unlocked; setfacl -m u:$A:--- unlocked",
        setup: "setfacl -b unlocked",
        checks: &[
            c(A, "cat unlocked", Some(true)),
            c(Root, "getfacl -cp unlocked", Some(true)),
        ],
    },
    Case {
        name: "a set-group-id directory with a default ACL passes on its group and the bit",
        lower: "mkdir sg; chgrp $B sg; chmod 2777 sg",
        setup: "setfacl -d -m u::rwx,g::rwx,o::r-x sg",
        checks: &[
            c(A, "umask 022; touch sg/f; mkdir -p sg/d", Some(true)),
            c(Root, "stat -c '%n %G %a' sg/f sg/d", Some(true)),
        ],
    },
    Case {
        name: "an access ACL set by an owner outside the file's group clears setgid",
        lower: "echo s > sgid; chown $A:root sgid; chmod 2775 sgid; \
                echo t > sgid-in; chown $A:$A sgid-in; chmod 2775 sgid-in",
        setup: "",
        checks: &[
            c(A, "setfacl -m u:$B:r sgid sgid-in", Some(true)),
            c(Root, "test $(stat -c %a sgid) = 775", Some(true)),
            c(Root, "test $(stat -c %a sgid-in) = 2775", Some(true)),
            c(
                Root,
                "setfacl -m u:$B:rw sgid-in; test $(stat -c %a sgid-in) = 2775",
                Some(true),
            ),
        ],
    },
    Case {
        name: "a lower directory's ACL guards what is in it",
        lower: "mkdir vault; echo gold > vault/gold; chmod 755 vault; setfacl -m u:$A:--- vault",
        setup: "",
        checks: &[c(A, "cat vault/gold", Some(false)), c(B, "cat vault/gold", Some(true))],
    },
];

fn sh_as(who: Who, users: &Users, cwd: &Path, script: &str) -> (bool, String) {
    let mut cmd = Command::new("setpriv");
    match who {
        Root => {
            cmd.args(["--", "sh", "-c", script]);
        }
        A | B => {
            let (uid, gid) = if matches!(who, A) { users.a } else { users.b };
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--init-groups")
                .args(["--", "sh", "-c", script]);
        }
    }
    let out = cmd
        .current_dir(cwd)
        .env("A", USER_A)
        .env("B", USER_B)
        .output()
        .expect("run a check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Users {
    a: (u32, u32),
    b: (u32, u32),
}

fn run_checks(users: &Users, mnt: &Path, outcome: &mut Vec<String>, errors: &mut Vec<String>, kernel: bool) {
    for case in CASES {
        for ch in case.checks {
            let (ok, out) = sh_as(ch.who, users, mnt, ch.script);
            outcome.push(format!("{} | {} | {ok} | {}", case.name, ch.script, out.trim()));
            if let Some(want) = ch.expect {
                if ok != want && !kernel {
                    errors.push(format!(
                        "{}: `{}` {}",
                        case.name,
                        ch.script,
                        if ok { "succeeded" } else { "failed" }
                    ));
                }
            }
        }
    }
}

/// Root (kernel overlayfs, acting as other users) and setfacl, through [`require`].
fn prerequisites() -> bool {
    require_root("kernel overlayfs and other users") && require_program("setfacl", "acl")
}

#[test]
fn acls_are_enforced_and_inherited_as_on_kernel_overlayfs() {
    acl_table_against_kernel_overlayfs(&[]);
}

/// The same table on the rootless data path: every read and write served by the daemon (no
/// FUSE passthrough, the kernel's writeback cache on), as a mount without CAP_SYS_ADMIN is.
#[test]
fn acls_are_enforced_and_inherited_as_on_kernel_overlayfs_without_passthrough() {
    acl_table_against_kernel_overlayfs(&["--no-passthrough"]);
}

/// Runs [`CASES`] on a unionfs mount with `extra` arguments and on kernel overlayfs over
/// identical layers, compares every outcome, then does it again after a remount (with `extra`).
fn acl_table_against_kernel_overlayfs(extra: &[&str]) {
    if !prerequisites() {
        return;
    }
    let users = Users {
        a: user(USER_A),
        b: user(USER_B),
    };
    let l = Layers::new(1);
    l.open_to_all();
    for case in CASES.iter().filter(|c| !c.lower.is_empty()) {
        let (ok, _) = sh_as(Root, &users, &l.lowers[0], case.lower);
        assert!(ok, "lower setup of '{}' failed", case.name);
    }
    // The kernel's layers: identical copies.
    let k = Layers::new(1);
    k.open_to_all();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", l.lowers[0].display()))
        .arg(&k.lowers[0])
        .status()
        .expect("cp -a");
    assert!(cp.success());
    let sc = Scenario::new(&l);

    let m = l.mount(extra);
    let ko = KernelOverlay::mount(&k.lowers, Some((&k.upper, &k.work)), &k.mnt).expect("kernel overlayfs");
    for case in CASES.iter().filter(|c| !c.setup.is_empty()) {
        for (mnt, what) in [(&m.mnt, "unionfs"), (&ko.mnt, "kernel overlayfs")] {
            let (ok, _) = sh_as(Root, &users, mnt, case.setup);
            assert!(ok, "setup of '{}' failed on {what}", case.name);
        }
    }
    let compare = |phase: &str, m: &Path, ko: &Path| {
        let (mut ours, mut theirs, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        run_checks(&users, m, &mut ours, &mut errors, false);
        run_checks(&users, ko, &mut theirs, &mut Vec::new(), true);
        let diffs: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  unionfs: {a}\n  kernel:  {b}"))
            .collect();
        assert!(
            diffs.is_empty() && errors.is_empty(),
            "{phase} ({extra:?}): {} differences from kernel overlayfs:\n{}\nunexpected outcomes:\n  {}",
            diffs.len(),
            diffs.join("\n"),
            errors.join("\n  ")
        );
    };
    compare("mounted", &m.mnt, &ko.mnt);
    // The ACLs live in the upper: a remount (of both) enforces the same.
    let m = sc.ending(m).remount_with(extra).remount();
    drop(ko);
    let ko = KernelOverlay::mount(&k.lowers, Some((&k.upper, &k.work)), &k.mnt).expect("kernel overlayfs again");
    compare("after remount", &m.mnt, &ko.mnt);
    sc.finish(m);
}

#[test]
fn noacl_turns_enforcement_off() {
    if !prerequisites() {
        return;
    }
    let users = Users {
        a: user(USER_A),
        b: user(USER_B),
    };
    let l = Layers::new(1);
    l.open_to_all();
    let (ok, _) = sh_as(
        Root,
        &users,
        &l.lowers[0],
        "echo s > f; chmod 644 f; setfacl -m u:$A:--- f",
    );
    assert!(ok);
    let m = l.mount(&["-o", "noacl"]);
    assert!(
        sh_as(A, &users, &m.mnt, "cat f").0,
        "with noacl only the mode is checked"
    );
    let m = remount(&l, m, &[]);
    assert!(!sh_as(A, &users, &m.mnt, "cat f").0, "by default the ACL is enforced");
}
