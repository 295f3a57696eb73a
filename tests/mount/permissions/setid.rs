//! docs/semantics.md, "Permissions and ACLs": setuid and setgid dropped by every change of a
//! file's data as the kernel's VFS drops them (kernel overlayfs over identical layers is the
//! reference, in each of our data paths), and kept by a writer with CAP_FSETID.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::as_user::*;
use crate::common::*;
use crate::reference::*;

fn mode_of(p: &Path) -> u32 {
    lstat(p).mode() & 0o7777
}

const DATA_OPS: [&str; 9] = [
    "write",
    "ftruncate",
    "open-trunc",
    "fallocate",
    "fallocate-keep-size",
    "punch-hole",
    "zero-range",
    "copy-range",
    "mmap-write",
];

const SETID_MODES: [u32; 5] = [0o6666, 0o2766, 0o6777, 0o2666, 0o4766];

/// Name of the file for one case: mode, operation, whose group.
fn case_name(mode: u32, op: &str, own_group: bool) -> String {
    format!("f{mode:o}-{op}-{}", if own_group { "g" } else { "o" })
}

/// Every case as a file of 8 KiB in lower 0, owned by root and by root's group or the user's.
fn fill_setid_cases(l: &Layers, user_gid: u32) {
    l.put(0, "src", b"0123456789abcdef");
    for mode in SETID_MODES {
        for op in DATA_OPS {
            for own_group in [false, true] {
                let p = l.lower(0, &case_name(mode, op, own_group));
                std::fs::write(&p, vec![b'.'; 8192]).unwrap();
                let gid = if own_group { user_gid } else { 0 };
                std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Runs every case as `user` through `mnt` (files copied up by the change, and files created
/// through the mount) and returns the resulting modes, by file name.
fn setid_results(mnt: &Path, user: (u32, u32)) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for mode in SETID_MODES {
        for op in DATA_OPS {
            for own_group in [false, true] {
                let name = case_name(mode, op, own_group);
                // The same case on a file made through the mount (an upper file from the start).
                let made = mnt.join(format!("{name}-new"));
                std::fs::write(&made, vec![b'.'; 8192]).unwrap();
                std::os::unix::fs::chown(&made, Some(0), Some(if own_group { user.1 } else { 0 })).unwrap();
                std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode)).unwrap();
                for p in [mnt.join(&name), made] {
                    act_ok(user, op, &p, &mnt.join("src"));
                    let file = p.file_name().unwrap().to_string_lossy().into_owned();
                    out.push((file, mode_of(&p)));
                }
            }
        }
    }
    out
}

#[test]
fn setid_bits_are_dropped_by_every_data_change_as_the_kernel_does() {
    let user = user(USER_A);
    let k = layers(|l| fill_setid_cases(l, user.1));
    let kernel = {
        let _ko = kernel_overlay(&k, "");
        setid_results(&k.mnt, user)
    };
    // The rule itself, as kernel overlayfs applies it (so the comparison cannot pass vacuously).
    let find = |name: &str| kernel.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
    assert_eq!(find("f6666-fallocate-o"), Some(0o666));
    assert_eq!(find("f2666-punch-hole-o"), Some(0o666));
    assert_eq!(find("f2666-write-g"), Some(0o2666));
    assert_eq!(find("f6666-mmap-write-o"), Some(0o6666));
    for (label, args) in MODES {
        let l = layers(|l| fill_setid_cases(l, user.1));
        let m = l.mount(args);
        let ours = setid_results(&m.mnt, user);
        let differ: Vec<String> = kernel
            .iter()
            .zip(&ours)
            .filter(|(a, b)| a != b)
            .map(|((n, km), (_, um))| format!("{n}: kernel {km:o}, unionfs {um:o}"))
            .collect();
        assert!(
            differ.is_empty(),
            "{label}: modes differ from kernel overlayfs:\n{}",
            differ.join("\n")
        );
        drop(m);
    }
}

#[test]
fn root_writes_keep_setid_bits() {
    // CAP_FSETID keeps both bits, on the kernel and here.
    for (label, args) in MODES {
        let l = layers(|l| l.put(0, "f", &[b'.'; 8192]));
        std::fs::set_permissions(l.lower(0, "f"), std::fs::Permissions::from_mode(0o6666)).unwrap();
        let m = l.mount(args);
        for op in ["write", "fallocate", "punch-hole", "ftruncate"] {
            run_op(op, &m.path("f"), Path::new(""));
            assert_eq!(mode_of(&m.path("f")), 0o6666, "{label}: {op} by root");
        }
    }
}
