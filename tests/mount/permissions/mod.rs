//! docs/semantics.md, "Permissions and ACLs", through real mounts, one subject a module.

mod acl;
mod inode_flags;
mod modes;
mod setid;
mod users;
