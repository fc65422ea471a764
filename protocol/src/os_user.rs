//! The operating system's user database (`getpwuid_r`, `getpwnam_r`): the effective
//! user's name and home directory (libpq's defaults) and a named user's ids (the
//! `postgres` user a server runs as when tidemark runs as root).

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;

/// One entry of the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The effective user's entry; `None` if it has none (or its name is not UTF-8).
pub fn effective() -> Option<OsUser> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    lookup(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call, `buf` of the length passed.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .ok()
    .flatten()
}

/// The entry of user `name`: `Ok(None)` if there is no such user.
pub fn named(name: &str) -> io::Result<Option<OsUser>> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    lookup(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call, `buf` of the length passed;
        // getpwnam_r (unlike getpwnam) is safe to call from several threads.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// Run `call` (`getpw*_r` with its passwd, buffer and result pointers) and read the entry.
fn lookup(
    call: impl FnOnce(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> io::Result<Option<OsUser>> {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(pwd.as_mut_ptr(), &mut buf, &mut result);
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: on success `pwd` is initialised and its strings point into `buf`.
    let pwd = unsafe { pwd.assume_init() };
    let text = |ptr: *const libc::c_char| {
        // SAFETY: a non-null passwd string is NUL-terminated inside `buf`.
        (!ptr.is_null()).then(|| {
            unsafe { CStr::from_ptr(ptr) }
                .to_str()
                .ok()
                .map(str::to_string)
        })?
    };
    let Some(name) = text(pwd.pw_name) else {
        return Ok(None);
    };
    Ok(Some(OsUser {
        name,
        home: text(pwd.pw_dir).map(PathBuf::from).unwrap_or_default(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_effective_user_and_root_by_name() {
        let me = effective().expect("the effective user has an entry");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert_eq!(named(&me.name).unwrap(), Some(me));
        let root = named("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(named("no-such-user-tidemark").unwrap(), None);
    }
}
